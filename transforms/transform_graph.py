"""Ingest's tf.Transform graph: the train split's statistics in one Beam combiner, then the
graph written once from them, on a worker.

tf.Transform's own analysis (``AnalyzeDataset`` + ``WriteTransformFn``) would trace the
preprocessing in the launching process (TensorFlow, Keras and scikit-learn imported there),
build some 140 Beam transforms, run its analysis phases and write the SavedModel twice:
seconds of every ingest's start-up for two numbers and a label list. Here one
``CombineGlobally`` gathers them in the same pass that writes the TFRecords, and one DoFn
writes the graph: the analyzer-free graph (``models.preprocessing``) reads the statistics
and the vocabulary from its asset files, so it is the same for every run of one image
geometry, and ``models.transform_writer`` copies the one built for the geometry and writes
the run's assets into it. The graph format and ``tft.TFTransformOutput`` are unchanged;
ingest imports no TensorFlow unless its geometry is not shipped built.

The pixel statistics are exact: pixels are integers k/255, so the accumulator keeps the
integer count, sum and sum of squares of k, and merging is integer addition. The result
does not depend on how a runner splits the data into bundles (a float accumulator's
rounding does), so every runner writes the same statistics into the graph.
"""

import math
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import apache_beam as beam
import numpy as np

from models.transform_writer import vocabulary_token, write_transform
from transforms.storage import delete_tree, publish_tree

_K = np.arange(256, dtype=np.int64)
_K2 = _K * _K

# tf.Transform's text vocabulary leaves out empty tokens and tokens with a line break (its
# _EMPTY_STRING_OR_NEWLINE_CHARS_REGEX), and writes this one token for an empty vocabulary
# (analyzers.get_empy_vocabulary_dummy_value), so that the lookup table can be built.
EMPTY_VOCABULARY = ("49d0cd50-04bb-48c0-bc6f-5b575dce351a",)
NO_STATISTICS = {"error": "no statistics (no train examples)"}


class ImageMoments(NamedTuple):
    """Over the uint8 values k of some images' pixels: how many, the sum of k, of k²."""

    pixels: int = 0
    total: int = 0
    squares: int = 0


def image_moments(images: Iterable[bytes]) -> ImageMoments:
    """The moments of the uint8 pixels of ``images`` (raw bytes, any geometry), exact."""
    pixels = total = squares = 0
    for data in images:
        histogram = np.bincount(np.frombuffer(data, np.uint8), minlength=256)
        pixels += len(data)
        total += int(histogram @ _K)
        squares += int(histogram @ _K2)
    return ImageMoments(pixels, total, squares)


def label_vocabulary(counts: dict[str, int]) -> tuple[str, ...]:
    """Labels in tf.Transform's vocabulary order (``tft.vocabulary`` without top_k): by
    count, most frequent first, ties by the label's UTF-8 bytes, largest first (its sort of
    (count, token) pairs in reverse); empty labels and labels with a line break left out."""
    kept = [(n, label.encode()) for label, n in counts.items() if vocabulary_token(label)]
    kept.sort(reverse=True)
    return tuple(token.decode() for _, token in kept) or EMPTY_VOCABULARY


@dataclass(frozen=True)
class TrainStatistics:
    """What the transform graph needs from the train split."""

    examples: int
    moments: ImageMoments
    label_counts: tuple[tuple[str, int], ...]  # per label, how many examples

    @property
    def pixel_mean(self) -> float:
        """Mean of every pixel of every train image, on the [0, 1] scale."""
        return self.moments.total / (255 * self.moments.pixels)

    @property
    def pixel_std(self) -> float:
        """Standard deviation (population) of the same pixels, on the [0, 1] scale."""
        n, total, squares = self.moments
        # Exact integers up to the one division: n² var(k) = n Σk² - (Σk)².
        return math.sqrt((n * squares - total * total) / (65025 * n * n))

    @property
    def labels(self) -> tuple[str, ...]:
        """The label vocabulary: label id i is ``labels[i]``."""
        return label_vocabulary(dict(self.label_counts))

    def describe(self) -> dict:
        """The manifest's ``tf_transform`` section."""
        if not self.examples:
            return dict(NO_STATISTICS)
        return {
            "pixel_mean": self.pixel_mean,
            "pixel_std": self.pixel_std,
            "labels": list(self.labels),
        }


class TrainInstance(Protocol):
    """What the statistics read of a converted train instance (ingest's ``Converted``)."""

    @property
    def label(self) -> str | None: ...

    @property
    def examples(self) -> tuple[bytes, ...]: ...

    @property
    def pixel_moments(self) -> ImageMoments | None: ...


class TrainStatisticsFn(beam.CombineFn):
    """Converted train instances → ``TrainStatistics``: pixel moments and, per label, the
    examples (one per image, as tf.Transform counted them) in one pass."""

    def create_accumulator(self) -> list:
        return [0, ImageMoments(), Counter()]

    def add_input(self, acc: list, instance: TrainInstance) -> list:
        n = len(instance.examples)
        acc[0] += n
        if instance.pixel_moments is not None:
            acc[1] = _add(acc[1], instance.pixel_moments)
        acc[2][instance.label or ""] += n
        return acc

    def merge_accumulators(self, accs: Iterable[list]) -> list:
        merged = self.create_accumulator()
        for examples, moments, labels in accs:
            merged[0] += examples
            merged[1] = _add(merged[1], moments)
            merged[2].update(labels)
        return merged

    def extract_output(self, acc: list) -> TrainStatistics:
        examples, moments, labels = acc
        return TrainStatistics(examples, moments, tuple(sorted(labels.items())))


def _add(a: ImageMoments, b: ImageMoments) -> ImageMoments:
    return ImageMoments(*(x + y for x, y in zip(a, b, strict=True)))


class WriteTransformGraphFn(beam.DoFn):
    """``TrainStatistics`` → the tf.Transform graph published at ``directory``; yields the
    manifest's ``tf_transform`` section once it is there.

    The graph is written to the worker's local disk, then replaces ``directory`` (any
    filesystem Beam knows, gs:// included): whatever an earlier run left there goes first,
    and a retried bundle writes it all again. No train examples: no graph, and an earlier
    run's is removed, since it would not describe these TFRecords.
    """

    def __init__(self, directory: str, size: int, channels: int):
        self._directory = directory
        self._size = size
        self._channels = channels

    def process(self, statistics: TrainStatistics):
        if not statistics.examples:
            delete_tree(self._directory)
            yield statistics.describe()
            return
        with tempfile.TemporaryDirectory(prefix="dicomflow-transform-") as local:
            write_transform(
                local,
                statistics.pixel_mean,
                statistics.pixel_std,
                statistics.labels,
                self._size,
                self._channels,
            )
            publish_tree(local, self._directory)
        yield statistics.describe()


class AnalyzeTrain(beam.PTransform):
    """Converted train instances → the graph at ``directory``; a one-element PCollection
    holding the manifest section (written after the graph)."""

    def __init__(self, directory: str, size: int, channels: int):
        super().__init__()
        self._directory = directory
        self._size = size
        self._channels = channels

    def expand(self, train: beam.PCollection) -> beam.PCollection[dict]:
        return (
            train
            | "Statistics" >> beam.CombineGlobally(TrainStatisticsFn())
            | "WriteGraph"
            >> beam.ParDo(WriteTransformGraphFn(self._directory, self._size, self._channels))
        )
