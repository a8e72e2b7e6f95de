"""`dicomflow score`: an exported model over raw DICOM or ingest TFRecords → Parquet scores.

raw DICOM: read → parse → de-identify → normalize pixels (ingest's own code path, under
the same key, so pseudonyms and pixels match the ingest tables) — or TFRecords: read the
examples ingest wrote. Then RunInference (keyed, batched by images and bytes, the model
loaded once per worker process) → ``scores/model_version=V/run_id=R/part-*.parquet``
written from Arrow tables, ``errors/``, optional Grad-CAM PNGs for the top scores, and
``manifest.json``. The model's task chooses the rows: a classifier's probabilities
(``ScoreRowsFn``), or a segmentation model's figures per class in source pixels
(``SegmentationRowsFn``), with a DICOM SEG per instance under ``seg/`` when asked.
"""

import functools
import posixpath
import sys
import time
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from models import features as f
from models.layout import ERRORS_TABLE, EXPLANATIONS_DIR, SCORES_TABLE, SEG_DIR
from models.tasks import CLASSIFICATION, SEGMENTATION, get_task
from pipelines import source_args
from pipelines.options import execute, new_pipeline, parse_options
from pipelines.score_config import (  # noqa: F401  (ScoreArgs, ScoreOptions, configure: the command's API)
    DICOM,
    RawDicom,
    ScoreArgs,
    ScoreConfig,
    ScoreOptions,
    configure,
)
from transforms.convert import PrepareInstances
from transforms.deadletter import DEAD_LETTER, WriteErrors
from transforms.deid import deid_header
from transforms.dicom_seg import SegWriter, stored_seg
from transforms.manifest import WriteManifest, code_version, utc_now
from transforms.parquet import WriteArrowTables
from transforms.scoring import (
    COUNTS,
    FromInstanceFn,
    ModelInputs,
    ReadExamples,
    ScoreRowsFn,
    candidates,
    inference_dead_letters,
)
from transforms.seg_scoring import SEG_URIS, SegmentationRowsFn
from transforms.sources import registry


def explanations_dir(output: str, version: str, run_id: str) -> str:
    return FileSystems.join(output, EXPLANATIONS_DIR, version, run_id)


def partition_dir(output: str, version: str, run_id: str, table: str = SCORES_TABLE) -> str:
    return FileSystems.join(output, table, f"{f.MODEL_VERSION}={version}", f"{f.RUN_ID}={run_id}")


def seg_dir(output: str, version: str, run_id: str) -> str:
    """Where ``--write-seg`` writes: ``seg/model_version=V/run_id=R/``."""
    return partition_dir(output, version, run_id, SEG_DIR)


def _delete_stale_pngs(_, directory: str, written: list) -> int:
    """``written``: ``((sop_instance_uid, frame), uri)`` of each PNG of the run."""
    return _delete_stale(_, directory, [uri for _, uri in written], "*.png")


def _delete_stale(_, directory: str, written: list[str], pattern: str) -> int:
    """A re-run with the same run id replaces its files (PNGs, SEGs): the others matching
    ``pattern`` in ``directory`` go."""
    keep = {posixpath.basename(uri) for uri in written}
    found = FileSystems.match([FileSystems.join(directory, pattern)])[0].metadata_list
    stale = [m.path for m in found if posixpath.basename(m.path) not in keep]
    if stale:
        FileSystems.delete(stale)
    return len(keep)


def build_pipeline(pipeline: beam.Pipeline, config: ScoreConfig) -> beam.Pipeline:
    """Adds the score graph to ``pipeline`` (not run) and returns it."""
    from models.inference import keyed_handler

    inputs, output, run_id = list(config.inputs), config.output, config.run_id
    info, version_dir, version = config.model_info, config.version_dir, config.version
    shape = info.image_shape
    image_bytes = shape[0] * shape[1] * shape[2]
    labels, positive = list(info.labels), info.positive_label
    dicom = config.dicom

    header: dict = {
        "pipeline": "score",
        "run_id": run_id,
        "code_version": code_version(),
        "started_at": utc_now(),
        "inputs": registry.describe_uris(inputs),
    }
    if dicom is not None:
        described = header["inputs"]
        header = {**deid_header("score", run_id, described, dicom.key, dicom.deid), **header}
        header["pixels"] = dicom.pixels.describe()
        header["limits"] = dicom.limits.describe()
    else:
        header["splits"] = list(config.splits)
    header.update(
        {
            "input_format": config.input_format,
            "model": {
                "uri": config.model_uri,
                "version_dir": version_dir,
                "version": version,
                "labels": labels,
                "positive_label": positive,
                "threshold": info.threshold,
                "image_shape": list(shape),
                "network": info.network,
            },
            "batching": {
                "batch_size": config.batch_size,
                "max_batch_bytes": config.max_batch_bytes,
                "share_model_across_processes": config.share_model_across_processes,
            },
            "explain_top": config.explain_top,
            "partition": partition_dir(output, version, run_id),
            "task": info.task,
        }
    )
    if config.seg_type is not None:
        header["seg"] = {"type": config.seg_type, "folder": seg_dir(output, version, run_id)}
        if config.output_store:
            header["seg"]["output_store"] = config.output_store.describe()

    p = pipeline
    if dicom is not None:
        sources = registry.configure_inputs(inputs, dicom.sources)
        read = p | "ReadInstances" >> registry.ReadInstances(sources, dicom.limits)
        prepared = read.objects | "PrepareInstances" >> PrepareInstances(
            dicom.deid,
            dicom.key,
            dicom.pixels,
            prefix="score",
            limits=dicom.limits,
            keep_header=config.seg_type is not None,
        )
        made = prepared.instances | "ModelInputs" >> beam.ParDo(FromInstanceFn(shape)).with_outputs(
            DEAD_LETTER, main="inputs"
        )
        model_inputs = ModelInputs(made.inputs, made[DEAD_LETTER])
        dead_letters = [read.dead_letters, prepared.dead_letters]
    else:
        model_inputs = p | "ReadExamples" >> ReadExamples(list(config.patterns), shape)
        dead_letters = []
    dead_letters.append(model_inputs.dead_letters)

    handler = keyed_handler(
        version_dir,
        image_bytes,
        batch_size=config.batch_size,
        max_batch_bytes=config.max_batch_bytes,
        share_across_processes=config.share_model_across_processes,
    )
    results, failed = (
        model_inputs.inputs | "RunInference" >> RunInference(handler).with_exception_handling()
    )
    dead_letters.append(
        failed.failed_inferences | "InferenceDeadLetters" >> beam.FlatMap(inference_dead_letters)
    )

    tables: dict = {}
    rows, letters, more_keys = ROWS[info.task](p, config, results, tables)
    dead_letters += letters
    tables[SCORES_TABLE] = rows.tables | "WriteScores" >> WriteArrowTables(
        partition_dir(output, version, run_id), get_task(info.task).score_schema
    )
    letters = dead_letters | "AllDeadLetters" >> beam.Flatten()
    errors = letters | "WriteErrors" >> WriteErrors(output)
    tables[ERRORS_TABLE] = errors.files
    _ = (
        (rows[COUNTS], errors.keys, *more_keys)
        | "AllKeys" >> beam.Flatten()
        | "WriteManifest"
        >> WriteManifest(
            output, header, tables, complete=functools.partial(add_timings, started=time.time())
        )
    )
    return p


def classification_rows(p, config: ScoreConfig, results, tables: dict):
    """A classifier's rows (``ScoreRowsFn``), after Grad-CAM PNGs for the top scores when
    ``--explain-top`` asks; returns (rows with their ``counts``, dead letters, more count
    keys)."""
    from models.inference import ExplainFn

    info, version, run_id = config.model_info, config.version, config.run_id
    labels, positive = list(info.labels), info.positive_label
    positive_index = None if positive is None else labels.index(positive)
    shape = info.image_shape
    image_bytes = shape[0] * shape[1] * shape[2]
    rows_fn = ScoreRowsFn(labels, positive, version, run_id, threshold=info.threshold)
    if not config.explain_top:
        rows = results | "ScoreRows" >> beam.ParDo(rows_fn).with_outputs(COUNTS, main="tables")
        return rows, [], []
    directory = explanations_dir(config.output, version, run_id)
    explained = (
        results
        | "Candidates" >> beam.FlatMap(candidates, positive_index, image_bytes)
        | "TopScores" >> beam.combiners.Top.Of(config.explain_top, key=lambda c: c.rank())
        | "GradCam" >> beam.ParDo(ExplainFn(config.version_dir, directory))
    )
    tables[EXPLANATIONS_DIR] = (
        p
        | "OnceExplained" >> beam.Create([None])
        | "DeleteStalePngs"
        >> beam.Map(_delete_stale_pngs, directory, beam.pvalue.AsList(explained))
    )
    # The rows wait for the explanations (a global top): keep only what rows need.
    compact = results | "DropImages" >> beam.Map(lambda kv: (kv[0], _Scores(kv[1])))
    rows = compact | "ScoreRows" >> beam.ParDo(rows_fn, beam.pvalue.AsDict(explained)).with_outputs(
        COUNTS, main="tables"
    )
    return rows, [], []


def segmentation_rows(p, config: ScoreConfig, results, tables: dict):
    """A segmentation model's rows (``SegmentationRowsFn``), writing a DICOM SEG per
    instance when ``--write-seg`` asks, and storing them when ``--output-store`` does;
    returns (rows with their ``counts``, dead letters, more count keys)."""
    info, version = config.model_info, config.version
    writer = None
    if config.seg_type is not None:
        directory = seg_dir(config.output, version, config.run_id)
        writer = SegWriter(
            directory,
            info.labels,
            version,
            config.seg_type,
            code_version(),
            class_names=info.class_names,
        )
    rows_fn = SegmentationRowsFn(info.labels, version, config.run_id, writer)
    rows = results | "ScoreRows" >> beam.ParDo(rows_fn).with_outputs(
        COUNTS, DEAD_LETTER, SEG_URIS, main="tables"
    )
    letters, keys = [rows[DEAD_LETTER]], []
    if writer is not None:
        tables[SEG_DIR] = (
            p
            | "OnceSegs" >> beam.Create([None])
            | "DeleteStaleSegs"
            >> beam.Map(_delete_stale, directory, beam.pvalue.AsList(rows[SEG_URIS]), "*.dcm")
        )
    if config.output_store:
        stored, failed = (
            rows[SEG_URIS]
            | "ReadSegs" >> beam.Map(stored_seg)
            | "StoreSegs" >> config.output_store.write()
        )
        keys.append(stored | "StoredKeys" >> beam.Map(lambda _: ["seg_stored"]))
        letters.append(failed)
    return rows, letters, keys


# The rows each task's scores are made of: task name → its step (an extension point).
ROWS = {CLASSIFICATION: classification_rows, SEGMENTATION: segmentation_rows}


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


def score(config: ScoreConfig, beam_options: PipelineOptions) -> dict:
    """Runs a score job to the end (inputs checked first, in ``configure``); returns its
    manifest."""
    pipeline = build_pipeline(new_pipeline(beam_options), config)
    sources = config.dicom.sources if config.dicom is not None else None
    if config.output_store:
        source_args.check_sink(config.output_store)
    return execute(pipeline, config.inputs, config.output, sources, checked=True)


def summary(manifest: dict) -> str:
    """The one line a finished score run prints."""
    counts = manifest["counts"]
    images = counts.get("images", 0)
    unit = "objects" if manifest["input_format"] == DICOM else "examples"
    return (
        f"score: {counts.get('seen', 0)} {unit} seen, {counts.get('scored', 0)} scored "
        f"({images} images), "
        f"{counts.get('dead_lettered', 0)} dead-lettered; model version "
        f"{manifest['model']['version']}, run {manifest['run_id']} → {manifest['partition']}"
    )


def run(argv: Sequence[str]) -> int:
    opts, beam_options = parse_options("dicomflow score", argv, ScoreOptions)
    print(summary(score(configure(opts, beam_options), beam_options)), file=sys.stderr)
    return 0
