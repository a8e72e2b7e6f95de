"""Calibrate on eval, threshold on calibrated eval, then the test figures with intervals."""

import numpy as np
import pytest

from models import assessment
from models import features as f
from models.operating_point import OperatingPoint


def predictions(n: int, seed: int):
    """A network that ranks well but puts every score high (badly placed against 0.5)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p1 = 1 / (1 + np.exp(-(rng.normal(2.0 * y, 1.0) + 3.0)))
    return y, np.c_[1 - p1, p1]


def test_the_operating_point_makes_accuracy_agree_with_the_ranking():
    eval_ids, eval_raw = predictions(300, 0)
    test_ids, test_raw = predictions(300, 1)
    argmax_accuracy = np.mean(test_raw.argmax(axis=1) == test_ids)
    assert argmax_accuracy < 0.6  # nearly everything above 0.5: as the issue measured
    out = assessment.assess(
        eval_ids,
        eval_raw,
        test_ids,
        test_raw,
        ["0", "1"],
        "1",
        OperatingPoint(),
        {f.MODALITY: ["CT"] * 300},
        seed=3,
    )
    m = out.metrics
    assert m["roc_auc"] > 0.8 and m["accuracy"] > 0.7
    assert m["threshold"] == out.threshold == m["operating_point"]["threshold"]
    assert m["operating_point"]["rule"] == "youden" == out.operating_point
    assert m["ci"]["roc_auc"]["low"] < m["roc_auc"] < m["ci"]["roc_auc"]["high"]
    assert m["ci"]["accuracy"]["value"] == pytest.approx(m["accuracy"])
    assert m["calibration"]["test"]["ece_after"] < m["calibration"]["test"]["ece_before"]
    assert m["calibration"]["fitted_on"] == "eval" and "reliability" in m["calibration"]["test"]
    assert m["slices"][f.MODALITY][0]["examples"] == 300
    np.testing.assert_allclose(out.test_calibrated, out.calibration.apply(test_raw))
    line = assessment.summary_line({**m, "examples": 300})
    assert line.startswith(f"test: ROC AUC {m['roc_auc']:.4f} (95% CI ")
    assert f"at threshold {m['threshold']:.4f} (youden): accuracy {m['accuracy']:.4f}" in line
    assert line.endswith("on 300 examples")


def test_sensitivity_rule_reaches_its_target_on_eval():
    eval_ids, eval_raw = predictions(400, 4)
    test_ids, test_raw = predictions(400, 5)
    point = OperatingPoint.parse("sensitivity=0.95")
    m = assessment.assess(eval_ids, eval_raw, test_ids, test_raw, ["0", "1"], "1", point).metrics
    assert m["operating_point"]["eval"]["recall"] >= 0.95
    assert m["recall"] > 0.85 and "slices" not in m


def test_eval_with_one_class_falls_back_and_multiclass_has_no_threshold():
    eval_ids, eval_raw = np.ones(20, int), predictions(20, 6)[1]
    test_ids, test_raw = predictions(50, 7)
    m = assessment.assess(eval_ids, eval_raw, test_ids, test_raw, ["0", "1"], "1", OperatingPoint())
    assert m.threshold == assessment.FALLBACK_THRESHOLD and "not applicable" in m.operating_point
    probs = np.random.default_rng(8).dirichlet([1, 1, 1], 30)
    ids = probs.argmax(axis=1)
    multi = assessment.assess(ids, probs, ids, probs, ["a", "b", "c"], None, OperatingPoint())
    assert multi.threshold is None and "ci" not in multi.metrics
    assert multi.metrics["calibration"]["method"] == "temperature"
