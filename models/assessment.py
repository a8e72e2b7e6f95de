"""Everything the trainer reports about a trained network, from its eval and test predictions.

Order matters and is the point of this module: calibration is fitted on eval, the
operating point is chosen on the *calibrated* eval scores (the scores the exported model
serves), and only then is the test split looked at: figures at the threshold with
confidence intervals, calibration before and after, and the slices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from models import calibration as cal
from models import evaluation, slices, uncertainty
from models import operating_point as op

FALLBACK_THRESHOLD = 0.5


@dataclass
class Assessment:
    calibration: cal.Calibration
    threshold: float | None  # None for a multi-class model
    operating_point: str | None  # the rule as given, e.g. "youden"
    metrics: dict
    test_ids: np.ndarray
    test_raw: np.ndarray
    test_calibrated: np.ndarray


def assess(
    eval_ids: np.ndarray,
    eval_raw: np.ndarray,
    test_ids: np.ndarray,
    test_raw: np.ndarray,
    labels: Sequence[str],
    positive_label: str | None,
    point: op.OperatingPoint,
    slice_columns: Mapping[str, Sequence[str | None]] | None = None,
    seed: int = 0,
) -> Assessment:
    """Calibrate on eval, choose the threshold on calibrated eval, evaluate on test.

    Args:
        eval_ids, eval_raw: eval label ids and the network's raw probabilities.
        test_ids, test_raw: the same for test.
        labels: the vocabulary (probability column order).
        positive_label: the binary model's positive label, or None.
        point: the operating-point rule.
        slice_columns: per slice column, one value per test example (binary only).
        seed: for the bootstrap.
    """
    labels = list(labels)
    k = labels.index(positive_label) if positive_label is not None else None
    calibration = cal.fit(eval_ids, eval_raw, k)
    eval_cal, test_cal = calibration.apply(eval_raw), calibration.apply(test_raw)
    threshold, rule, eval_point = None, None, None
    if k is not None:
        y_eval = np.asarray(eval_ids) == k
        rule = str(point)
        try:
            threshold = op.choose_threshold(y_eval, eval_cal[:, k], point)
        except ValueError:  # one class in eval: no rule can be applied
            threshold, rule = FALLBACK_THRESHOLD, f"{point} (not applicable: eval has one class)"
        eval_point = op.threshold_metrics(y_eval, eval_cal[:, k], threshold)
    metrics = evaluation.evaluate(test_ids, test_cal, labels, positive_label, threshold)
    metrics["calibration"] = {
        **calibration.describe(),
        "fitted_on": "eval",
        "eval": _drop_bins(cal.report(eval_ids, eval_raw, eval_cal, k)),
        "test": cal.report(test_ids, test_raw, test_cal, k),
    }
    if k is not None and threshold is not None:
        y_test = np.asarray(test_ids) == k
        score = test_cal[:, k]
        metrics["operating_point"] = {"rule": rule, "threshold": threshold, "eval": eval_point}
        metrics["ci"] = {
            "level": uncertainty.LEVEL,
            "roc_auc": uncertainty.auc_ci(y_test, score),
            **uncertainty.bootstrap_threshold_ci(y_test, score, threshold, seed=seed),
        }
        metrics["accuracy_at_argmax"] = float(np.mean(test_cal.argmax(axis=1) == test_ids))
        if slice_columns:
            metrics["slices"] = slices.slice_metrics(y_test, score, threshold, slice_columns)
    return Assessment(calibration, threshold, rule, metrics, test_ids, test_raw, test_cal)


def _drop_bins(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "reliability"}


def summary_line(metrics: dict) -> str:
    """The trainer's one-line account of the test split."""
    ci = metrics.get("ci", {}).get("roc_auc")
    line = f"test: ROC AUC {metrics['roc_auc']:.4f}"
    if ci and ci["low"] is not None:
        line += f" (95% CI {ci['low']:.3f}-{ci['high']:.3f})"
    line += f", PR AUC {metrics['pr_auc']:.4f}"
    if metrics.get("threshold") is not None:
        line += (
            f"; at threshold {metrics['threshold']:.4f} ({metrics['operating_point']['rule']}):"
            f" accuracy {metrics['accuracy']:.4f}, sensitivity {metrics['recall']:.4f}, "
            f"specificity {metrics['specificity']:.4f}"
        )
    else:
        line += f", accuracy {metrics['accuracy']:.4f}"
    cal = metrics["calibration"]["test"]
    ece = (cal["ece_before"], cal["ece_after"])
    return line + f"; ECE {ece[0]:.3f} → {ece[1]:.3f} on {metrics['examples']} examples"
