"""`dicomflow inventory`: what is in the bucket, one row per object or archive member."""

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from models import configs
from models import features as f
from models.configs import arg, nested
from models.layout import ERRORS_TABLE, INVENTORY_TABLE, new_run_id
from pipelines import flags, source_args
from pipelines.options import (
    CommandOptions,
    check_output_outside,
    execute,
    new_pipeline,
    parse_options,
)
from transforms import dicom_io
from transforms.deadletter import WriteErrors
from transforms.manifest import WriteManifest, code_version, utc_now
from transforms.parquet import WriteParquet, table_dir
from transforms.sources import registry
from transforms.sources.registry import SourceSettings


@dataclass(frozen=True, kw_only=True)
class InventoryArgs:
    """The flags of ``dicomflow inventory``, declared once (``models.configs``)."""

    input: list[str] = arg([], "file, folder, gs:// prefix or glob; repeat for several")
    output: str | None = arg(None, flags.OUTPUT_HELP)
    limits: dicom_io.Limits = nested(dicom_io.Limits)
    sources: SourceSettings = nested(SourceSettings)


class InventoryOptions(CommandOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        configs.add_arguments(parser, InventoryArgs)


@dataclass(frozen=True, kw_only=True)
class InventoryConfig:
    """Everything an inventory pipeline is built from, checked (``configure``)."""

    inputs: tuple[str, ...]
    output: str
    limits: dicom_io.Limits = field(default_factory=dicom_io.Limits)
    run_id: str = ""
    sources: SourceSettings = field(default_factory=SourceSettings)


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


def configure(
    opts: InventoryOptions | InventoryArgs, beam_options: PipelineOptions
) -> InventoryConfig:
    """Checks the flags (no I/O); returns the config or raises UsageError."""
    args = flags.parsed(InventoryArgs, opts)
    inputs, output = flags.inputs_and_output(args.input, args.output)
    check_output_outside(output, inputs)
    sources = source_args.settings(args.sources, inputs, flags.on_dataflow(beam_options))
    return InventoryConfig(
        inputs=tuple(inputs),
        output=output,
        limits=args.limits,
        run_id=new_run_id(),
        sources=sources,
    )


def build_pipeline(pipeline: beam.Pipeline, config: InventoryConfig) -> beam.Pipeline:
    """Adds the inventory graph to ``pipeline`` (not run) and returns it."""
    output = config.output
    limits = config.limits
    sources = registry.configure_inputs(config.inputs, config.sources)
    header = {
        "pipeline": "inventory",
        "run_id": config.run_id or new_run_id(),
        "code_version": code_version(),
        "started_at": utc_now(),
        "inputs": registry.describe_inputs(sources),
        "options": {"max_object_bytes": config.limits.max_object_bytes},
        "limits": limits.describe(),
    }

    p = pipeline
    # One row per object in a bucket (every copy), as per instance in a store.
    read = registry.ReadInstances(sources, limits, every_copy=True)
    objects, read_errors = p | "ReadObjects" >> read
    rows, parse_errors = objects | "InspectDicom" >> dicom_io.InspectDicom(limits)
    errors = (
        (read_errors, parse_errors)
        | "AllDeadLetters" >> beam.Flatten()
        | "WriteErrors" >> WriteErrors(output)
    )
    inventory_files = rows | "WriteInventory" >> WriteParquet(
        table_dir(output, INVENTORY_TABLE), f.INVENTORY_SCHEMA
    )
    _ = (
        (
            rows | "InventoryKeys" >> beam.Map(inventory_keys),
            errors.keys,
        )
        | "AllKeys" >> beam.Flatten()
        | "WriteManifest"
        >> WriteManifest(
            output,
            header,
            {INVENTORY_TABLE: inventory_files, ERRORS_TABLE: errors.files},
        )
    )
    return p


def inventory(config: InventoryConfig, beam_options: PipelineOptions) -> dict:
    """Runs an inventory to the end (inputs checked first); returns its manifest."""
    pipeline = build_pipeline(new_pipeline(beam_options), config)
    return execute(pipeline, config.inputs, config.output, config.sources)


def run(argv: Sequence[str]) -> int:
    """Parses arguments, checks the inputs exist, runs the pipeline, prints the counts."""
    opts, beam_options = parse_options("dicomflow inventory", argv, InventoryOptions)
    config = configure(opts, beam_options)
    output = config.output
    counts = inventory(config, beam_options)["counts"]
    print(
        f"inventory: {counts.get('seen', 0)} objects seen, "
        f"{counts.get('inventoried', 0)} inventoried, "
        f"{counts.get('dead_lettered', 0)} dead-lettered → {output}",
        file=sys.stderr,
    )
    return 0
