"""Segmentation score rows: the prediction mapped back to source pixels, and its figures."""

import numpy as np
import pyarrow as pa
import pytest
from apache_beam.ml.inference.base import PredictionResult
from scipy import ndimage

from models import features as f
from transforms import seg_scoring as ss
from transforms.mask_geometry import fit_label_map
from transforms.pixels import placement
from transforms.scoring import COUNTS, ScoreKey

IDS = ("2.25.1", "2.25.2", "2.25.3", "PATX", "CT")


def test_placement_is_where_resize_pad_puts_the_image():
    assert placement(32, 64, 64) == (16, 0, 32, 64)
    assert placement(300, 100, 64) == (0, 21, 64, 21)
    assert placement(5, 5, 64) == (0, 0, 64, 64)


def test_to_source_grid_inverts_the_label_geometry_when_nothing_is_lost():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, (16, 24), dtype=np.uint8)  # scaled by 64/24, padded
    fitted = fit_label_map(label, 64)
    back = ss.to_source_grid(fitted, ss.SourceGrid.of(16, 24, 64))
    assert np.array_equal(back, label)


def _brute(probabilities: np.ndarray, grid: ss.SourceGrid):
    """The figures from the source-size label map itself."""
    labels = ss.to_source_grid(np.argmax(probabilities, axis=-1), grid)
    areas, counts, boxes = [], [], []
    for c in range(1, probabilities.shape[-1]):
        components, n = ndimage.label(labels == c, structure=np.ones((3, 3), bool))
        areas.append(int((labels == c).sum()))
        counts.append(n)
        boxes += [(c, r.start, k.start, r.stop - 1, k.stop - 1)
                  for r, k in ndimage.find_objects(components)]  # fmt: skip
    return areas, counts, boxes


@pytest.mark.parametrize("rows, columns", [(300, 500), (100, 37), (64, 64), (20, 90), (7, 3)])
def test_figures_at_model_size_equal_those_of_the_source_size_map(rows, columns):
    rng = np.random.default_rng(rows * columns)
    logits = rng.normal(size=(32, 32, 3)).astype(np.float32)
    logits[..., 0] += 1.2  # mostly background, several components of each class
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    grid = ss.SourceGrid.of(rows, columns, 32)
    figures = ss.frame_figures(probabilities, grid)
    areas, counts, boxes = _brute(probabilities, grid)
    assert figures.areas.tolist() == areas and figures.components.tolist() == counts
    assert sorted(figures.boxes) == sorted(boxes)
    crop = grid.crop(probabilities)
    assert figures.max_probability.tolist() == crop[..., 1:].max(axis=(0, 1)).tolist()


def test_source_masks_are_one_hot_or_probabilities():
    probabilities = np.zeros((4, 4, 3), np.float32)
    probabilities[..., 0] = 1
    probabilities[1, 1] = [0.1, 0.7, 0.2]
    probabilities[2, 3] = [0.2, 0.3, 0.5]
    grid = ss.SourceGrid.of(8, 8, 4)  # each model pixel is 2 x 2 source pixels
    binary = ss.source_masks(probabilities, grid, fractional=False)
    assert binary.shape == (8, 8, 2) and binary.dtype == np.uint8
    assert binary[..., 0].sum() == 4 and binary[2:4, 2:4, 0].all()
    assert binary[..., 1].sum() == 4 and binary[4:6, 6:8, 1].all()
    fractional = ss.source_masks(probabilities, grid, fractional=True)
    assert fractional.dtype == np.float32 and fractional[5, 7, 1] == pytest.approx(0.5)


def _prediction(boxes_at: list[tuple[int, int]], size: int = 8) -> np.ndarray:
    p = np.zeros((len(boxes_at), size, size, 2), np.float32)
    p[..., 0] = 1
    for i, (r, c) in enumerate(boxes_at):
        p[i, r, c] = [0.2, 0.8]
    return p


def test_rows_fn_writes_typed_columns_and_counts():
    fn = ss.SegmentationRowsFn(["0", "1"], "3", "run", rows_per_table=2)
    fn.setup()
    fn.start_bundle()
    dicom = ScoreKey("a.dcm", None, IDS, (0, 4), ((16, 16), (16, 16)))  # 2 x the model grid
    tfrecord = ScoreKey("x.tfrecord.gz", "record 0", IDS, (0,))  # no source geometry
    out = list(fn.process((dicom, PredictionResult(b"", _prediction([(1, 2), (0, 0)])))))
    out += list(fn.process((tfrecord, PredictionResult(b"", _prediction([(7, 7)])))))
    out += list(fn.finish_bundle())
    counts = [o.value for o in out if getattr(o, "tag", None) == COUNTS]
    # Tables come bare from process, windowed from finish_bundle.
    tables = [o if isinstance(o, pa.Table) else o.value for o in out if not hasattr(o, "tag")]
    table = pa.concat_tables(tables)
    assert table.schema == f.SEGMENTATION_SCORES_SCHEMA
    rows = table.to_pylist()
    assert [r[f.FOREGROUND_AREA] for r in rows] == [[4], [4], [1]]
    assert rows[0][f.BOUNDING_BOXES] == [
        {"class": "1", "row_min": 2, "column_min": 4, "row_max": 3, "column_max": 5}
    ]
    assert rows[2][f.BOUNDING_BOXES][0]["row_min"] == 7  # the model grid, unmapped
    assert [r[f.COMPONENT_COUNT] for r in rows] == [[1], [1], [1]]
    assert rows[0][f.MAX_PROBABILITY] == [pytest.approx(0.8)]
    assert [r[f.FRAME] for r in rows] == [0, 4, 0] and rows[0][f.SEG_URI] is None
    assert counts[0].count("images") == 2 and ("by_predicted_class", "1") in counts[0]


def test_an_empty_bundle_of_boxes_is_still_a_valid_table():
    figures = ss.frame_figures(_prediction([(0, 0)])[0] * 0 + [1, 0], ss.SourceGrid.of(8, 8, 8))
    table = ss.segmentation_table(["0", "1"], [[v] for v in IDS], [0], [figures], "1", "r",
                                  [0], [None])  # fmt: skip
    assert table.to_pylist()[0][f.BOUNDING_BOXES] == []
    assert table.to_pylist()[0][f.FOREGROUND_AREA] == [0]
