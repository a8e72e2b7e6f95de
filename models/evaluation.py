"""Test-split metrics (plain numpy) and the ROC / precision-recall curve plots."""

from __future__ import annotations

import math

import numpy as np


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score threshold, from (0, 0) to (1, 1).

    Args:
        y_true: 1 for a positive, 0 for a negative.
        score: higher means more likely positive.
    """
    tps, fps, _ = _counts(y_true, score)
    positives, negatives = tps[-1], fps[-1]
    tpr = tps / positives if positives else np.full_like(tps, np.nan, dtype=float)
    fpr = fps / negatives if negatives else np.full_like(fps, np.nan, dtype=float)
    return np.r_[0.0, fpr], np.r_[0.0, tpr]


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN when one class is absent."""
    fpr, tpr = roc_curve(y_true, score)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return math.nan
    return float(np.trapezoid(tpr, fpr))


def pr_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision at every distinct threshold, starting at recall 0, precision 1."""
    tps, fps, _ = _counts(y_true, score)
    positives = tps[-1]
    precision = tps / np.maximum(tps + fps, 1)
    recall = tps / positives if positives else np.full_like(tps, np.nan, dtype=float)
    return np.r_[0.0, recall], np.r_[1.0, precision]


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the precision-recall curve as a step function (sum of ΔR x P)."""
    recall, precision = pr_curve(y_true, score)
    if np.isnan(recall).any():
        return math.nan
    return float(np.sum(np.diff(recall) * precision[1:]))


def _counts(y_true, score):
    y_true = np.asarray(y_true).astype(bool)
    score = np.asarray(score, dtype=float)
    order = np.argsort(-score, kind="mergesort")
    y, s = y_true[order], score[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each threshold
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    return tps, fps, s[last]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def evaluate(
    label_ids: np.ndarray,
    probabilities: np.ndarray,
    labels: list[str],
    positive_label: str | None,
    threshold: float | None = None,
) -> dict:
    """Accuracy, precision, recall, F1, ROC AUC, PR AUC and the confusion matrix.

    A binary task (``positive_label`` set) reports the positive class's figures at
    ``threshold`` on its probability (the operating point), or, without one, for the class
    with the higher probability; also its specificity. A multi-class one reports
    per-class one-vs-rest figures and their macro averages. ``roc_auc`` is the figure the
    promotion gate compares.

    Args:
        label_ids: true label ids (index into ``labels``), one per example.
        probabilities: [examples, classes], columns in ``labels`` order.
        labels: the label vocabulary.
        positive_label: the label whose probability is the score, or None (multi-class).
    """
    label_ids = np.asarray(label_ids, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=float)
    predicted = probabilities.argmax(axis=1)
    if positive_label is not None and threshold is not None:
        k = labels.index(positive_label)
        predicted = np.where(probabilities[:, k] >= threshold, k, 1 - k)
    matrix = confusion_matrix(label_ids, predicted, len(labels))
    per_class = {}
    for k, label in enumerate(labels):
        tp = int(matrix[k, k])
        fp = int(matrix[:, k].sum()) - tp
        fn = int(matrix[k, :].sum()) - tp
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        truth = label_ids == k
        per_class[label] = {
            "support": int(truth.sum()),
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "roc_auc": roc_auc(truth, probabilities[:, k]),
            "pr_auc": average_precision(truth, probabilities[:, k]),
        }
    metrics: dict = {
        "examples": len(label_ids),
        "accuracy": _ratio(int(np.trace(matrix)), len(label_ids)),
        "labels": list(labels),
        "positive_label": positive_label,
        "confusion_matrix": matrix.tolist(),
    }
    if positive_label is not None:
        chosen = per_class[positive_label]
        metrics.update({k: chosen[k] for k in ("precision", "recall", "f1", "roc_auc", "pr_auc")})
        k = labels.index(positive_label)
        negatives = int(matrix[1 - k, :].sum())
        metrics["specificity"] = _ratio(int(matrix[1 - k, 1 - k]), negatives)
        metrics["threshold"] = threshold
    else:
        for name in ("precision", "recall", "f1", "roc_auc", "pr_auc"):
            values = [c[name] for c in per_class.values()]
            metrics[name] = math.nan if any(map(math.isnan, values)) else float(np.mean(values))
        metrics["per_class"] = per_class
    return metrics


def plot_curves(
    label_ids: np.ndarray,
    probabilities: np.ndarray,
    labels: list[str],
    positive_label: str | None,
    roc_path: str,
    pr_path: str,
) -> None:
    """ROC and precision-recall curves as PNG files (the positive class, or one per class)."""
    import matplotlib

    matplotlib.use("Agg")  # no display, in a container or a test
    import matplotlib.pyplot as plt

    label_ids = np.asarray(label_ids)
    examples = len(label_ids)
    shown = [positive_label] if positive_label is not None else list(labels)
    for path, title, curve, area, axes in (
        (roc_path, "ROC", roc_curve, roc_auc, ("false positive rate", "true positive rate")),
        (pr_path, "Precision-recall", pr_curve, average_precision, ("recall", "precision")),
    ):
        fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
        ax.set_title(f"{title}, test split ({examples} examples)")
        for label in shown:
            k = labels.index(label)
            truth = label_ids == k
            x, y = curve(truth, probabilities[:, k])
            ax.plot(x, y, label=f"{label} (area {area(truth, probabilities[:, k]):.3f})")
        if curve is roc_curve:
            ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
        ax.set_xlabel(axes[0])
        ax.set_ylabel(axes[1])
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
