"""Per-slice figures, small slices flagged, unknown values grouped."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from models import features as f
from models import slices


def test_each_value_gets_counts_auc_and_threshold_figures():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(60), np.ones(60)].astype(int)
    score = np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1)
    modality = ["CT"] * 80 + ["MR"] * 36 + [None] * 4
    rng.shuffle(modality)
    out = slices.slice_metrics(y, score, 0.5, {f.MODALITY: modality})
    rows = {r["value"]: r for r in out[f.MODALITY]}
    assert [r["value"] for r in out[f.MODALITY]] == ["CT", "MR", "unknown"]  # largest first
    ct = np.array([m == "CT" for m in modality])
    assert rows["CT"]["examples"] == 80
    assert rows["CT"]["positives"] + rows["CT"]["negatives"] == 80
    assert rows["CT"]["roc_auc"] == pytest.approx(roc_auc_score(y[ct], score[ct]))
    assert rows["CT"]["roc_auc_low"] < rows["CT"]["roc_auc"] < rows["CT"]["roc_auc_high"]
    assert rows["CT"]["accuracy"] == pytest.approx(np.mean((score[ct] >= 0.5) == y[ct]))
    assert not rows["CT"]["small"] and rows["CT"]["why_small"] is None
    assert rows["unknown"]["small"] and "fewer than 30 examples" in rows["unknown"]["why_small"]


def test_a_slice_with_few_of_a_class_is_small_and_one_class_has_no_auc():
    y = np.array([0] * 40 + [1] * 3)
    score = np.linspace(0, 1, 43)
    row = slices.slice_metrics(y, score, 0.5, {"c": ["x"] * 43})["c"][0]
    assert row["small"] and row["why_small"] == "fewer than 10 of a class"
    only_negatives = slices.slice_metrics(y[:40], score[:40], 0.5, {"c": ["x"] * 40})["c"][0]
    assert math.isnan(only_negatives["roc_auc"]) and math.isnan(only_negatives["recall"])
    assert only_negatives["specificity"] == pytest.approx(np.mean(score[:40] < 0.5))


def test_a_column_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="slice column c has 2 values for 3"):
        slices.slice_metrics([0, 1, 0], [0.1, 0.9, 0.2], 0.5, {"c": ["a", "b"]})
