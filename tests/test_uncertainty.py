"""DeLong intervals against a direct computation and scikit-learn; the seeded bootstrap."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from models import uncertainty


def direct_delong(y, score):
    """The textbook O(m·n) structural components: psi(x, y) = 1, ½ or 0."""
    pos, neg = score[y == 1], score[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), np.var(v10, ddof=1) / len(pos) + np.var(v01, ddof=1) / len(neg)


def test_delong_matches_the_direct_computation_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    score = np.round(rng.normal(y * 0.8, 1.0), 1)  # rounded: many ties
    auc, variance = uncertainty.delong(y, score)
    ref_auc, ref_var = direct_delong(y, score)
    assert auc == pytest.approx(ref_auc) == pytest.approx(roc_auc_score(y, score))
    assert variance == pytest.approx(ref_var)


def test_auc_interval_is_normal_around_the_estimate_and_clipped():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    score = rng.normal(y, 1.0)
    ci = uncertainty.auc_ci(y, score)
    half = 1.959964 * math.sqrt(uncertainty.delong(y, score)[1])
    assert ci["low"] == pytest.approx(ci["value"] - half)
    assert ci["high"] == pytest.approx(ci["value"] + half)
    perfect = uncertainty.auc_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert (perfect["value"], perfect["low"], perfect["high"]) == (1.0, 1.0, 1.0)
    assert math.isnan(uncertainty.auc_ci([1, 1], [0.1, 0.2])["value"])


def test_auc_interval_narrows_with_more_data():
    rng = np.random.default_rng(3)
    widths = []
    for n in (50, 800):
        y = rng.integers(0, 2, n)
        ci = uncertainty.auc_ci(y, rng.normal(y, 1.0))
        widths.append(ci["high"] - ci["low"])
    assert widths[1] < widths[0] / 3


def test_bootstrap_is_seeded_stratified_and_brackets_the_value():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 120)
    score = rng.uniform(0, 1, 120) * 0.6 + y * 0.4
    first = uncertainty.bootstrap_threshold_ci(y, score, 0.5, replicates=500, seed=7)
    again = uncertainty.bootstrap_threshold_ci(y, score, 0.5, replicates=500, seed=7)
    other = uncertainty.bootstrap_threshold_ci(y, score, 0.5, replicates=500, seed=8)
    assert first == again and first != other
    for name, ci in first.items():
        assert ci["low"] <= ci["value"] <= ci["high"], name
        assert ci["high"] - ci["low"] > 0.01, name
    # Stratified: positives and negatives keep their counts, so a classifier that calls
    # every positive right has recall exactly 1 in every replicate.
    perfect = uncertainty.bootstrap_threshold_ci(y, y * 0.9, 0.5, replicates=200)
    assert perfect["recall"]["low"] == perfect["recall"]["high"] == 1.0


def test_bootstrap_counts_have_the_resampling_distribution():
    # 30 of 100 positives called: resampled recall has mean 0.3 and sd sqrt(0.3 * 0.7 / 100).
    y = np.r_[np.ones(100), np.zeros(50)].astype(int)
    score = np.r_[np.ones(30), np.zeros(70), np.zeros(50)]
    ci = uncertainty.bootstrap_threshold_ci(y, score, 0.5, replicates=20000, seed=1)["recall"]
    sd = (0.3 * 0.7 / 100) ** 0.5
    assert ci["low"] == pytest.approx(0.3 - 1.96 * sd, abs=0.015)
    assert ci["high"] == pytest.approx(0.3 + 1.96 * sd, abs=0.015)
