"""`dicomflow score`: an exported model over raw DICOM or ingest TFRecords → Parquet scores.

raw DICOM: read → parse → de-identify → normalize pixels (ingest's own code path, under
the same key, so pseudonyms and pixels match the ingest tables) — or TFRecords: read the
examples ingest wrote. Then RunInference (keyed, batched by images and bytes, the model
loaded once per worker process) → ``scores/model_version=V/run_id=R/part-*.parquet``
written from Arrow tables, ``errors/``, optional Grad-CAM PNGs for the top scores, and
``manifest.json``.
"""

import functools
import posixpath
import re
import sys
import time
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from models import features as f
from pipelines.deidentify import deid_header, key_source, load_config
from pipelines.ingest import ALL_SPLITS, ERRORS_TABLE, TFRECORDS, load_pixel_config
from pipelines.limits import add_limit_arguments, limits_from
from pipelines.options import (
    CommandOptions,
    UsageError,
    check_inputs_exist,
    check_output_outside,
    execute,
    new_pipeline,
    new_run_id,
    parse_options,
    require,
)
from transforms import dicom_io
from transforms.convert import ConvertFn, ParseFn
from transforms.deadletter import DEAD_LETTER, DeadLetter
from transforms.manifest import WriteManifest, code_version, error_keys, utc_now
from transforms.parquet import WriteArrowTables, WriteParquet, table_dir
from transforms.pixels import PixelConfig
from transforms.scoring import (
    COUNTS,
    FromInstanceFn,
    ReadExamples,
    ScoreRowsFn,
    candidates,
    inference_dead_letters,
)

SCORES_TABLE = "scores"
EXPLANATIONS_DIR = "explanations"
DICOM, TFRECORD_FORMAT, AUTO = "dicom", "tfrecords", "auto"
INPUT_FORMATS = (AUTO, DICOM, TFRECORD_FORMAT)
TFRECORD_SUFFIXES = (".tfrecord.gz", ".tfrecord")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ScoreOptions(CommandOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        from models.inference import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_BYTES

        parser.add_argument(
            "--input", action="append", help="DICOM (files, folders, archives, globs), an "
            "ingest output root, or TFRecord files; may be repeated"
        )  # fmt: skip
        parser.add_argument(
            "--input-format", default=AUTO, choices=INPUT_FORMATS,
            help="auto: TFRecords for an ingest root or *.tfrecord.gz, else DICOM",
        )  # fmt: skip
        parser.add_argument(
            "--splits", help=f"splits of an ingest root, comma-separated (default all: "
            f"{','.join(ALL_SPLITS)})"
        )  # fmt: skip
        parser.add_argument("--model", help="model dir, its latest pointer, or a version")
        parser.add_argument("--output", help="output root (local path or gs://)")
        parser.add_argument("--run-id", help="names the scores partition (default: new)")
        parser.add_argument("--key-env", help="environment variable holding the secret key")
        parser.add_argument("--key-file", help="file (local or gs://) holding the secret key")
        parser.add_argument("--deid-config", help="YAML with de-identification options")
        parser.add_argument(
            "--pixel-config", help="YAML pixel settings (default: the model's, from model.json)"
        )
        parser.add_argument(
            "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per batch"
        )
        parser.add_argument(
            "--max-batch-bytes", type=int, default=DEFAULT_MAX_BATCH_BYTES,
            help="input bytes per batch (bounds accelerator memory)",
        )  # fmt: skip
        parser.add_argument(
            "--share-model-across-processes", action="store_true",
            help="one model per machine instead of one per worker process",
        )  # fmt: skip
        parser.add_argument(
            "--explain-top", type=int, default=0, help="Grad-CAM PNGs for the K top scores"
        )
        parser.add_argument(
            "--max-object-bytes", type=int, default=dicom_io.DEFAULT_MAX_OBJECT_BYTES
        )
        add_limit_arguments(parser)


def is_ingest_root(uri: str) -> bool:
    """Whether ``uri`` is an ingest output: ``tfrecords/<split>/part-*.tfrecord.gz`` below."""
    if dicom_io.has_glob(uri):
        return False
    pattern = FileSystems.join(uri.rstrip("/"), TFRECORDS, "*", "part-*.tfrecord.gz")
    try:
        return bool(FileSystems.match([pattern], limits=[1])[0].metadata_list)
    except Exception as e:
        raise UsageError(f"--input {uri} cannot be listed ({type(e).__name__})") from None


def is_tfrecord_uri(uri: str) -> bool:
    return uri.rstrip("/").endswith(TFRECORD_SUFFIXES)


def resolve_format(inputs: list[str], given: str) -> str:
    """The input format: as given, or (auto) from what the inputs are; never mixed."""
    if given != AUTO:
        return given
    kinds = {TFRECORD_FORMAT if is_tfrecord_uri(u) or is_ingest_root(u) else DICOM for u in inputs}
    if len(kinds) > 1:
        raise UsageError(
            "--input mixes TFRecords and DICOM; score them in separate runs (or set --input-format)"
        )
    return kinds.pop()


def tfrecord_patterns(inputs: list[str], splits: list[str]) -> list[str]:
    """Shard patterns: the chosen splits of each ingest root, other inputs as given."""
    patterns = []
    for uri in inputs:
        if is_ingest_root(uri):
            root = uri.rstrip("/")
            patterns += [FileSystems.join(root, TFRECORDS, s, "part-*.tfrecord.gz") for s in splits]
        else:
            patterns.append(uri)
    return patterns


def parse_splits(text: str | None) -> list[str]:
    if not text:
        return list(ALL_SPLITS)
    splits = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(splits) - set(ALL_SPLITS))
    if unknown or not splits:
        raise UsageError(f"--splits takes {', '.join(ALL_SPLITS)}; got {text!r}")
    return splits


def resolve_model_info(uri: str) -> tuple[str, dict]:
    """``--model`` → (the version folder, its ``model.json``), pinned for the whole run."""
    from models import export

    try:
        version_dir = export.resolve_model(uri)
        return version_dir, export.read_json(FileSystems.join(version_dir, export.MODEL_JSON))
    except ValueError as e:
        raise UsageError(f"--model: {e}") from None
    except Exception as e:
        raise UsageError(f"--model {uri} cannot be read ({type(e).__name__})") from None


def model_shape(info: dict) -> tuple[int, int, int]:
    return info["image_height"], info["image_width"], info["image_channels"]


def pixel_config(uri: str | None, info: dict) -> PixelConfig:
    """The pixel settings for raw DICOM: ``--pixel-config``, else the model's own (ingest's
    settings recorded in ``model.json``), else the defaults; checked against the model."""
    if uri is not None:
        pixels, origin = load_pixel_config(uri), f"from --pixel-config {uri}"
    elif info.get("pixels"):
        pixels, origin = PixelConfig.from_mapping(info["pixels"]), "from model.json"
    else:
        pixels, origin = PixelConfig(), "the defaults: model.json records none"
    height, width, channels = model_shape(info)
    if (pixels.size, pixels.size, pixels.channels) != (height, width, channels):
        raise UsageError(
            f"the pixel settings ({origin}) make {pixels.size}x{pixels.size}x{pixels.channels}"
            f" images but the model takes {height}x{width}x{channels}; give --pixel-config"
        )
    return pixels


def explanations_dir(output: str, version: str, run_id: str) -> str:
    return FileSystems.join(output, EXPLANATIONS_DIR, version, run_id)


def partition_dir(output: str, version: str, run_id: str) -> str:
    return FileSystems.join(
        output, SCORES_TABLE, f"{f.MODEL_VERSION}={version}", f"{f.RUN_ID}={run_id}"
    )


def _delete_stale_pngs(_, directory: str, written: list) -> int:
    """A re-run with the same run id replaces its explanations: other PNGs there go."""
    keep = {posixpath.basename(uri) for _, uri in written}
    found = FileSystems.match([FileSystems.join(directory, "*.png")])[0].metadata_list
    stale = [m.path for m in found if posixpath.basename(m.path) not in keep]
    if stale:
        FileSystems.delete(stale)
    return len(keep)


def build_pipeline(
    opts: ScoreOptions, beam_options: PipelineOptions, run_id: str | None = None
) -> beam.Pipeline:
    """Builds (does not run) the score pipeline; checks arguments, model and key first."""
    from models.inference import ExplainFn, keyed_handler

    inputs = [dicom_io.normalize_uri(u) for u in require(opts.input, "--input")]
    output = dicom_io.normalize_uri(require(opts.output, "--output"))
    model_uri = dicom_io.normalize_uri(require(opts.model, "--model"))
    check_output_outside(output, inputs)
    run_id = run_id or opts.run_id or new_run_id()
    if not _RUN_ID.match(run_id):
        raise UsageError("--run-id takes letters, digits, '.', '_' and '-' (128 at most)")
    if opts.batch_size < 1 or opts.explain_top < 0 or opts.max_object_bytes <= 0:
        raise UsageError(
            "--batch-size must be >= 1, --explain-top >= 0, --max-object-bytes positive"
        )
    limits = limits_from(opts)
    dataflow = "Dataflow" in str(beam_options.view_as(StandardOptions).runner or "")
    if dataflow and not model_uri.startswith("gs://"):
        raise UsageError("Dataflow workers read the model from --model gs://... only")
    fmt = resolve_format(inputs, opts.input_format)
    if fmt == TFRECORD_FORMAT:
        given = [name for name in ("key_env", "key_file", "deid_config", "pixel_config")
                 if getattr(opts, name)]  # fmt: skip
        if given:
            flags = ", ".join("--" + g.replace("_", "-") for g in given)
            raise UsageError(f"{flags}: for raw DICOM input only (these inputs are TFRecords)")
    elif opts.splits:
        raise UsageError("--splits selects splits of an ingest output; these inputs are DICOM")
    version_dir, info = resolve_model_info(model_uri)
    version = posixpath.basename(version_dir.rstrip("/"))
    shape = model_shape(info)
    image_bytes = shape[0] * shape[1] * shape[2]
    if opts.max_batch_bytes < image_bytes:
        raise UsageError(f"--max-batch-bytes must hold one image ({image_bytes} bytes)")
    labels, positive = list(info["labels"]), info.get("positive_label")
    positive_index = None if positive is None else labels.index(positive)

    header = {
        "pipeline": "score",
        "run_id": run_id,
        "code_version": code_version(),
        "started_at": utc_now(),
        "inputs": inputs,
    }
    if fmt == DICOM:
        key = key_source(opts.key_env, opts.key_file, "key", dataflow)
        deid_config = load_config(opts.deid_config)
        pixels = pixel_config(opts.pixel_config, info)
        header = {**deid_header("score", run_id, inputs, key, deid_config), **header}
        header["pixels"] = pixels.describe()
        header["limits"] = limits.describe()
    else:
        splits = parse_splits(opts.splits)
        patterns = tfrecord_patterns(inputs, splits)
        header["splits"] = splits
    header.update(
        {
            "input_format": fmt,
            "model": {
                "uri": model_uri,
                "version_dir": version_dir,
                "version": version,
                "labels": labels,
                "positive_label": positive,
                "image_shape": list(shape),
                "network": info.get("network"),
            },
            "batching": {
                "batch_size": opts.batch_size,
                "max_batch_bytes": opts.max_batch_bytes,
                "share_model_across_processes": opts.share_model_across_processes,
            },
            "explain_top": opts.explain_top,
            "partition": partition_dir(output, version, run_id),
        }
    )

    p = new_pipeline(beam_options)
    if fmt == DICOM:
        objects, read_errors = p | "ReadInstances" >> dicom_io.ReadInstances(inputs, limits)
        parsed = objects | "Parse" >> beam.ParDo(ParseFn(limits)).with_outputs(
            DEAD_LETTER, main="ok"
        )
        converted = (
            parsed.ok
            | "NoLabels" >> beam.Map(lambda kv: (kv[0], (kv[1], None)))
            | "Convert"
            >> beam.ParDo(
                ConvertFn(deid_config, key, pixels, prefix="score", limits=limits)
            ).with_outputs(DEAD_LETTER, main="instances")
        )
        model_inputs = converted.instances | "ModelInputs" >> beam.ParDo(
            FromInstanceFn(shape)
        ).with_outputs(DEAD_LETTER, main="inputs")
        dead_letters = [
            read_errors,
            parsed[DEAD_LETTER],
            converted[DEAD_LETTER],
            model_inputs[DEAD_LETTER],
        ]
    else:
        model_inputs = p | "ReadExamples" >> ReadExamples(patterns, shape)
        dead_letters = [model_inputs[DEAD_LETTER]]

    handler = keyed_handler(
        version_dir,
        image_bytes,
        batch_size=opts.batch_size,
        max_batch_bytes=opts.max_batch_bytes,
        share_across_processes=opts.share_model_across_processes,
    )
    results, failed = (
        model_inputs.inputs | "RunInference" >> RunInference(handler).with_exception_handling()
    )
    dead_letters.append(
        failed.failed_inferences | "InferenceDeadLetters" >> beam.FlatMap(inference_dead_letters)
    )

    tables = {}
    rows_fn = ScoreRowsFn(labels, positive, version, run_id)
    if opts.explain_top:
        directory = explanations_dir(output, version, run_id)
        explained = (
            results
            | "Candidates" >> beam.FlatMap(candidates, positive_index, image_bytes)
            | "TopScores" >> beam.combiners.Top.Of(opts.explain_top, key=lambda c: c.rank())
            | "GradCam" >> beam.ParDo(ExplainFn(version_dir, directory))
        )
        tables[EXPLANATIONS_DIR] = (
            p
            | "OnceExplained" >> beam.Create([None])
            | "DeleteStalePngs"
            >> beam.Map(_delete_stale_pngs, directory, beam.pvalue.AsList(explained))
        )
        # The rows wait for the explanations (a global top): keep only what rows need.
        compact = results | "DropImages" >> beam.Map(lambda kv: (kv[0], _Scores(kv[1])))
        rows = compact | "ScoreRows" >> beam.ParDo(
            rows_fn, beam.pvalue.AsDict(explained)
        ).with_outputs(COUNTS, main="tables")
    else:
        rows = results | "ScoreRows" >> beam.ParDo(rows_fn).with_outputs(COUNTS, main="tables")
    tables[SCORES_TABLE] = rows.tables | "WriteScores" >> WriteArrowTables(
        partition_dir(output, version, run_id), f.SCORES_SCHEMA
    )
    errors = (
        dead_letters
        | "AllDeadLetters" >> beam.Flatten()
        | "ErrorRows" >> beam.Map(DeadLetter.to_row)
    )
    tables[ERRORS_TABLE] = errors | "WriteErrors" >> WriteParquet(
        table_dir(output, ERRORS_TABLE), f.ERRORS_SCHEMA
    )
    _ = (
        (rows[COUNTS], errors | "ErrorKeys" >> beam.Map(error_keys))
        | "AllKeys" >> beam.Flatten()
        | "WriteManifest"
        >> WriteManifest(
            output, header, tables, complete=functools.partial(add_timings, started=time.time())
        )
    )
    return p


def add_timings(manifest: dict, started: float) -> dict:
    """The run's wall time, from building its graph to writing its manifest, and throughput.

    Measured where the manifest is written (a worker, on Dataflow; clocks are NTP-synced),
    so every launch has it, a flex-template one that never waits for its job included.
    """
    seconds = max(time.time() - started, 1e-3)
    counts = manifest["counts"]
    manifest["timings"] = {
        "seconds": round(seconds, 3),
        "images_per_second": round(counts.get("images", 0) / seconds, 2),
        "instances_per_second": round(counts.get("scored", 0) / seconds, 2),
    }
    return manifest


class _Scores:
    """A prediction without its input images (what a score row needs)."""

    __slots__ = ("inference",)

    def __init__(self, result):
        self.inference = result.inference


def run(argv: Sequence[str]) -> int:
    opts, beam_options = parse_options("dicomflow score", argv, ScoreOptions)
    check_inputs_exist([dicom_io.normalize_uri(u) for u in require(opts.input, "--input")])
    pipeline = build_pipeline(opts, beam_options)
    output = dicom_io.normalize_uri(opts.output)
    manifest = execute(pipeline, [dicom_io.normalize_uri(u) for u in opts.input], output)
    counts = manifest["counts"]
    images = counts.get("images", 0)
    unit = "objects" if manifest["input_format"] == DICOM else "examples"
    print(
        f"score: {counts.get('seen', 0)} {unit} seen, {counts.get('scored', 0)} scored "
        f"({images} images), "
        f"{counts.get('dead_lettered', 0)} dead-lettered; model version "
        f"{manifest['model']['version']}, run {manifest['run_id']} → {manifest['partition']}",
        file=sys.stderr,
    )
    return 0
