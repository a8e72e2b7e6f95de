"""`dicomflow deidentify`: de-identified DICOM Part 10 copies of an export (PS3.15 Annex E).

The same reading layer and ``Deidentify`` transform that ingest and scoring use, written
out as ``deid_dicom/<new SOPInstanceUID>.dcm`` so a re-run with the same key overwrites
instead of duplicating, with ``errors/`` and ``manifest.json`` (key fingerprint, never the
key). Nothing is deleted: output written under another key stays until its owner removes
it.
"""

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from models import configs
from models.configs import arg, nested
from models.layout import DEID_DIR, ERRORS_TABLE, new_run_id
from models.uids import is_valid_uid
from pipelines import flags, source_args
from pipelines.options import (
    CommandOptions,
    UsageError,
    check_output_outside,
    execute,
    new_pipeline,
    parse_options,
)
from transforms import dicom_io
from transforms.deadletter import (
    DEAD_LETTER,
    STAGE_WRITE,
    DeadLetterFn,
    StageError,
    WriteErrors,
)
from transforms.deid import DeidConfig, Deidentify, DeidResult, count_keys, deid_header
from transforms.keys import KeySource, fingerprint
from transforms.linkage import write_linkage
from transforms.manifest import WriteManifest
from transforms.sources import registry
from transforms.sources.base import Sink
from transforms.sources.registry import SourceSettings
from transforms.storage import write_bytes


@dataclass(frozen=True, kw_only=True)
class DeidentifyArgs:
    """The flags of ``dicomflow deidentify``, declared once (``models.configs``)."""

    input: list[str] = arg([], flags.INPUT_HELP)
    output: str | None = arg(None, flags.OUTPUT_HELP)
    key: flags.KeyFlags = nested(flags.KeyFlags, "key-")
    deid_config: str | None = arg(None, flags.DEID_CONFIG_HELP)
    limits: dicom_io.Limits = nested(dicom_io.Limits)
    linkage_output: str | None = arg(None, "write the encrypted original→pseudonym table here")
    linkage_key: flags.KeyFlags = nested(flags.KeyFlags, "linkage-key-")
    sources: SourceSettings = nested(SourceSettings)
    output_store: source_args.OutputStore = nested(source_args.OutputStore, "output-")


class DeidentifyOptions(CommandOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        configs.add_arguments(parser, DeidentifyArgs)


@dataclass(frozen=True, kw_only=True)
class DeidentifyConfig:
    """Everything a deidentify pipeline is built from, checked (``configure``)."""

    inputs: tuple[str, ...]
    output: str
    key: KeySource
    deid: DeidConfig = field(default_factory=DeidConfig)
    limits: dicom_io.Limits = field(default_factory=dicom_io.Limits)
    linkage_output: str | None = None
    linkage_key: KeySource | None = None  # given exactly when linkage_output is
    run_id: str = ""
    sources: SourceSettings = field(default_factory=SourceSettings)  # for the inputs
    output_store: Sink | None = None  # a store instead of files under deid_dicom/


def configure(
    opts: DeidentifyOptions | DeidentifyArgs, beam_options: PipelineOptions
) -> DeidentifyConfig:
    """Checks the flags and both keys; returns the config or raises UsageError."""
    args = flags.parsed(DeidentifyArgs, opts)
    inputs, output = flags.inputs_and_output(args.input, args.output)
    check_output_outside(output, inputs)
    dataflow = flags.on_dataflow(beam_options)
    key = flags.key_source(args.key, "key", dataflow)
    deid = flags.load_deid_config(args.deid_config)
    linkage_key = None
    if args.linkage_output:
        linkage_key = flags.key_source(args.linkage_key, "linkage-key", dataflow)
        if fingerprint(linkage_key.resolve()) == fingerprint(key.resolve()):
            raise UsageError("the linkage key must differ from the pseudonymization key")
    elif args.linkage_key.env or args.linkage_key.file:
        raise UsageError("--linkage-key-* needs --linkage-output")
    linkage_output = dicom_io.normalize_uri(args.linkage_output) if args.linkage_output else None
    sources = source_args.settings(args.sources, inputs, dataflow)
    sink = source_args.sink(args.output_store, sources, dataflow)
    return DeidentifyConfig(
        inputs=tuple(inputs),
        output=output,
        key=key,
        deid=deid,
        limits=args.limits,
        linkage_output=linkage_output,
        linkage_key=linkage_key,
        run_id=new_run_id(),
        sources=sources,
        output_store=sink,
    )


class WriteDeidFn(DeadLetterFn):
    """Writes one de-identified instance, named by its new SOPInstanceUID.

    Names are checked: with retain_uids the UID is the source's own, and a malformed one
    ("../x") must not choose where the file goes.
    """

    stage = STAGE_WRITE

    def __init__(self, directory: str):
        self._directory = directory
        self._written = Metrics.counter(dicom_io.METRICS_NAMESPACE, "deid_files_written")

    def where(self, element: tuple[str, str | None, DeidResult]) -> tuple[str, str | None]:
        return element[0], element[1]

    def work(self, element: tuple[str, str | None, DeidResult]) -> Iterator[tuple]:
        result = element[2]
        uid = result.sop_instance_uid
        if not is_valid_uid(uid):
            raise StageError(
                "invalid_uid",
                "the SOPInstanceUID is not a valid UID; no file name can be made from it",
            )
        try:
            path = FileSystems.join(self._directory, f"{uid}.dcm")
            assert result.data is not None  # DeidentifyFn encodes the file for this writer
            write_bytes(path, result.data, "application/dicom")
        except Exception as e:
            message = f"cannot write the de-identified file ({type(e).__name__})"
            raise StageError("write_failed", message) from None
        self._written.inc()
        yield result.modality, result.net_counts


def build_pipeline(pipeline: beam.Pipeline, config: DeidentifyConfig) -> beam.Pipeline:
    """Adds the deidentify graph to ``pipeline`` (not run) and returns it."""
    inputs, output = list(config.inputs), config.output
    header = {
        **deid_header(
            "deidentify", config.run_id, registry.describe_uris(inputs), config.key, config.deid
        ),
        "linkage": bool(config.linkage_output),
        "limits": config.limits.describe(),
    }
    if config.output_store:
        header["output_store"] = config.output_store.describe()

    p = pipeline
    sources = registry.configure_inputs(inputs, config.sources)
    objects, read_errors = p | "ReadInstances" >> registry.ReadInstances(sources, config.limits)
    results, deid_errors, linkage = objects | "Deidentify" >> Deidentify(
        config.deid, config.key, linkage=bool(config.linkage_output), limits=config.limits
    )
    if config.output_store:  # into a store instead of files under deid_dicom/
        stored, write_errors = results | "StoreInstances" >> config.output_store.write()
    else:
        written = results | "WriteDeidDicom" >> beam.ParDo(
            WriteDeidFn(FileSystems.join(output, DEID_DIR))
        ).with_outputs(DEAD_LETTER, main="files")
        stored, write_errors = written.files, written[DEAD_LETTER]
    files = stored | "CountFiles" >> beam.combiners.Count.Globally()
    errors = (
        (read_errors, deid_errors, write_errors)
        | "AllDeadLetters" >> beam.Flatten()
        | "WriteErrors" >> WriteErrors(output)
    )
    if linkage is not None:
        _ = (
            linkage
            | "DistinctLinks" >> beam.Distinct()
            | "CollectLinks" >> beam.combiners.ToList()
            | "WriteLinkage" >> beam.Map(write_linkage, config.linkage_output, config.linkage_key)
        )
    _ = (
        (
            stored
            | "DeidKeys"
            >> beam.Map(
                lambda mc: (
                    ["seen", "deidentified", ("by_modality", mc[0] or "none"), *count_keys(mc[1])]
                )
            ),
            errors.keys,
        )
        | "AllKeys" >> beam.Flatten()
        | "WriteManifest"
        >> WriteManifest(output, header, {DEID_DIR: files, ERRORS_TABLE: errors.files})
    )
    return p


def deidentify(config: DeidentifyConfig, beam_options: PipelineOptions) -> dict:
    """Runs a deidentify job to the end (inputs checked first); returns its manifest."""
    pipeline = build_pipeline(new_pipeline(beam_options), config)
    if config.output_store:
        source_args.check_sink(config.output_store)
    return execute(pipeline, config.inputs, config.output, config.sources)


def run(argv: Sequence[str]) -> int:
    opts, beam_options = parse_options("dicomflow deidentify", argv, DeidentifyOptions)
    config = configure(opts, beam_options)
    manifest = deidentify(config, beam_options)
    output = config.output
    counts = manifest["counts"]
    print(
        f"deidentify: {counts.get('seen', 0)} objects seen, "
        f"{counts.get('deidentified', 0)} de-identified, "
        f"{counts.get('dead_lettered', 0)} dead-lettered → {output}"
        f"{' and ' + config.output_store.describe() if config.output_store else ''} "
        f"(key fingerprint {manifest['key_fingerprint']})",
        file=sys.stderr,
    )
    return 0
