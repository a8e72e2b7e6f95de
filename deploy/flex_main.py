"""Dataflow Flex Template launcher: builds the ingest or score pipeline and submits it.

The template launcher runs ``python flex_main.py --name=value ...`` with the template's
parameters and Dataflow's own options, and expects the program to exit once the job is
submitted (Dataflow's docs: do not wait for the job in a launcher). So this parses the
command's options, checks them with the command's ``configure``, builds the pipeline with
its ``build_pipeline`` and calls ``run()`` without waiting. ``pipelines.<command>.run``
cannot be used here: it waits for the job, which a launcher must not do (docs/deploy.md);
both pipelines complete their own output, manifest included, so nothing is lost by not
waiting.

Parameter names are the options' snake_case names (``key_file``, ``tfrecord_shards``),
spelled like Beam's own (``temp_location``) and never one of them (ingest's ``--labels`` is
``label_file``); they are turned back into the command's flags (``--key-file``) before
parsing. The image says which command it launches in
``DICOMFLOW_TEMPLATE`` (``deploy/flex-template.Dockerfile``); run by hand, the command comes
first: ``python deploy/flex_main.py ingest --input=... --output=... --key_file=gs://...``.
"""

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# Template name → (module, options class). Each module has configure(opts, beam_options) and
# build_pipeline(pipeline, config).
TEMPLATES = {
    "ingest": ("pipelines.ingest", "IngestOptions"),
    "score": ("pipelines.score", "ScoreOptions"),
}
TEMPLATE_ENV = "DICOMFLOW_TEMPLATE"
# Beam has --labels too (the job's labels, which a launcher may pass): ingest's label export
# is the parameter label_file, and a bare --labels goes to Beam under its alias --label.
RENAMED = {"labels": "label_file"}
BEAM_ALIASES = {"--labels": "--label"}
USAGE = (
    f"usage: flex_main.py {{{'|'.join(TEMPLATES)}}} --name=value ... "
    f"(or set {TEMPLATE_ENV} and give only the parameters)"
)


def options_class(template: str) -> type:
    """The options class of a template's command."""
    module, name = TEMPLATES[template]
    return getattr(importlib.import_module(module), name)


def parameter_flags(options: type) -> dict[str, argparse.Action]:
    """Template parameter name (the option's dest, e.g. ``key_file``) → the command's option."""
    parser = argparse.ArgumentParser(add_help=False)
    options._add_argparse_args(parser)
    return {RENAMED.get(a.dest, a.dest): a for a in parser._actions if a.option_strings}


def command_argv(argv: Sequence[str], flags: dict[str, argparse.Action]) -> list[str]:
    """``--key_file=v`` (or ``--key_file v``) → ``--key-file=v``; ``--a_switch=true`` →
    ``--a-switch`` (``false`` drops it: a parameter always has a value); Beam's options and
    anything unknown pass as they are, for the command's parser to judge."""
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name in BEAM_ALIASES:
            out.append(f"{BEAM_ALIASES[name]}{eq}{value}")
            continue
        action = flags.get(name[2:]) if name.startswith("--") else None
        if action is None:
            out.append(arg)
        elif action.nargs == 0 and eq and value.lower() in ("true", "false"):
            if value.lower() == "true":
                out.append(action.option_strings[0])
        else:
            out.append(f"{action.option_strings[0]}{eq}{value}")
    return out


def submit(template: str, argv: Sequence[str]):
    """Builds the template's pipeline from ``argv`` and submits it; returns the PipelineResult.

    Raises:
        UsageError: a missing or wrong parameter, or inputs that match nothing.
    """
    from pipelines.options import UsageError, new_pipeline, parse_options
    from transforms import dicom_io

    options = options_class(template)
    argv = command_argv(argv, parameter_flags(options))
    opts, beam_options = parse_options(f"dicomflow {template}", argv, options)
    module = importlib.import_module(TEMPLATES[template][0])
    config = module.configure(opts, beam_options)
    pipeline = module.build_pipeline(new_pipeline(beam_options), config)
    try:
        dicom_io.check_inputs(list(config.inputs))
    except ValueError as e:
        raise UsageError(str(e)) from None
    return pipeline.run()  # no wait_until_finish: the launcher must exit for the job to start


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    template = os.environ.get(TEMPLATE_ENV) or (argv.pop(0) if argv else "")
    if template not in TEMPLATES:
        print(f"flex_main.py: error: unknown template {template!r}\n{USAGE}", file=sys.stderr)
        return 2
    from pipelines.options import UsageError

    try:
        submit(template, argv)
    except UsageError as e:
        print(f"flex_main.py {template}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
