"""The task interface: classification on it gives exactly what it gave before the move."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from models import export
from models.operating_point import OperatingPoint
from models.tasks import DEFAULT_TASK, TASKS, Metrics, ModelInfo, get_task

# Written by the trainer's code before tasks existed (main at 60fc762), from fixed seeded
# predictions: eval and test label ids, raw probabilities and slice values, and what
# assess(), summary_line() and model_info() made of them.
GOLDEN = Path(__file__).parent / "data" / "classification_golden.json"


def _as_written(value):
    """What write_json puts in a file (NaN as null, tuples as lists, sorted keys)."""
    return json.loads(json.dumps(export._finite(value), sort_keys=True))


def _same(found, expected) -> bool:
    """Equal, numbers to 1e-9 relative: the last bit of a float differs between CPUs (the
    golden file was written on another one), a changed computation does not hide there."""
    if isinstance(expected, dict):
        return (
            isinstance(found, dict)
            and found.keys() == expected.keys()
            and all(_same(found[k], expected[k]) for k in expected)
        )
    if isinstance(expected, list):
        return (
            isinstance(found, list)
            and len(found) == len(expected)
            and all(_same(a, b) for a, b in zip(found, expected, strict=True))
        )
    if isinstance(expected, float) and isinstance(found, (int, float)):
        return math.isclose(found, expected, rel_tol=1e-9, abs_tol=1e-12)
    return found == expected


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def test_classification_outputs_are_unchanged_by_the_move(golden):
    task = get_task("classification")
    given = golden["inputs"]
    assessed = task.assess(
        np.asarray(given["eval_ids"]),
        np.asarray(given["eval_raw"], np.float32),
        np.asarray(given["test_ids"]),
        np.asarray(given["test_raw"], np.float32),
        ["0", "1"],
        OperatingPoint.parse("youden"),
        given["slices"],
        seed=0,
    )
    assert _same(_as_written(assessed.metrics), golden["metrics"])
    assert task.summary_line(assessed.metrics) == golden["summary_line"]
    assert _same(_as_written(assessed.test_calibrated.tolist()), golden["test_calibrated"])
    info = export.model_info(
        "3",
        ["0", "1"],
        (64, 64, 1),
        "cnn",
        "gradcam",
        "2026-12-06T00:00:00Z",
        "run-x",
        {"size": 64},
        threshold=assessed.threshold,
        operating_point=assessed.operating_point,
        calibration=assessed.calibration.describe(),
    )
    written = _as_written(info.to_json())
    # The keys the move added: the task, and a segmentation model's class names.
    assert written.pop("task") == "classification" and written.pop("class_names") is None
    assert _same(written, golden["model_json"])


def test_the_metrics_record_carries_the_promotion_metric_and_its_interval(golden):
    record = get_task("classification").read_metrics(golden["metrics"])
    ci = golden["metrics"]["ci"]["roc_auc"]
    assert (record.task, record.metric) == ("classification", "roc_auc")
    assert (record.value, record.low, record.high) == (ci["value"], ci["low"], ci["high"])
    assert record.lower_bound == ci["low"] and record.details == golden["metrics"]
    undefined = get_task("classification").read_metrics({"roc_auc": None})
    assert not undefined.defined and math.isnan(undefined.lower_bound)
    # No interval recorded (a version from before intervals): the point estimate stands in.
    assert Metrics(task="classification", metric="roc_auc", value=0.8).lower_bound == 0.8


def test_model_info_reads_back_what_it_writes_and_old_files_are_classifiers(golden):
    old = golden["model_json"]  # written before tasks: no "task" key
    info = ModelInfo.from_json(old)
    assert info.task == DEFAULT_TASK == "classification" and info.image_shape == (64, 64, 1)
    assert ModelInfo.from_json(info.to_json()) == info
    with pytest.raises(ValueError, match=r"model\.json lacks image_height, labels"):
        ModelInfo.from_json({k: v for k, v in old.items() if k not in ("labels", "image_height")})


def test_an_unknown_task_is_one_clear_error():
    assert "classification" in TASKS
    with pytest.raises(ValueError, match="unknown task 'detection'; choose one of"):
        get_task("detection")
