"""`dicomflow inventory`: what is in the bucket, one row per object or archive member."""

import sys
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from models import features as f
from pipelines.limits import add_limit_arguments, limits_from
from pipelines.options import (
    CommandOptions,
    check_output_outside,
    execute,
    new_pipeline,
    new_run_id,
    parse_options,
    require,
)
from transforms import dicom_io
from transforms.deadletter import DeadLetter
from transforms.manifest import WriteManifest, code_version, error_keys, utc_now
from transforms.parquet import WriteParquet, table_dir

INVENTORY_TABLE = "inventory"
ERRORS_TABLE = "errors"


class InventoryOptions(CommandOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--input",
            action="append",
            help="file, folder, gs:// prefix or glob; repeat for several",
        )
        parser.add_argument("--output", help="output root (local path or gs://)")
        parser.add_argument(
            "--max-object-bytes",
            type=int,
            default=dicom_io.DEFAULT_MAX_OBJECT_BYTES,
            help="objects and archive members above this size get a too_large error row",
        )
        add_limit_arguments(parser)


def inventory_keys(row: dict) -> list:
    """The manifest counts one inventory row contributes to."""
    keys: list = ["seen", "inventoried", ("by_parse_status", row[f.PARSE_STATUS])]
    if row[f.MODALITY]:
        keys.append(("by_modality", row[f.MODALITY]))
    syntax = row[f.TRANSFER_SYNTAX_NAME] or row[f.TRANSFER_SYNTAX_UID]
    if syntax:
        keys.append(("by_transfer_syntax", syntax))
    if row[f.DECODER_AVAILABLE] is False:
        keys.append("no_decoder")
    return keys


def validate(opts: InventoryOptions) -> tuple[list[str], str]:
    """Checks the arguments (no I/O); returns the normalised inputs and output."""
    inputs = [dicom_io.normalize_uri(u) for u in require(opts.input, "--input")]
    output = dicom_io.normalize_uri(require(opts.output, "--output"))
    limits_from(opts)
    check_output_outside(output, inputs)
    return inputs, output


def build_pipeline(
    opts: InventoryOptions, beam_options: PipelineOptions, run_id: str | None = None
) -> beam.Pipeline:
    """Builds (does not run) the inventory pipeline."""
    inputs, output = validate(opts)
    limits = limits_from(opts)
    header = {
        "pipeline": "inventory",
        "run_id": run_id or new_run_id(),
        "code_version": code_version(),
        "started_at": utc_now(),
        "inputs": list(inputs),
        "options": {"max_object_bytes": opts.max_object_bytes},
        "limits": limits.describe(),
    }

    p = new_pipeline(beam_options)
    paths = p | "MatchInputs" >> dicom_io.MatchInputs(inputs)
    objects, read_errors = paths | "ReadObjects" >> dicom_io.ReadObjects(limits)
    rows, parse_errors = objects | "InspectDicom" >> dicom_io.InspectDicom(limits)
    errors = (
        (read_errors, parse_errors)
        | "AllDeadLetters" >> beam.Flatten()
        | "ErrorRows" >> beam.Map(DeadLetter.to_row)
    )
    inventory_files = rows | "WriteInventory" >> WriteParquet(
        table_dir(output, INVENTORY_TABLE), f.INVENTORY_SCHEMA
    )
    error_files = errors | "WriteErrors" >> WriteParquet(
        table_dir(output, ERRORS_TABLE), f.ERRORS_SCHEMA
    )
    _ = (
        (
            rows | "InventoryKeys" >> beam.Map(inventory_keys),
            errors | "ErrorKeys" >> beam.Map(error_keys),
        )
        | "AllKeys" >> beam.Flatten()
        | "WriteManifest"
        >> WriteManifest(
            output,
            header,
            {INVENTORY_TABLE: inventory_files, ERRORS_TABLE: error_files},
        )
    )
    return p


def run(argv: Sequence[str]) -> int:
    """Parses arguments, checks the inputs exist, runs the pipeline, prints the counts."""
    opts, beam_options = parse_options("dicomflow inventory", argv, InventoryOptions)
    inputs, output = validate(opts)
    counts = execute(build_pipeline(opts, beam_options), inputs, output)["counts"]
    print(
        f"inventory: {counts.get('seen', 0)} objects seen, "
        f"{counts.get('inventoried', 0)} inventoried, "
        f"{counts.get('dead_lettered', 0)} dead-lettered → {output}",
        file=sys.stderr,
    )
    return 0
