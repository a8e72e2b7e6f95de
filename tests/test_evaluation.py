"""Test-split metrics against hand-worked examples, and the curve plots."""

import math

import numpy as np
import pytest

from models import evaluation


def test_roc_auc_counts_ranked_pairs_and_ties_half():
    y = np.array([0, 0, 1, 1])
    assert evaluation.roc_auc(y, [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)  # 3 of 4 pairs
    assert evaluation.roc_auc(y, [0.1, 0.5, 0.5, 0.8]) == pytest.approx(0.875)  # one tie
    assert evaluation.roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert math.isnan(evaluation.roc_auc([1, 1], [0.2, 0.3]))


def test_roc_curve_runs_from_origin_to_one_one():
    fpr, tpr = evaluation.roc_curve([0, 1, 1, 0], [0.2, 0.9, 0.6, 0.7])
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])


def test_average_precision_is_the_step_area():
    # Ranked: +, -, +, -  → precision 1 at recall 0.5, 2/3 at recall 1.
    y, score = [1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]
    assert evaluation.average_precision(y, score) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    recall, precision = evaluation.pr_curve(y, score)
    np.testing.assert_allclose(recall, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(precision, [1, 1, 0.5, 2 / 3, 0.5])


def test_binary_report_is_the_positive_class():
    ids = np.array([0, 0, 0, 1, 1])  # labels ["0", "1"]
    p1 = np.array([0.1, 0.6, 0.2, 0.7, 0.4])
    m = evaluation.evaluate(ids, np.c_[1 - p1, p1], ["0", "1"], "1")
    assert m["confusion_matrix"] == [[2, 1], [1, 1]]
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert (m["precision"], m["recall"], m["f1"]) == (0.5, 0.5, 0.5)
    assert m["roc_auc"] == pytest.approx(5 / 6)  # 5 of 6 positive-negative pairs ranked right
    assert "per_class" not in m


def test_multiclass_report_has_per_class_and_macro_figures():
    labels = ["a", "b", "c"]
    ids = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]])
    m = evaluation.evaluate(ids, probs, labels, None)
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert m["per_class"]["c"]["recall"] == 0.5 and m["per_class"]["a"]["precision"] == 0.5
    assert m["roc_auc"] == pytest.approx(np.mean([c["roc_auc"] for c in m["per_class"].values()]))
    assert m["per_class"]["b"]["support"] == 1


def test_plots_are_pngs(tmp_path):
    ids = np.array([0, 1, 1, 0, 1])
    p1 = np.array([0.2, 0.9, 0.6, 0.4, 0.3])
    roc, pr = tmp_path / "roc.png", tmp_path / "pr.png"
    evaluation.plot_curves(ids, np.c_[1 - p1, p1], ["0", "1"], "1", str(roc), str(pr))
    for path in (roc, pr):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
