"""Scoring's building blocks: model inputs with their keys, and score rows as Arrow tables.

An input is ``(ScoreKey, images)``: one instance's images as raw uint8 bytes (H x W x C
each, concatenated) and what its score rows need. It comes from a converted DICOM
instance (``from_instance``) or from an ingest TFRecord example (``ReadExamples``), and
either way has the model's geometry or becomes a dead letter. After RunInference,
``ScoreRowsFn`` turns the keyed predictions into ``SCORES_SCHEMA`` Arrow tables, column by
column (never a dict per row), on ``BundleRowsFn``: the bundle buffering it shares with
segmentation's rows.
"""

import abc
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from models import features as f
from transforms import dicom_io
from transforms.composite import NamedOutputs
from transforms.convert import Instance
from transforms.deadletter import (
    DEAD_LETTER,
    STAGE_PARSE,
    STAGE_READ,
    STAGE_SCORE,
    DeadLetter,
    DeadLetterFn,
    StageError,
)
from transforms.tfrecord import ExampleError, iter_records, open_stream, parse_example

ROW_GROUP_ROWS = 65_536  # rows per Arrow table, hence per Parquet row group (at most)
COUNTS = "counts"  # BundleRowsFn's tagged output: manifest count keys per instance
_SCORED_AT_TYPE = f.SCORES_SCHEMA.field(f.SCORED_AT).type
ID_COLUMNS = (
    f.SOP_INSTANCE_UID,
    f.SERIES_INSTANCE_UID,
    f.STUDY_INSTANCE_UID,
    f.PATIENT_ID,
    f.MODALITY,
)


@dataclass(frozen=True)
class ScoreKey:
    """What travels with an instance's images through RunInference.

    ``source``/``member`` name where it came from, for a dead letter only; they never
    reach a score row (raw object names may carry patient names).
    """

    source: str
    member: str | None
    ids: tuple[str, ...]  # the five ID_COLUMNS in order, all pseudonyms
    frames: tuple[int, ...]  # the source frame of each image, in order
    # Each image's source rows and columns (raw DICOM; empty for a TFRecord example, which
    # has no source geometry), and the de-identified header without its pixels (Part 10
    # bytes), carried only when a DICOM SEG is to be written.
    grids: tuple[tuple[int, int], ...] = ()
    header: bytes | None = None

    @property
    def sop_instance_uid(self) -> str:
        return self.ids[0]

    @property
    def modality(self) -> str:
        return self.ids[4]


class GeometryError(ValueError):
    """An image whose height, width or channels are not the model's."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__(f"image of shape {shape}")
        self.shape = shape


def _geometry_mismatch(shape, expected) -> StageError:
    message = (
        f"the image is {'x'.join(map(str, shape))} but the model takes "
        f"{'x'.join(map(str, expected))} (pixel settings differ from the model's ingest)"
    )
    return StageError("geometry_mismatch", message, STAGE_SCORE)


def _geometry_error(source: str, member: str | None, shape, expected) -> DeadLetter:
    error = _geometry_mismatch(shape, expected)
    return DeadLetter(source, member, STAGE_SCORE, error.error_type, error.message)


class FromInstanceFn(DeadLetterFn):
    """A converted DICOM instance → ``(ScoreKey, images)``, or a geometry dead letter."""

    stage = STAGE_SCORE

    def __init__(self, shape: tuple[int, int, int]):
        self._shape = tuple(shape)

    def work(self, instance: Instance):
        for image in instance.images:
            if tuple(image.shape) != self._shape:
                raise _geometry_mismatch(image.shape, self._shape)
        key = ScoreKey(
            instance.source,
            instance.member,
            tuple(instance.ids.get(name, "") for name in ID_COLUMNS),
            tuple(image.frame for image in instance.images),
            tuple((image.rows, image.columns) for image in instance.images),
            instance.deid_header,
        )
        yield key, b"".join(image.data for image in instance.images)


def example_input(
    source: str, member: str, record: bytes, shape: tuple[int, int, int]
) -> tuple[ScoreKey, bytes]:
    """An ingest TFRecord example → ``(ScoreKey, image)``.

    Raises:
        ExampleError: not an Example, or one without the features ingest writes.
        GeometryError: the image does not have the model's geometry.
    """
    features = parse_example(record)
    try:
        image = features[f.IMAGE][0]
        found = tuple(
            int(features[k][0]) for k in (f.IMAGE_HEIGHT, f.IMAGE_WIDTH, f.IMAGE_CHANNELS)
        )
        ids = tuple(features[name][0].decode() for name in ID_COLUMNS)
        frame = int(features[f.FRAME][0])
    except (KeyError, IndexError, AttributeError, TypeError, ValueError):
        raise ExampleError("the example lacks a feature ingest writes, or mistypes one") from None
    if found != tuple(shape) or len(image) != int(np.prod(shape)):
        raise GeometryError(found)
    return ScoreKey(source, member, ids, (frame,)), image


class ReadExamplesFn(beam.DoFn):
    """One TFRecord shard (gzip or not, by its name) → ``(ScoreKey, image)`` per example.

    A record that is not a usable example is a ``parse`` dead letter; an image of another
    geometry a ``score`` one; a shard that breaks (truncated, bad checksum) one ``read``
    dead letter standing for the rest of the shard, since nothing after it can be found.
    ``member`` is ``record N`` (0-based) within the shard.
    """

    def __init__(self, shape: tuple[int, int, int]):
        height, width, channels = shape  # a list from JSON is welcome too
        self._shape = (height, width, channels)

    def setup(self):
        self._read = Metrics.counter(dicom_io.METRICS_NAMESPACE, "score_examples_read")

    def process(self, path_size: tuple[str, int]):
        path, _ = path_size
        count = 0
        try:
            with open_stream(path) as stream:
                for record in iter_records(stream):
                    member = f"record {count}"
                    count += 1
                    self._read.inc()
                    yield from self._example(path, member, record)
            return
        except Exception as e:  # truncated gzip, bad checksum, unreadable object
            message = (
                f"the shard cannot be read from this record on ({type(e).__name__}); "
                "this row stands for it and any later records"
            )
            member = f"record {count}"
            letter = DeadLetter(path, member, STAGE_READ, "corrupt_tfrecord", message)
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)

    def _example(self, path: str, member: str, record: bytes):
        try:
            yield example_input(path, member, record, self._shape)
        except ExampleError as e:
            letter = DeadLetter(path, member, STAGE_PARSE, "invalid_example", str(e))
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
        except GeometryError as e:
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER, _geometry_error(path, member, e.shape, self._shape)
            )


class ModelInputs(NamedTuple):
    """Model inputs, ``(ScoreKey, images)``, and the dead letters of making them."""

    inputs: beam.PCollection[tuple[ScoreKey, bytes]]
    dead_letters: beam.PCollection[DeadLetter]


class ReadExamples(NamedOutputs):
    """TFRecord file patterns → ``(ScoreKey, image)`` and dead letters.

    Shards are matched inside the pipeline (on a Dataflow worker), each once however many
    patterns name it, and spread over workers; a gzip shard cannot be split, so it is read
    whole by one worker.
    """

    def __init__(self, patterns: Sequence[str], shape: tuple[int, int, int]):
        super().__init__()
        self._patterns = list(patterns)
        self._shape = shape

    def expand(self, pbegin: beam.pvalue.PBegin) -> ModelInputs:
        outputs = (
            pbegin
            | "MatchShards" >> dicom_io.MatchInputs(self._patterns)
            | "Distribute" >> beam.Reshuffle()
            | "ReadRecords"
            >> beam.ParDo(ReadExamplesFn(self._shape)).with_outputs(DEAD_LETTER, main="inputs")
        )
        return ModelInputs(outputs.inputs, outputs[DEAD_LETTER])


def score_columns(
    probabilities: np.ndarray, positive_index: int | None, threshold: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(score, predicted label index) per row of probabilities [N, classes].

    The score is the positive label's probability for a binary model, else the predicted
    label's. A binary model with a ``threshold`` (its operating point, ``model.json``)
    predicts the positive label at a score at or above it; otherwise the most probable
    label is predicted.
    """
    predicted = np.argmax(probabilities, axis=1)
    if positive_index is not None and threshold is not None and probabilities.shape[1] == 2:
        above = probabilities[:, positive_index] >= threshold
        predicted = np.where(above, positive_index, 1 - positive_index)
    column = predicted if positive_index is None else np.full(len(predicted), positive_index)
    return probabilities[np.arange(len(predicted)), column], predicted


class BundleRowsFn(beam.DoFn, metaclass=abc.ABCMeta):
    """The bundle buffering that both kinds of score rows share.

    A subclass's ``process`` hands each instance's rows to ``_add``: the ID columns, frame
    and scored-at time are gathered here, its own columns (named in ``columns``) beside
    them. Every ``rows_per_table`` rows, and at the end of the bundle, ``_table`` turns what
    was gathered into one Arrow table (one Parquet row group). Each instance's manifest
    count keys go to the tagged output ``counts``, and the ``score_rows`` counter counts
    its rows.

    Args:
        model_version, run_id: the partition, also written in every row.
        rows_per_table: rows per table.
    """

    columns: tuple[str, ...] = ()  # the subclass's own buffers, one list each

    def __init__(self, model_version: str, run_id: str, rows_per_table: int):
        self._version = model_version
        self._run_id = run_id
        self._rows_per_table = rows_per_table

    def setup(self):
        self._scored = Metrics.counter(dicom_io.METRICS_NAMESPACE, "score_rows")

    def start_bundle(self):
        self._reset()

    def _reset(self):
        self._ids: list[list[str]] = [[] for _ in ID_COLUMNS]
        self._frames: list[int] = []
        self._times: list[int] = []
        self._columns: dict[str, list] = {name: [] for name in self.columns}

    def _add(self, key: ScoreKey, counts: list, **values: list):
        """Buffers one instance's rows; yields its count keys and, once full, a table.

        Args:
            key: the instance; one row per frame.
            counts: the task's own count keys, after the ones every instance has.
            values: what to add to each of ``columns`` (per row, or per instance where
                the subclass's ``_table`` joins chunks).
        """
        now = time.time_ns() // 1000
        for column, value in zip(self._ids, key.ids, strict=True):
            column.extend([value] * len(key.frames))
        self._frames.extend(key.frames)
        self._times.extend([now] * len(key.frames))
        for name, added in values.items():
            self._columns[name].extend(added)
        keys = ["seen", "scored", ("by_modality", key.modality or "none")]
        keys += ["images"] * len(key.frames)
        yield beam.pvalue.TaggedOutput(COUNTS, keys + counts)
        self._scored.inc(len(key.frames))
        if len(self._frames) >= self._rows_per_table:
            yield self._flush()

    def finish_bundle(self):
        if self._frames:
            yield GlobalWindows.windowed_value(self._flush())

    def _flush(self) -> pa.Table:
        table = self._table(self._columns)
        self._reset()
        return table

    @abc.abstractmethod
    def _table(self, columns: dict[str, list]) -> pa.Table:
        """The gathered rows (``_ids``, ``_frames``, ``_times`` and ``columns``) as a table."""


class ScoreRowsFn(BundleRowsFn):
    """``(ScoreKey, PredictionResult)`` → Arrow tables of ``SCORES_SCHEMA``, and count keys.

    Columns are gathered per bundle and emitted as one table every ``ROW_GROUP_ROWS``
    rows and at the end of the bundle, so each table is one Parquet row group. The tagged
    output ``counts`` gives each instance's manifest count keys.

    Args:
        labels: the probability columns' labels (``model.json`` ``labels``).
        positive_label: the binary score's label, or None for a multi-class model.
        threshold: the binary model's operating point (``model.json``), or None (argmax).
        model_version, run_id: the partition, also written in every row.
        rows_per_table: rows per table.
    """

    columns = ("probabilities", "explanations")  # an array per instance; a name per row

    def __init__(
        self,
        labels: Sequence[str],
        positive_label: str | None,
        model_version: str,
        run_id: str,
        rows_per_table: int = ROW_GROUP_ROWS,
        threshold: float | None = None,
    ):
        super().__init__(model_version, run_id, rows_per_table)
        self._threshold = threshold
        self._labels = list(labels)
        self._positive = None if positive_label is None else self._labels.index(positive_label)

    def process(self, element, explanations: dict | None = None):
        key, result = element
        probabilities = np.asarray(result.inference, dtype=np.float32)
        _, predicted = score_columns(probabilities, self._positive, self._threshold)
        yield from self._add(
            key,
            [("by_predicted_label", self._labels[i]) for i in predicted],
            probabilities=[probabilities],
            explanations=[
                (explanations or {}).get((key.sop_instance_uid, frame)) for frame in key.frames
            ],
        )

    def _table(self, columns: dict[str, list]) -> pa.Table:
        probabilities = np.concatenate(columns["probabilities"])
        score, predicted = score_columns(probabilities, self._positive, self._threshold)
        rows, classes = probabilities.shape
        n = len(self._frames)
        offsets = pa.array(np.arange(0, (rows + 1) * classes, classes, dtype=np.int32))
        arrays = [
            *(pa.array(column, pa.string()) for column in self._ids),
            pa.array(np.asarray(self._frames, dtype=np.int32)),
            pa.array(score.astype(np.float32)),
            pa.ListArray.from_arrays(offsets, pa.array(probabilities.reshape(-1))),
            pa.array(np.asarray(self._labels, dtype=object)[predicted], pa.string()),
            pa.array([self._version] * n, pa.string()),
            pa.array([self._run_id] * n, pa.string()),
            pa.array(np.asarray(self._times, dtype=np.int64)).cast(_SCORED_AT_TYPE),
            pa.array(columns["explanations"], pa.string()),
        ]
        batch = pa.RecordBatch.from_arrays(arrays, schema=f.SCORES_SCHEMA)
        return pa.Table.from_batches([batch])


def inference_dead_letters(failed) -> list[DeadLetter]:
    """A batch RunInference could not score → one ``score`` dead letter per instance in it.

    ``failed`` is ``(batch, (exception type, text, traceback))`` as Beam's exception
    handling emits it; only the type is kept (the text could quote anything).
    """
    batch, (error_type, *_) = failed
    name = getattr(error_type, "__name__", str(error_type))
    message = f"the model failed on a batch of {len(batch)} instance(s) ({name})"
    return [
        DeadLetter(key.source, key.member, STAGE_SCORE, "inference_failed", message)
        for key, _ in batch
    ]


@dataclass(frozen=True)
class Candidate:
    """An image that may be among the run's top scores (for Grad-CAM)."""

    score: float
    sop_instance_uid: str
    frame: int
    class_index: int  # the probability column the score is
    image: bytes

    def rank(self) -> tuple[float, str, int]:
        return self.score, self.sop_instance_uid, self.frame


def candidates(element, positive_index: int | None, image_bytes: int) -> list[Candidate]:
    """``(ScoreKey, PredictionResult)`` → one candidate per image."""
    key, result = element
    probabilities = np.asarray(result.inference, dtype=np.float32)
    scores, predicted = score_columns(probabilities, positive_index)
    column = predicted if positive_index is None else [positive_index] * len(predicted)
    blob = result.example
    return [
        Candidate(
            float(scores[j]),
            key.sop_instance_uid,
            frame,
            int(column[j]),
            blob[j * image_bytes : (j + 1) * image_bytes],
        )
        for j, frame in enumerate(key.frames)
    ]
