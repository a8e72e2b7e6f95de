"""The `dicomflow` command: one subcommand per pipeline."""

import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from pipelines import quiet
from pipelines.failures import check_buckets, describe_failure, quiet_beam_errors
from pipelines.options import UsageError

# Only commands that work are listed; each module has run(argv) -> exit status.
COMMANDS = {
    "synth": ("pipelines.synth", "write a synthetic PACS export (DICOM, archives, junk, labels)"),
    "inventory": ("pipelines.inventory", "list every object and archive member, with status"),
    "deidentify": ("pipelines.deidentify", "write de-identified DICOM copies (PS3.15 Annex E)"),
    "ingest": ("pipelines.ingest", "de-identified, normalized TFRecords + tf.Transform + index"),
    "train": ("pipelines.train", "train, evaluate, export and gate a model (local or Vertex AI)"),
    "score": ("pipelines.score", "score raw DICOM or ingest TFRecords with a model → Parquet"),
    "run": ("pipelines.run", "scheduled, incremental ingest → train → score under a lock"),
    "demo": ("pipelines.demo", "synthetic corpus → ingest → train → score → report.html"),
}


def _usage() -> str:
    lines = ["usage: dicomflow COMMAND [options] [Beam pipeline options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "dicomflow COMMAND --help shows a command's options."]
    lines += [
        f"Output is dicomflow's own lines; {quiet.VERBOSE_FLAG} (or {quiet.LOG_ENV}=debug) "
        "adds the libraries' logs."
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; ``argv`` None reads the process's command line (the console
    script), which also filters native log lines out of standard error."""
    console = argv is None
    try:
        level, argv = quiet.verbosity(list(sys.argv[1:] if argv is None else argv))
    except ValueError as e:
        print(f"dicomflow: error: {e}", file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"dicomflow: error: unknown command {command!r} (see dicomflow --help)", file=sys.stderr
        )
        return 2
    quiet.configure(level)
    if console and level is None:
        quiet.NativeLogFilter()
    if level is None or level > logging.DEBUG:
        quiet_beam_errors()
    module = importlib.import_module(COMMANDS[command][0])
    try:
        if "--dry_run" not in rest and not any(a.startswith("--dry_run=") for a in rest):
            check_buckets(rest)
        return module.run(rest)
    except UsageError as e:
        print(f"dicomflow {command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the environment failed us: one line, the cause, exit 1
        if os.environ.get("DICOMFLOW_DEBUG"):
            traceback.print_exc()
        print(f"dicomflow {command}: error: {describe_failure(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
