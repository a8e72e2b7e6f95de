"""Segmentation score rows: a U-Net's per-pixel probabilities → figures in source pixels.

The model sees an image at ``size`` x ``size`` (``pixels.resize_pad``: aspect kept, scaled to
fit, padded centred). Its prediction is mapped back through that geometry, by nearest
neighbour: the padding is cropped and each source pixel takes the class of the model pixel
whose centre is nearest its own. Every figure is computed at model size on the crop rows and
columns that some source pixel maps to, weighted by how many map to each; the source-size
label map equals that sub-grid with each row and column repeated, so areas, 8-connected
components and bounding boxes are exactly those of the source-size map, without ever making
it (a 2048² image costs what a model-size one does). Only a DICOM SEG needs the source-size
map (``source_masks``), one frame at a time.

``SegmentationRowsFn`` (on ``scoring.BundleRowsFn``) turns keyed predictions into
``SEGMENTATION_SCORES_SCHEMA`` Arrow tables, column by column, and writes a SEG per instance
when asked (``dicom_seg``).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics

from models import features as f
from transforms import dicom_io
from transforms.deadletter import DEAD_LETTER, STAGE_SCORE, DeadLetter, StageError
from transforms.pixels import placement
from transforms.scoring import ROW_GROUP_ROWS, BundleRowsFn

SEG_URIS = "seg_uris"  # SegmentationRowsFn's tagged output: the URI of each SEG written
_SCORED_AT_TYPE = f.SEGMENTATION_SCORES_SCHEMA.field(f.SCORED_AT).type
_BOX_TYPE = f.SEGMENTATION_SCORES_SCHEMA.field(f.BOUNDING_BOXES).type.value_type


@dataclass(frozen=True)
class SourceGrid:
    """A source image's rows x columns and where ``resize_pad`` put it in the model input.

    ``row_index[i]`` is the crop row (0-based, within the un-padded region) that source row
    ``i`` takes its value from; likewise ``column_index``.
    """

    rows: int
    columns: int
    top: int
    left: int
    height: int
    width: int

    @classmethod
    def of(cls, rows: int, columns: int, size: int) -> "SourceGrid":
        top, left, height, width = placement(rows, columns, size)
        return cls(rows, columns, top, left, height, width)

    @property
    def row_index(self) -> np.ndarray:
        return _nearest(self.rows, self.height)

    @property
    def column_index(self) -> np.ndarray:
        return _nearest(self.columns, self.width)

    def crop(self, plane: np.ndarray) -> np.ndarray:
        """The un-padded region of a size x size (x channels) array."""
        return plane[self.top : self.top + self.height, self.left : self.left + self.width]


def _nearest(target: int, source: int) -> np.ndarray:
    """For each of ``target`` pixels, the one of ``source`` whose centre is nearest."""
    index = ((np.arange(target) + 0.5) * source / target).astype(np.int64)
    return np.minimum(index, source - 1)


def to_source_grid(plane: np.ndarray, grid: SourceGrid) -> np.ndarray:
    """A model-size array (size x size, optionally x channels) → rows x columns (x channels):
    the inverse of ``resize_pad``'s placement, by nearest neighbour."""
    crop = grid.crop(plane)
    return crop[grid.row_index][:, grid.column_index]


@dataclass(frozen=True)
class FrameFigures:
    """One image's figures, per foreground class (``labels[1:]`` order), in source pixels."""

    areas: np.ndarray  # int64 [classes - 1]: predicted pixels
    components: np.ndarray  # int32 [classes - 1]: 8-connected components
    boxes: list[tuple[int, int, int, int, int]]  # (class index, row_min, col_min, row_max, col_max)
    max_probability: np.ndarray  # float32 [classes - 1], over the image (padding excluded)


def frame_figures(probabilities: np.ndarray, grid: SourceGrid) -> FrameFigures:
    """Figures of one image from its probabilities [size, size, classes] (class 0 background).

    Each source pixel's class is the most probable class of the model pixel it maps to.
    Boxes are inclusive, in the source's rows and columns, one per component, ordered by
    class and then by the component's first pixel in row-major order.
    """
    from scipy import ndimage

    crop = grid.crop(probabilities)
    classes = probabilities.shape[-1]
    rows_used, row_counts = np.unique(grid.row_index, return_counts=True)
    cols_used, col_counts = np.unique(grid.column_index, return_counts=True)
    row_start = np.concatenate([[0], np.cumsum(row_counts)])  # first source row of each
    col_start = np.concatenate([[0], np.cumsum(col_counts)])
    labels = np.argmax(crop[rows_used][:, cols_used], axis=-1)
    areas = np.zeros(classes - 1, np.int64)
    counts = np.zeros(classes - 1, np.int32)
    boxes = []
    eight = np.ones((3, 3), bool)
    for c in range(1, classes):
        mask = labels == c
        if not mask.any():
            continue
        areas[c - 1] = int(row_counts @ mask.astype(np.int64) @ col_counts)
        components, count = ndimage.label(mask, structure=eight)
        counts[c - 1] = count
        for rows, cols in ndimage.find_objects(components):
            boxes.append(
                (
                    c,
                    int(row_start[rows.start]),
                    int(col_start[cols.start]),
                    int(row_start[rows.stop] - 1),
                    int(col_start[cols.stop] - 1),
                )
            )
    peak = crop.reshape(-1, classes).max(axis=0)[1:].astype(np.float32)
    return FrameFigures(areas, counts, boxes, peak)


def source_masks(probabilities: np.ndarray, grid: SourceGrid, fractional: bool) -> np.ndarray:
    """One image's foreground segments on the source grid: rows x columns x (classes - 1),
    each class's probability (``fractional``) or 1 where it is the most probable (uint8)."""
    if fractional:
        return to_source_grid(probabilities[..., 1:], grid).astype(np.float32)
    labels = to_source_grid(np.argmax(probabilities, axis=-1).astype(np.uint8), grid)
    classes = np.arange(1, probabilities.shape[-1], dtype=np.uint8)
    return (labels[..., None] == classes).astype(np.uint8)


class SegmentationRowsFn(BundleRowsFn):
    """``(ScoreKey, PredictionResult)`` → Arrow tables of ``SEGMENTATION_SCORES_SCHEMA``,
    count keys (tagged ``counts``) and, with a SEG writer, one DICOM SEG per instance (its
    URI tagged ``seg_uris``).

    ``PredictionResult.inference`` is float32 [images, size, size, classes]. Each image is
    mapped back to its source grid (``ScoreKey.grids``; the model grid itself for TFRecord
    input, which has no source geometry). A SEG that cannot be built or written is a
    ``score`` dead letter ``seg_failed`` (tagged ``dead_letter``); the instance's rows are
    still written, with ``seg_uri`` null.

    Args:
        labels: ``model.json`` ``labels``: class ids, background first.
        model_version, run_id: the partition, also written in every row.
        seg: writes an instance's SEG and gives its URI (``dicom_seg.SegWriter``), or None.
        rows_per_table: rows per table (one Parquet row group).
    """

    columns = ("figures", "uris")  # per row

    def __init__(
        self,
        labels: Sequence[str],
        model_version: str,
        run_id: str,
        seg=None,
        rows_per_table: int = ROW_GROUP_ROWS,
    ):
        super().__init__(model_version, run_id, rows_per_table)
        self._labels = list(labels)
        self._seg = seg

    def setup(self):
        super().setup()
        self._segs = Metrics.counter(dicom_io.METRICS_NAMESPACE, "seg_written")
        if self._seg is not None:
            self._seg.setup()

    def process(self, element):
        key, result = element
        probabilities = np.asarray(result.inference, dtype=np.float32)
        size = probabilities.shape[1]
        shapes = key.grids or ((size, size),) * len(key.frames)  # TFRecords: the model grid
        grids = [SourceGrid.of(rows, columns, size) for rows, columns in shapes]
        figures = [frame_figures(p, g) for p, g in zip(probabilities, grids, strict=True)]
        uri = None
        if self._seg is not None:
            try:
                uri = self._seg.write(key, probabilities, grids)
                self._segs.inc()
            except StageError as e:
                letter = DeadLetter(key.source, key.member, STAGE_SCORE, e.error_type, e.message)
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
        counts: list = [
            ("by_predicted_class", self._labels[c + 1])
            for fig in figures
            for c in np.flatnonzero(fig.areas)
        ]
        if uri is not None:
            counts.append("seg_written")
            yield beam.pvalue.TaggedOutput(SEG_URIS, uri)
        yield from self._add(key, counts, figures=figures, uris=[uri] * len(key.frames))

    def _table(self, columns: dict[str, list]) -> pa.Table:
        return segmentation_table(
            self._labels,
            self._ids,
            self._frames,
            columns["figures"],
            self._version,
            self._run_id,
            self._times,
            columns["uris"],
        )


def segmentation_table(
    labels: Sequence[str],
    ids: Sequence[Sequence[str]],
    frames: Sequence[int],
    figures: Sequence[FrameFigures],
    version: str,
    run_id: str,
    times_us: Sequence[int],
    uris: Sequence[str | None],
) -> pa.Table:
    """One Arrow table of ``SEGMENTATION_SCORES_SCHEMA`` from columns of rows."""
    n, per_row = len(frames), len(labels) - 1
    fixed = pa.array(np.arange(0, (n + 1) * per_row, per_row, dtype=np.int32))

    def per_class(values: list[np.ndarray], dtype) -> pa.Array:
        flat = np.concatenate(values).astype(dtype) if values else np.zeros(0, dtype)
        return pa.ListArray.from_arrays(fixed, pa.array(flat))

    boxes = [box for fig in figures for box in fig.boxes]
    box_offsets = np.concatenate([[0], np.cumsum([len(fig.boxes) for fig in figures])])
    table = np.asarray(boxes, dtype=np.int64).reshape(-1, 5)
    names: list = list(np.asarray(labels, dtype=object)[table[:, 0]])
    struct = pa.StructArray.from_arrays(
        [pa.array(names, pa.string()), *(pa.array(table[:, i], pa.int32()) for i in range(1, 5))],
        fields=list(_BOX_TYPE),
    )
    arrays = [
        *(pa.array(column, pa.string()) for column in ids),
        pa.array(np.asarray(frames, dtype=np.int32)),
        per_class([fig.areas for fig in figures], np.int64),
        per_class([fig.components for fig in figures], np.int32),
        pa.ListArray.from_arrays(pa.array(box_offsets.astype(np.int32)), struct),
        per_class([fig.max_probability for fig in figures], np.float32),
        pa.array([version] * n, pa.string()),
        pa.array([run_id] * n, pa.string()),
        pa.array(np.asarray(times_us, dtype=np.int64)).cast(_SCORED_AT_TYPE),
        pa.array(list(uris), pa.string()),
    ]
    batch = pa.RecordBatch.from_arrays(arrays, schema=f.SEGMENTATION_SCORES_SCHEMA)
    return pa.Table.from_batches([batch])
