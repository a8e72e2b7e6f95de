"""`dicomflow ingest`: de-identified, normalized TFRecords with tf.Transform, labels and splits.

read → parse → join labels (original identifiers) → de-identify → normalize pixels → split
by patient → TFRecords per split + the train split's statistics → the tf.Transform graph,
index, errors, manifest. One Beam pipeline; the heavy steps fuse, so a dataset travels
between them in memory and nothing collects the corpus on one worker. No step imports
TensorFlow: the graph is a copy of the one shipped for the image geometry, with the run's
statistics as its assets (``models.transform_writer``); only a geometry that is not
shipped is built, with TensorFlow, in the step that writes the graph.
"""

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from models import configs
from models import features as f
from models.configs import arg, nested
from models.layout import (
    ERRORS_TABLE,
    INDEX_DIR,
    TFRECORD_SUFFIX,
    TFRECORDS_DIR,
    TRANSFORM_DIR,
    new_run_id,
)
from models.tasks import DEFAULT_TASK, SEGMENTATION, TASKS
from pipelines import flags, source_args
from pipelines.options import (
    CommandOptions,
    UsageError,
    check_inputs_exist,
    check_output_outside,
    execute,
    new_pipeline,
    parse_options,
)
from transforms import dicom_io
from transforms.convert import Instance, PrepareInstances
from transforms.deadletter import WriteErrors
from transforms.deid import DeidConfig, count_keys, deid_header
from transforms.keys import KeySource
from transforms.labels import SNAKE_CASE, ReadLabels, load_labels
from transforms.manifest import (
    WriteManifest,
)
from transforms.mask_classes import MaskClasses
from transforms.parquet import WriteParquet, delete_stale_shards, table_dir
from transforms.pixels import PixelConfig
from transforms.sources import registry
from transforms.sources.registry import SourceSettings
from transforms.split import ALL_SPLITS, SplitConfig, assign_split
from transforms.tfrecord import GzipTFRecordSink, encode_example
from transforms.transform_graph import AnalyzeTrain, ImageMoments, image_moments


@dataclass(frozen=True, kw_only=True)
class IngestArgs:
    """The flags of ``dicomflow ingest``, declared once (``models.configs``); ``configure``
    checks them into an ``IngestConfig``."""

    input: list[str] = arg([], flags.INPUT_HELP)
    output: str | None = arg(None, flags.OUTPUT_HELP)
    labels: str | None = arg(None, "CSV or Parquet label export (original keys)")
    task: str = arg(
        DEFAULT_TASK,
        "classification (labels from --labels) or segmentation (masks from SEG and RTSTRUCT "
        "objects in --input or --masks)",
        choices=TASKS,
    )
    masks: str | None = arg(
        None, "segmentation: more SEG/RTSTRUCT objects (file, folder, gs://, DICOMweb)"
    )
    mask_classes: str | None = arg(
        None,
        "segmentation: which segments and ROIs, by name, are which class, e.g. "
        "'liver=Liver,tumour=GTV|GTV*' (case-insensitive, * globs; others left out; a "
        "later class wins where they overlap); "
        "default: their own numbers are the classes",
    )
    key: flags.KeyFlags = nested(flags.KeyFlags, "key-")
    deid_config: str | None = arg(None, flags.DEID_CONFIG_HELP)
    pixel_config: str | None = arg(None, "YAML: size, channels, frame_policy, windows")
    split: str | None = arg(None, "train,eval,test fractions, e.g. 0.8,0.1,0.1")
    tfrecord_shards: int = arg(0, "shards per split (0: the runner's)")
    limits: dicom_io.Limits = nested(dicom_io.Limits)
    sources: SourceSettings = nested(SourceSettings)


class IngestOptions(CommandOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        configs.add_arguments(parser, IngestArgs)


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """Everything an ingest pipeline is built from, checked (``configure``)."""

    inputs: tuple[str, ...]
    output: str
    key: KeySource
    deid: DeidConfig = field(default_factory=DeidConfig)
    pixels: PixelConfig = field(default_factory=PixelConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    labels: str | None = None  # label export URI
    label_rows: int | None = None  # its rows, checked in the launcher
    label_source: str | None = None  # its key column (snake_case), written on labeled rows
    # Rows whose key carries two different labels: dropped, either could be wrong.
    label_conflicting_rows: int | None = None
    tfrecord_shards: int = 0
    limits: dicom_io.Limits = field(default_factory=dicom_io.Limits)
    run_id: str = ""
    sources: SourceSettings = field(default_factory=SourceSettings)
    task: str = DEFAULT_TASK
    masks: str | None = None  # more SEG/RTSTRUCT objects (segmentation)
    mask_classes: MaskClasses | None = None  # classes by segment/ROI name (segmentation)

    @property
    def segmentation(self) -> bool:
        return self.task == SEGMENTATION


def configure(opts: IngestOptions | IngestArgs, beam_options: PipelineOptions) -> IngestConfig:
    """Checks the flags, the key and the label file (read here, to refuse a bad one before
    any work) and returns the config; raises UsageError."""
    args = flags.parsed(IngestArgs, opts)
    inputs, output = flags.inputs_and_output(args.input, args.output)
    check_output_outside(output, inputs)
    if args.tfrecord_shards < 0:
        raise UsageError("--tfrecord-shards must be >= 0")
    dataflow = flags.on_dataflow(beam_options)
    key = flags.key_source(args.key, "key", dataflow)
    deid = flags.load_deid_config(args.deid_config)
    pixels = flags.load_pixel_config(args.pixel_config)
    split = parse_split(args.split)
    labels = dicom_io.normalize_uri(args.labels) if args.labels else None
    if args.task == SEGMENTATION and args.labels:
        raise UsageError("--labels is for --task classification; segmentation reads masks")
    if args.masks and args.task != SEGMENTATION:
        raise UsageError("--masks is for --task segmentation")
    mask_classes = None
    if args.mask_classes is not None:
        if args.task != SEGMENTATION:
            raise UsageError("--mask-classes is for --task segmentation")
        try:
            mask_classes = MaskClasses.parse(args.mask_classes)
        except ValueError as e:
            raise UsageError(f"--mask-classes: {e}") from None
    label_rows = label_source = conflicting_rows = None
    if labels:
        try:
            table = load_labels(labels)  # refuse a bad file before any work
        except ValueError as e:
            raise UsageError(str(e)) from None
        label_rows, label_source = table.rows, SNAKE_CASE[table.key]
        conflicting_rows = table.conflicting_rows
    return IngestConfig(
        inputs=tuple(inputs),
        output=output,
        key=key,
        deid=deid,
        pixels=pixels,
        split=split,
        labels=labels,
        label_rows=label_rows,
        label_source=label_source,
        label_conflicting_rows=conflicting_rows,
        tfrecord_shards=args.tfrecord_shards,
        limits=args.limits,
        run_id=new_run_id(),
        sources=source_args.settings(args.sources, inputs, dataflow),
        task=args.task,
        masks=dicom_io.normalize_uri(args.masks) if args.masks else None,
        mask_classes=mask_classes,
    )


@dataclass(frozen=True)
class Converted:
    """One converted instance: its pseudonymous id, split, and one example per image;
    in the train split, also its pixels' moments (the transform graph's statistics)."""

    source: str
    member: str | None
    sop_instance_uid: str
    split: str
    label: str | None
    examples: tuple[bytes, ...]
    index_rows: tuple[dict, ...]
    deid_counts: tuple[tuple[str, int], ...] = ()
    pixel_moments: ImageMoments | None = None  # train only


def to_converted(
    instance: Instance,
    split_config: SplitConfig,
    label_source: str | None = None,
    segmentation: bool = False,
) -> Converted:
    """A converted instance → its split, one example and one index row per image.

    ``label_source``: the label file's key column, written on labeled rows.
    ``segmentation``: the label is the mask, one per image (frame); an instance without
    masks is unlabeled (its examples carry all-background masks), and an example's
    ``label`` is the highest class its mask marks ("0": none; the instance's, over all its
    images, for its split and counts), so splits and counts read as for classification.
    """
    label = instance.label
    ids = instance.ids
    image_masks: list[bytes | None] = [None] * len(instance.images)
    image_labels = [label] * len(instance.images)
    fractions: list[float | None] = [None] * len(instance.images)
    if segmentation:
        label = None
        if instance.mask is not None:
            classes = [max(m, default=0) for m in instance.mask]
            image_masks = list(instance.mask)
            image_labels = [str(c) for c in classes]
            fractions = list(instance.foreground_fraction or fractions)
            label = str(max(classes, default=0))
        else:
            image_masks = [bytes(i.shape[0] * i.shape[1]) for i in instance.images]
            image_labels = [None] * len(instance.images)
    split = assign_split(ids[f.PATIENT_ID], label is not None, split_config)
    examples, rows = [], []
    for image, mask, image_label, fraction in zip(
        instance.images, image_masks, image_labels, fractions, strict=True
    ):
        examples.append(
            encode_example(image.data, image.shape, ids, image_label or "", image.frame, mask)
        )
        rows.append(
            {
                **ids,
                f.SPLIT: split,
                f.LABEL: image_label,
                f.FRAME: image.frame,
                f.ROWS: image.rows,
                f.COLUMNS: image.columns,
                f.PHOTOMETRIC_INTERPRETATION: image.photometric,
                f.TRANSFER_SYNTAX_UID: instance.transfer_syntax_uid,
                f.WINDOW_CENTER: image.window_center,
                f.WINDOW_WIDTH: image.window_width,
                **(instance.redaction or {}),
                **dict(instance.attributes),
                f.LABEL_SOURCE: label_source if image_label is not None else None,
                f.MASK_SOURCE: (instance.mask_source or "none") if segmentation else None,
                f.FOREGROUND_FRACTION: fraction,
            }
        )
    return Converted(
        instance.source,
        instance.member,
        ids[f.SOP_INSTANCE_UID],
        split,
        label,
        tuple(examples),
        tuple(rows),
        instance.deid_counts,
        image_moments(i.data for i in instance.images) if split == f.TRAIN else None,
    )


def converted_keys(c: Converted) -> list:
    keys: list = ["seen", "converted", ("by_split", c.split), ("by_label", c.label or "none")]
    keys += ["examples"] * len(c.examples)
    keys += [("examples_by_split", c.split)] * len(c.examples)
    return keys + count_keys(c.deid_counts)


class WriteTFRecords(beam.PTransform):
    """Examples of one split → ``tfrecords/<split>/part-*.tfrecord.gz`` (gzip), re-run safe."""

    def __init__(self, directory: str, num_shards: int):
        super().__init__()
        self._directory = directory
        self._num_shards = num_shards

    def expand(self, examples: beam.PCollection[bytes]) -> beam.PCollection[list[str]]:
        written = examples | "Write" >> beam.io.Write(
            GzipTFRecordSink(
                FileSystems.join(self._directory, "part"), TFRECORD_SUFFIX, self._num_shards
            )
        )
        return (
            examples.pipeline
            | "Once" >> beam.Create([None])
            | "DeleteStaleShards"
            >> beam.Map(
                lambda _, d, files: delete_stale_shards(d, files, suffix=TFRECORD_SUFFIX),
                self._directory,
                beam.pvalue.AsList(written),
            )
        )


def parse_split(text: str | None) -> SplitConfig:
    if not text:
        return SplitConfig()
    try:
        train, eval_, test = (float(x) for x in text.split(","))
        return SplitConfig(train=train, eval=eval_, test=test)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--split must be three fractions summing to 1 ({e})") from None


def build_pipeline(pipeline: beam.Pipeline, config: IngestConfig) -> beam.Pipeline:
    """Adds the ingest graph to ``pipeline`` (not run) and returns it."""
    split = config.split
    header = {
        **deid_header(
            "ingest",
            config.run_id,
            registry.describe_uris(config.inputs),
            config.key,
            config.deid,
        ),
        "pixels": config.pixels.describe(),
        "split": {"train": split.train, "eval": split.eval, "test": split.test},
        "labels": {
            "given": bool(config.labels),
            "rows": config.label_rows,
            # Rows whose key carries two different labels: dropped, either could be wrong.
            "conflicting_rows": config.label_conflicting_rows,
        },
        "limits": config.limits.describe(),
        "task": config.task,
    }
    if config.segmentation:
        header["masks"] = {
            "input": "given" if config.masks else None,
            # the user's own classes by name (--mask-classes), or None: the objects' numbers
            "by_name": config.mask_classes.describe() if config.mask_classes else None,
        }
    output = config.output
    p = pipeline
    sources = registry.configure_inputs(config.inputs, config.sources)
    read = p | "ReadInstances" >> registry.ReadInstances(sources, config.limits)
    table = p | "ReadLabels" >> ReadLabels(config.labels) if config.labels else None
    read_dead = [read.dead_letters]
    mask_objects = None
    if config.masks:
        mask_sources = registry.configure_inputs((config.masks,), config.sources)
        masks_read = p | "ReadMasks" >> registry.ReadInstances(mask_sources, config.limits)
        mask_objects, read_dead = masks_read.objects, [*read_dead, masks_read.dead_letters]
    prepared = read.objects | "PrepareInstances" >> PrepareInstances(
        config.deid,
        config.key,
        config.pixels,
        prefix="ingest",
        labels=table,
        limits=config.limits,
        masks=config.segmentation,
        mask_objects=mask_objects,
        mask_classes=config.mask_classes,
    )
    sections = {}
    if prepared.unmatched_labels is not None:
        sections["labels"] = prepared.unmatched_labels | "LabelsSection" >> beam.Map(
            lambda n, given: {**given, "unmatched_rows": n}, header["labels"]
        )
    if prepared.mask_classes is not None:  # class value → name, never a name that failed
        sections["masks"] = prepared.mask_classes | "MasksSection" >> beam.Map(
            lambda classes, given: {**given, "classes": classes}, header["masks"]
        )
    instances = prepared.instances | "Split" >> beam.Map(
        to_converted, config.split, config.label_source, config.segmentation
    )
    by_split = instances | "BySplit" >> beam.Partition(
        lambda c, n: ALL_SPLITS.index(c.split),  # type: ignore[arg-type]  # Beam wraps it
        len(ALL_SPLITS),
    )
    tables = {}
    for name, part in zip(ALL_SPLITS, by_split, strict=True):
        examples = part | f"{name}Examples" >> beam.FlatMap(lambda c: c.examples)
        directory = FileSystems.join(output, TFRECORDS_DIR, name)
        tables[f"{TFRECORDS_DIR}/{name}"] = examples | f"Write{name.title()}" >> WriteTFRecords(
            directory, config.tfrecord_shards
        )
        if name == f.TRAIN:
            sections["tf_transform"] = part | "TfTransform" >> AnalyzeTrain(
                FileSystems.join(output, TRANSFORM_DIR), config.pixels.size, config.pixels.channels
            )
    index_rows = instances | "IndexRows" >> beam.FlatMap(lambda c: c.index_rows)
    tables[INDEX_DIR] = index_rows | "WriteIndex" >> WriteParquet(
        table_dir(output, INDEX_DIR), f.INDEX_SCHEMA
    )
    errors = (
        (*read_dead, prepared.dead_letters)
        | "AllDeadLetters" >> beam.Flatten()
        | "WriteErrors" >> WriteErrors(output)
    )
    tables[ERRORS_TABLE] = errors.files
    _ = (
        (
            instances | "ConvertedKeys" >> beam.Map(converted_keys),
            errors.keys,
        )
        | "AllKeys" >> beam.Flatten()
        | "WriteManifest" >> WriteManifest(output, header, tables, sections=sections)
    )
    return p


def ingest(config: IngestConfig, beam_options: PipelineOptions) -> dict:
    """Runs an ingest to the end (inputs checked first, before the graph is built);
    returns its manifest."""
    check_inputs_exist(config.inputs, config.sources)
    pipeline = build_pipeline(new_pipeline(beam_options), config)
    return execute(pipeline, config.inputs, config.output, config.sources, checked=True)


def summary(manifest: dict, output: str) -> str:
    """The one line a finished ingest prints."""
    counts = manifest["counts"]
    return (
        f"ingest: {counts.get('seen', 0)} objects seen, {counts.get('converted', 0)} converted "
        f"({counts.get('examples', 0)} examples), {counts.get('dead_lettered', 0)} dead-lettered"
        f" → {output}"
    )


def run(argv: Sequence[str]) -> int:
    opts, beam_options = parse_options("dicomflow ingest", argv, IngestOptions)
    config = configure(opts, beam_options)
    print(summary(ingest(config, beam_options), config.output), file=sys.stderr)
    return 0
