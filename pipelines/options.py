"""Command-line parsing shared by every pipeline command: our flags plus Beam's, untouched."""

import contextlib
from collections.abc import Sequence
from typing import TypeVar

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    PipelineOptions,
    StandardOptions,
    _BeamArgumentParser,  # Beam's own parser: its options add value-provider arguments
)
from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner
from apache_beam.runners.runner import create_runner

from pipelines.failures import UsageError, remove_beam_temp, remove_manifest


class CommandOptions(PipelineOptions):
    """Base class of every command's options.

    Command option classes derive from this one rather than straight from
    PipelineOptions: Beam registers every direct subclass in one global parser, so two
    commands that both take ``--output`` would clash there.
    """


class OneLineParser(_BeamArgumentParser):
    """An argument parser whose errors are one-line UsageErrors, for every command."""

    def error(self, message: str):
        raise UsageError(message)


Options = TypeVar("Options", bound=CommandOptions)


def parse_options(
    prog: str, argv: Sequence[str], command: type[Options]
) -> tuple[Options, PipelineOptions]:
    """Splits ``argv`` into the command's own options and Beam's.

    Returns:
        The command's options (a view of ``command``), and PipelineOptions holding only
        Beam's flags, so that Beam never sees, warns about or ships ours.

    Raises:
        UsageError: for a flag that is neither the command's nor Beam's, or a value of
            the wrong type.
    """
    argv = _bare_dry_run(list(argv))
    if "-h" in argv or "--help" in argv:
        helper = _BeamArgumentParser(
            prog=prog, epilog="Beam's pipeline options (--runner, --project, ...) pass through."
        )
        command._add_argparse_args(helper)
        helper.print_help()
        raise SystemExit(0)
    ours = OneLineParser(prog=prog, allow_abbrev=False, add_help=False)
    command._add_argparse_args(ours)
    _, beam_argv = ours.parse_known_args(argv)
    beams = OneLineParser(prog=prog, allow_abbrev=False, add_help=False)
    for cls in PipelineOptions.__subclasses__():
        cls._add_argparse_args(beams)
    _, unknown = beams.parse_known_args(beam_argv)
    if unknown:
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)}")
    return command(argv), PipelineOptions(beam_argv)


def _bare_dry_run(argv: list[str]) -> list[str]:
    """Beam's ``--dry_run`` wants a value; accept it bare, as Dataflow's docs write it."""
    out = []
    for i, arg in enumerate(argv):
        bare = arg == "--dry_run" and (i + 1 == len(argv) or argv[i + 1].startswith("-"))
        out.append("--dry_run=True" if bare else arg)
    return out


def require(value, flag: str):
    """Returns ``value``, or raises UsageError naming the missing flag."""
    if value is None or value == [] or value == "":
        raise UsageError(f"{flag} is required")
    return value


def new_pipeline(beam_options: PipelineOptions) -> beam.Pipeline:
    """A Pipeline for these options; an unknown --runner is a usage error, not a traceback.

    DirectRunner means Beam's FnApiRunner here, always. Beam 2.77's DirectRunner tries the
    Prism runner first, which it downloads from GitHub: offline that costs a failed fetch
    per run before it falls back, and where the fetch works it runs the pipeline on Prism,
    which ignores ``--direct_num_workers`` and ``--direct_running_mode``.
    """
    name = beam_options.view_as(StandardOptions).runner or "DirectRunner"
    try:
        runner = create_runner(name)
    except (ValueError, ImportError):
        raise UsageError(f"unknown --runner {name}") from None
    if isinstance(runner, SwitchingDirectRunner):
        runner = local_runner(beam_options)
    return beam.Pipeline(runner=runner, options=beam_options)


def local_runner(beam_options: PipelineOptions):
    """The FnApiRunner as DirectRunner builds it, with the options its workers are given."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(beam_options.get_all_options())
    info = beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(info))


def check_output_outside(output: str, inputs: Sequence[str]) -> None:
    """Refuses an output inside an input: the next run would read its own tables."""
    out = output.rstrip("/") + "/"
    for uri in inputs:
        root = uri.split("*", 1)[0].rstrip("/") + "/"
        if out.startswith(root):
            raise UsageError(f"--output {output} lies inside --input {uri}")


def check_inputs_exist(inputs: Sequence[str], sources=None) -> None:
    """Raises UsageError naming an input that matches nothing, or a store that cannot be
    reached (``sources``: the SourceSettings that reach them), before any heavy import."""
    from pipelines import source_args
    from transforms.sources.registry import SourceSettings

    source_args.check_inputs(inputs, sources or SourceSettings())


def execute(
    pipeline: beam.Pipeline, inputs: Sequence[str], output: str, sources=None, *, checked=False
) -> dict:
    """Checks the inputs exist (one line if not, before any work; skipped when the caller
    did with ``checked``), runs the pipeline to the end and returns the manifest it wrote.
    ``sources``: the SourceSettings that reach the inputs.

    Only a finished run leaves a manifest: an old one is removed first, and this run's is
    removed again if the pipeline fails after writing it. After success, ``beam-temp-*``
    leftovers of killed runs are removed.
    """
    from models.layout import MANIFEST_NAME
    from transforms.storage import read_json

    if not checked:
        check_inputs_exist(inputs, sources)
    remove_manifest(output)
    try:
        pipeline.run().wait_until_finish()
    except BaseException:
        with contextlib.suppress(Exception):
            remove_manifest(output)
        raise
    remove_beam_temp(output)
    manifest = read_json(FileSystems.join(output, MANIFEST_NAME))
    if manifest is None:
        raise RuntimeError("the pipeline finished without writing its manifest")
    return manifest
