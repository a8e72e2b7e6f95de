"""`dicomflow ingest`: de-identified, normalized TFRecords with tf.Transform, labels and splits.

read → parse → join labels (original identifiers) → de-identify → normalize pixels → split
by patient → TFRecords per split + tf.Transform analysis over train → index, errors,
manifest. One Beam pipeline; the heavy steps fuse, so a dataset travels between them in
memory and nothing collects the corpus on one worker.
"""

import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TestOptions

from models import features as f
from pipelines.deidentify import deid_header, key_source, load_config
from pipelines.failures import yaml_error
from pipelines.limits import add_limit_arguments, limits_from
from pipelines.options import (
    CommandOptions,
    UsageError,
    check_inputs_exist,
    check_output_outside,
    execute,
    new_pipeline,
    parse_options,
    require,
)
from transforms import dicom_io
from transforms.convert import ConvertFn, Instance, ParseFn
from transforms.deadletter import DEAD_LETTER, DeadLetter
from transforms.labels import JoinLabels, ReadLabels, load_labels
from transforms.manifest import (
    WriteManifest,
    error_keys,
)
from transforms.parquet import WriteParquet, delete_stale_shards, table_dir
from transforms.pixels import PixelConfig
from transforms.split import SPLITS, UNLABELED, SplitConfig, assign_split
from transforms.storage import delete_tree
from transforms.tfrecord import GzipTFRecordSink, encode_example

TFRECORDS = "tfrecords"
SCRATCH = "tmp/tft"  # tf.Transform's working files, removed once the graph is published
TRANSFORM = "transform"
INDEX_TABLE = "index"
ERRORS_TABLE = "errors"
ALL_SPLITS = (*SPLITS, UNLABELED)


class IngestOptions(CommandOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument("--input", action="append", help="file, folder, prefix or glob")
        parser.add_argument("--output", help="output root (local path or gs://)")
        parser.add_argument("--labels", help="CSV or Parquet label export (original keys)")
        parser.add_argument("--key-env", help="environment variable holding the secret key")
        parser.add_argument("--key-file", help="file (local or gs://) holding the secret key")
        parser.add_argument("--deid-config", help="YAML with de-identification options")
        parser.add_argument("--pixel-config", help="YAML: size, channels, frame_policy, windows")
        parser.add_argument("--split", help="train,eval,test fractions, e.g. 0.8,0.1,0.1")
        parser.add_argument(
            "--tfrecord-shards", type=int, default=0, help="shards per split (0: the runner's)"
        )
        parser.add_argument(
            "--max-object-bytes", type=int, default=dicom_io.DEFAULT_MAX_OBJECT_BYTES
        )
        add_limit_arguments(parser)


@dataclass(frozen=True)
class Converted:
    """One converted instance: its pseudonymous id, split, and one example per image."""

    source: str
    member: str | None
    sop_instance_uid: str
    split: str
    label: str | None
    examples: tuple[bytes, ...]
    index_rows: tuple[dict, ...]


def to_converted(instance: Instance, split_config: SplitConfig) -> Converted:
    """A converted instance → its split, one example and one index row per image."""
    label = instance.label
    ids = instance.ids
    split = assign_split(ids[f.PATIENT_ID], label is not None, split_config)
    examples, rows = [], []
    for image in instance.images:
        examples.append(encode_example(image.data, image.shape, ids, label or "", image.frame))
        rows.append(
            {
                **ids,
                f.SPLIT: split,
                f.LABEL: label,
                f.FRAME: image.frame,
                f.ROWS: image.rows,
                f.COLUMNS: image.columns,
                f.PHOTOMETRIC_INTERPRETATION: image.photometric,
                f.TRANSFER_SYNTAX_UID: instance.transfer_syntax_uid,
                f.WINDOW_CENTER: image.window_center,
                f.WINDOW_WIDTH: image.window_width,
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
    )


def converted_keys(c: Converted) -> list:
    keys: list = ["seen", "converted", ("by_split", c.split), ("by_label", c.label or "none")]
    keys += ["examples"] * len(c.examples)
    keys += [("examples_by_split", c.split)] * len(c.examples)
    return keys


class WriteTFRecords(beam.PTransform):
    """Examples of one split → ``tfrecords/<split>/part-*.tfrecord.gz`` (gzip), re-run safe."""

    def __init__(self, directory: str, num_shards: int):
        super().__init__()
        self._directory = directory
        self._num_shards = num_shards

    def expand(self, examples):
        written = examples | "Write" >> beam.io.Write(
            GzipTFRecordSink(
                FileSystems.join(self._directory, "part"), ".tfrecord.gz", self._num_shards
            )
        )
        return (
            examples.pipeline
            | "Once" >> beam.Create([None])
            | "DeleteStaleShards"
            >> beam.Map(
                lambda _, d, files: delete_stale_shards(d, files, suffix=".tfrecord.gz"),
                self._directory,
                beam.pvalue.AsList(written),
            )
        )


class AnalyzeTrain(beam.PTransform):
    """tf.Transform over the train examples, through TFXIO record batches → ``transform/``."""

    def __init__(self, directory: str, temp_dir: str, pixels: PixelConfig):
        super().__init__()
        self._directory = directory
        self._temp_dir = temp_dir
        self._pixels = pixels

    def expand(self, examples):
        import tensorflow_transform.beam as tft_beam
        from tensorflow_transform.tf_metadata import schema_utils
        from tfx_bsl.public import tfxio

        from models.preprocessing import make_preprocessing_fn

        schema = schema_utils.schema_from_feature_spec(f.raw_feature_spec())
        source = tfxio.TFExampleBeamRecord(
            physical_format="inmem", telemetry_descriptors=["dicomflow"], schema=schema
        )
        with tft_beam.Context(temp_dir=self._temp_dir):
            batches = examples | "ToRecordBatches" >> source.BeamSource()
            transform_fn = (batches, source.TensorAdapterConfig()) | "Analyze" >> (
                tft_beam.AnalyzeDataset(
                    make_preprocessing_fn(self._pixels.size, self._pixels.channels)
                )
            )
            return transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(self._directory)


def parse_split(text: str | None) -> SplitConfig:
    if not text:
        return SplitConfig()
    try:
        train, eval_, test = (float(x) for x in text.split(","))
        return SplitConfig(train=train, eval=eval_, test=test)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--split must be three fractions summing to 1 ({e})") from None


def load_pixel_config(uri: str | None) -> PixelConfig:
    if uri is None:
        return PixelConfig()
    import yaml

    try:
        with FileSystems.open(dicom_io.normalize_uri(uri)) as fh:
            return PixelConfig.from_mapping(yaml.safe_load(fh.read().decode()))
    except yaml.YAMLError as e:
        raise yaml_error("--pixel-config", uri, e) from None
    except (ValueError, TypeError) as e:
        raise UsageError(f"--pixel-config {uri}: {e}") from None
    except Exception as e:
        raise UsageError(f"--pixel-config {uri} cannot be read ({type(e).__name__})") from None


def build_pipeline(
    opts: IngestOptions, beam_options: PipelineOptions, run_id: str | None = None
) -> beam.Pipeline:
    """Builds (does not run) the ingest pipeline; checks arguments, keys and labels first."""
    inputs = [dicom_io.normalize_uri(u) for u in require(opts.input, "--input")]
    output = dicom_io.normalize_uri(require(opts.output, "--output"))
    check_output_outside(output, inputs)
    if opts.max_object_bytes <= 0 or opts.tfrecord_shards < 0:
        raise UsageError("--max-object-bytes must be positive and --tfrecord-shards >= 0")
    limits = limits_from(opts)
    dataflow = "Dataflow" in str(beam_options.view_as(StandardOptions).runner or "")
    key = key_source(opts.key_env, opts.key_file, "key", dataflow)
    deid_config = load_config(opts.deid_config)
    pixels = load_pixel_config(opts.pixel_config)
    split = parse_split(opts.split)
    labels_uri = dicom_io.normalize_uri(opts.labels) if opts.labels else None
    label_rows = conflicting_rows = None
    if labels_uri:
        try:
            label_table = load_labels(labels_uri)  # refuse a bad file before any work
        except ValueError as e:
            raise UsageError(str(e)) from None
        label_rows, conflicting_rows = label_table.rows, label_table.conflicting_rows
    header = {
        **deid_header("ingest", run_id, inputs, key, deid_config),
        "pixels": pixels.describe(),
        "split": {"train": split.train, "eval": split.eval, "test": split.test},
        "labels": {
            "given": bool(labels_uri),
            "rows": label_rows,
            # Rows whose key carries two different labels: dropped, either could be wrong.
            "conflicting_rows": conflicting_rows,
        },
        "limits": limits.describe(),
    }

    p = new_pipeline(beam_options)
    objects, read_errors = p | "ReadInstances" >> dicom_io.ReadInstances(inputs, limits)
    parsed = objects | "Parse" >> beam.ParDo(ParseFn(limits)).with_outputs(DEAD_LETTER, main="ok")
    sections = {}
    if labels_uri:
        table = p | "ReadLabels" >> ReadLabels(labels_uri)
        joined, unmatched = parsed.ok | "JoinLabels" >> JoinLabels(table)
        sections["labels"] = unmatched | "LabelsSection" >> beam.Map(
            lambda n, given: {**given, "unmatched_rows": n}, header["labels"]
        )
    else:
        joined = parsed.ok | "NoLabels" >> beam.Map(lambda kv: (kv[0], (kv[1], None)))
    prepared = joined | "Prepare" >> beam.ParDo(
        ConvertFn(deid_config, key, pixels, prefix="ingest", limits=limits)
    ).with_outputs(DEAD_LETTER, main="converted")
    instances = prepared.converted | "Split" >> beam.Map(to_converted, split)
    by_split = instances | "BySplit" >> beam.Partition(
        lambda c, n: ALL_SPLITS.index(c.split), len(ALL_SPLITS)
    )
    tables = {}
    train_examples = None
    for name, part in zip(ALL_SPLITS, by_split, strict=True):
        examples = part | f"{name}Examples" >> beam.FlatMap(lambda c: c.examples)
        directory = FileSystems.join(output, TFRECORDS, name)
        tables[f"{TFRECORDS}/{name}"] = examples | f"Write{name.title()}" >> WriteTFRecords(
            directory, opts.tfrecord_shards
        )
        if name == SPLITS[0]:
            train_examples = examples
    scratch = FileSystems.join(output, SCRATCH)
    if beam_options.view_as(TestOptions).dry_run:
        # tf.Transform creates its scratch folder while the graph is built; a dry run
        # builds and never runs, so it must not reach for the bucket.
        scratch = tempfile.mkdtemp(prefix="dicomflow-dry-run-")
    published = train_examples | "TfTransform" >> AnalyzeTrain(
        FileSystems.join(output, TRANSFORM), scratch, pixels
    )
    sections["tf_transform"] = published | "TransformStatistics" >> beam.Map(
        _after_transform, output, scratch
    )
    index_rows = instances | "IndexRows" >> beam.FlatMap(lambda c: c.index_rows)
    tables[INDEX_TABLE] = index_rows | "WriteIndex" >> WriteParquet(
        table_dir(output, INDEX_TABLE), f.INDEX_SCHEMA
    )
    errors = (
        (read_errors, parsed[DEAD_LETTER], prepared[DEAD_LETTER])
        | "AllDeadLetters" >> beam.Flatten()
        | "ErrorRows" >> beam.Map(DeadLetter.to_row)
    )
    tables[ERRORS_TABLE] = errors | "WriteErrors" >> WriteParquet(
        table_dir(output, ERRORS_TABLE), f.ERRORS_SCHEMA
    )
    _ = (
        (
            instances | "ConvertedKeys" >> beam.Map(converted_keys),
            errors | "ErrorKeys" >> beam.Map(error_keys),
        )
        | "AllKeys" >> beam.Flatten()
        | "WriteManifest" >> WriteManifest(output, header, tables, sections=sections)
    )
    return p


def _after_transform(_, output: str, scratch: str) -> dict:
    """Once tf.Transform has published ``transform/``: its statistics for the manifest, and
    its scratch folder removed. In the pipeline, so that every runner, and a flex-template
    launch that never waits for its job, leaves a complete output.

    Only our own scratch folder goes, then ``tmp/`` if that left it empty: a job's
    ``--temp_location`` may lie under ``tmp/`` too, and is in use until the job ends.
    """
    try:
        statistics = transform_statistics(output)
    except Exception as e:  # no train examples: nothing was analyzed
        statistics = {"error": f"no statistics ({type(e).__name__})"}
    delete_tree(scratch)
    parent = FileSystems.split(scratch)[0]
    if not FileSystems.match([f"{parent}/**"])[0].metadata_list:
        delete_tree(parent)
    return statistics


def transform_statistics(output: str) -> dict:
    """What tf.Transform learned over train: pixel mean/std and the label vocabulary.

    Read back from the written graph (the analyzers' results are constants in it): the
    transform of a black and a white image gives mean and standard deviation.
    """
    import numpy as np
    import tensorflow as tf
    import tensorflow_transform as tft

    out = tft.TFTransformOutput(FileSystems.join(output, TRANSFORM))
    spec = out.transformed_feature_spec()[f.IMAGE_NORMALIZED]
    pixels = int(np.prod(spec.shape))
    raw = {
        name: tf.constant([b"\x00" * pixels, b"\xff" * pixels])
        if name == f.IMAGE
        else tf.constant([0, 0], tf.int64)
        if feature.dtype == tf.int64
        else tf.constant([b"", b""])
        for name, feature in f.raw_feature_spec().items()
    }
    z = out.transform_raw_features(raw)[f.IMAGE_NORMALIZED].numpy()[:, 0]
    std = 1.0 / (z[1] - z[0])  # z = (x - mean) / std for x = 0 and x = 1
    vocabulary = [v.decode() for v in out.vocabulary_by_name(f.LABEL_VOCABULARY)]
    return {"pixel_mean": float(-z[0] * std), "pixel_std": float(std), "labels": vocabulary}


def run(argv: Sequence[str]) -> int:
    opts, beam_options = parse_options("dicomflow ingest", argv, IngestOptions)
    # Before the graph is built: tf.Transform imports TensorFlow (seconds, log lines).
    check_inputs_exist([dicom_io.normalize_uri(u) for u in require(opts.input, "--input")])
    pipeline = build_pipeline(opts, beam_options)
    output = dicom_io.normalize_uri(opts.output)
    manifest = execute(pipeline, [dicom_io.normalize_uri(u) for u in opts.input], output)
    counts = manifest["counts"]
    print(
        f"ingest: {counts.get('seen', 0)} objects seen, {counts.get('converted', 0)} converted "
        f"({counts.get('examples', 0)} examples), {counts.get('dead_lettered', 0)} dead-lettered"
        f" → {output}",
        file=sys.stderr,
    )
    return 0
