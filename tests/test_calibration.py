"""Platt and temperature scaling, ECE and Brier, the Keras layer and the reliability plot."""

import keras
import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from models import calibration as cal


def overconfident(n: int, seed: int):
    """Labels drawn from true probabilities q, and raw scores that push q away from 0.5
    and up (log-odds x3 + 1): what an overfitted, class-weighted network gives."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.05, 0.95, n)
    y = (rng.uniform(size=n) < q).astype(int)
    logit = 3 * np.log(q / (1 - q)) + 1
    p1 = 1 / (1 + np.exp(-logit))
    return y, np.c_[1 - p1, p1]


def test_platt_scaling_recovers_the_distortion_and_keeps_the_ranking():
    y, raw = overconfident(4000, 0)
    fitted = cal.fit(y, raw, positive_index=1)
    assert fitted.method == cal.PLATT
    assert fitted.scale == pytest.approx(1 / 3, abs=0.05)
    assert fitted.bias[1] == pytest.approx(-1 / 3, abs=0.1) and fitted.bias[0] == 0
    y_test, raw_test = overconfident(4000, 1)
    after = fitted.apply(raw_test)
    assert np.allclose(after.sum(axis=1), 1)
    assert roc_auc_score(y_test, after[:, 1]) == pytest.approx(
        roc_auc_score(y_test, raw_test[:, 1])
    )
    assert cal.ece(y_test, after, 1) < cal.ece(y_test, raw_test, 1) / 3
    assert cal.brier(y_test, after, 1) < cal.brier(y_test, raw_test, 1)


def test_a_separable_eval_split_gives_a_finite_platt_fit():
    y = np.array([0] * 16 + [1] * 16)
    p1 = np.r_[np.linspace(0.01, 0.4, 16), np.linspace(0.6, 0.99, 16)]  # perfectly separated
    fitted = cal.fit(y, np.c_[1 - p1, p1], 1)
    after = fitted.apply(np.c_[1 - p1, p1])[:, 1]
    # Platt's targets: 17/18 and 1/18; the fit neither saturates nor hits its bounds.
    assert 0.05 < fitted.scale < 20 and abs(fitted.bias[1]) < 10
    assert after.max() < 0.9999 and after.min() > 0.0001
    # With a free intercept, the fitted probabilities sum to the targets' sum (16 each).
    assert after.sum() == pytest.approx(16 * 17 / 18 + 16 * 1 / 18, abs=1e-3)
    assert all(isinstance(v, float) for v in (fitted.scale, *fitted.bias))


def test_temperature_scaling_for_several_classes():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 1.5, (3000, 3))
    true = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=p) for p in true])
    raw = np.exp(2 * logits) / np.exp(2 * logits).sum(axis=1, keepdims=True)  # T = 1/2
    fitted = cal.fit(y, raw, positive_index=None)
    assert fitted.method == cal.TEMPERATURE and fitted.bias == (0.0, 0.0, 0.0)
    assert fitted.describe()["temperature"] == pytest.approx(2.0, rel=0.1)


def test_one_class_or_no_examples_leave_the_probabilities_alone():
    raw = np.array([[0.3, 0.7], [0.6, 0.4]])
    for ids in ([1, 1], []):
        fitted = cal.fit(np.array(ids), raw[: len(ids)], 1)
        assert fitted == cal.Calibration.identity(2)
    assert np.allclose(cal.Calibration.identity(2).apply(raw), raw)


def test_ece_and_brier_by_hand():
    y = np.array([0, 1, 1, 0])
    p1 = np.array([0.15, 0.15, 0.85, 0.85])  # two bins, each half right
    probs = np.c_[1 - p1, p1]
    assert cal.ece(y, probs, 1) == pytest.approx(0.35)
    assert cal.brier(y, probs, 1) == pytest.approx(brier_score_loss(y, p1))
    bins = cal.reliability(y, probs, 1)
    assert [b["examples"] for b in bins] == [0, 2, 0, 0, 0, 0, 0, 0, 2, 0]
    assert bins[1]["observed"] == 0.5 and bins[1]["predicted"] == pytest.approx(0.15)
    # Multi-class: the top label's confidence against whether it was right.
    multi = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]])
    assert cal.ece(np.array([0, 2]), multi, None) == pytest.approx((0.4 + 0.7) / 2)
    assert cal.brier(np.array([0, 2]), multi, None) == pytest.approx(
        (0.16 + 0.09 + 0.01 + 0.04 + 0.49 + 0.81) / 2
    )


def test_the_keras_layer_computes_what_apply_does_and_survives_a_save(tmp_path):
    fitted = cal.Calibration(cal.PLATT, 0.4, (0.0, -0.7))
    inputs = keras.Input((2,))
    network = keras.Model(inputs, keras.layers.Softmax()(inputs))
    model = cal.calibrated_network(network, fitted)
    x = np.array([[2.0, -1.0], [0.1, 0.3], [-3.0, 3.0]], dtype=np.float32)
    raw = np.asarray(network(x))
    expected = fitted.apply(raw)
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=1e-5, atol=1e-6)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(np.asarray(loaded(x)), expected, rtol=1e-5, atol=1e-6)
    assert loaded.get_layer("calibration").scale == pytest.approx(0.4)


def test_reliability_diagram_is_a_png(tmp_path):
    y, raw = overconfident(300, 3)
    after = cal.fit(y, raw, 1).apply(raw)
    path = tmp_path / "reliability.png"
    cal.plot_reliability(y, raw, after, 1, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = cal.report(y, raw, after, 1)
    assert report["ece_after"] < report["ece_before"] and len(report["reliability"]) == cal.BINS
