"""The operating point: the score threshold a binary model is used at, chosen on eval.

A ranking (ROC AUC) is not a decision. The trainer picks the threshold on the eval split's
calibrated scores by a rule, stores it in ``model.json``, reports the test split's figures
at it, and scoring writes ``predicted_label`` with it. Rules:

- ``youden`` (default): the threshold that maximizes Youden's J = sensitivity + specificity - 1;
- ``sensitivity=0.95``: the highest threshold whose sensitivity on eval is at least 0.95
  (the best specificity under that constraint; screening);
- ``specificity=0.9``: the lowest threshold whose specificity on eval is at least 0.9
  (the best sensitivity under that constraint; confirmation).

A score at or above the threshold is predicted positive. The threshold is placed midway
between the chosen eval score and the next lower one, so test scores between two eval
scores are not decided by which side the eval example happened to fall.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

YOUDEN, SENSITIVITY, SPECIFICITY = "youden", "sensitivity", "specificity"


@dataclass(frozen=True)
class OperatingPoint:
    rule: str = YOUDEN
    target: float | None = None

    @classmethod
    def parse(cls, text: str) -> OperatingPoint:
        """``youden``, ``sensitivity=0.95`` or ``specificity=0.9``.

        Raises:
            ValueError: (one line) anything else, or a target outside (0, 1].
        """
        name, sep, value = text.strip().partition("=")
        if name == YOUDEN and not sep:
            return cls()
        if name in (SENSITIVITY, SPECIFICITY) and sep:
            try:
                target = float(value)
            except ValueError:
                target = float("nan")
            if 0 < target <= 1:
                return cls(name, target)
        raise ValueError(
            f"operating point {text!r}: use youden, sensitivity=T or specificity=T, 0 < T <= 1"
        )

    def __str__(self) -> str:
        return self.rule if self.target is None else f"{self.rule}={self.target:g}"


def choose_threshold(y_true: np.ndarray, score: np.ndarray, point: OperatingPoint) -> float:
    """The threshold on ``score`` that ``point``'s rule picks on these examples.

    Args:
        y_true: 1 for a positive, 0 for a negative (both present).
        score: the positive class's (calibrated) probability.

    Raises:
        ValueError: when one class is absent (no threshold is defined).
    """
    y_true = np.asarray(y_true).astype(bool)
    score = np.asarray(score, dtype=float)
    positives, negatives = int(y_true.sum()), int((~y_true).sum())
    if not positives or not negatives:
        raise ValueError("an operating point needs both classes in the eval split")
    thresholds = np.unique(score)[::-1]  # descending: each is "predict positive at >= t"
    tpr = np.array([(score[y_true] >= t).sum() for t in thresholds]) / positives
    fpr = np.array([(score[~y_true] >= t).sum() for t in thresholds]) / negatives
    target = 0.0 if point.target is None else point.target
    if point.rule == YOUDEN:
        k = int(np.argmax(tpr - fpr))  # the first (highest threshold) of any tie
    elif point.rule == SENSITIVITY:
        k = int(np.flatnonzero(tpr >= target - 1e-12)[0])
    else:
        meets = np.flatnonzero(1 - fpr >= target - 1e-12)
        k = int(meets[-1]) if len(meets) else 0
    if k + 1 < len(thresholds):
        return float((thresholds[k] + thresholds[k + 1]) / 2)
    return float(thresholds[k])


def counts(y_true: np.ndarray, score: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """(tn, fp, fn, tp) when ``score >= threshold`` is called positive."""
    y_true = np.asarray(y_true).astype(bool)
    predicted = np.asarray(score, dtype=float) >= threshold
    tp = int((predicted & y_true).sum())
    fp = int((predicted & ~y_true).sum())
    fn = int((~predicted & y_true).sum())
    return len(y_true) - tp - fp - fn, fp, fn, tp


def rates(tn, fp, fn, tp):
    """Accuracy, precision, recall (sensitivity), specificity and F1 from the four counts.

    Works elementwise on arrays (the bootstrap passes one count per replicate); an
    undefined ratio (nothing predicted positive, no positives) is 0.
    """
    tn, fp, fn, tp = (np.asarray(v, dtype=float) for v in (tn, fp, fn, tp))

    def ratio(a, b):
        return np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {
        "accuracy": ratio(tp + tn, tp + tn + fp + fn),
        "precision": precision,
        "recall": recall,
        "specificity": ratio(tn, tn + fp),
        "f1": ratio(2 * precision * recall, precision + recall),
    }


THRESHOLD_METRICS = ("accuracy", "precision", "recall", "specificity", "f1")


def threshold_metrics(y_true: np.ndarray, score: np.ndarray, threshold: float) -> dict:
    """The figures at ``threshold`` and the confusion matrix (rows true, columns predicted,
    negative first)."""
    tn, fp, fn, tp = counts(y_true, score, threshold)
    out: dict = {k: float(v) for k, v in rates(tn, fp, fn, tp).items()}
    out["confusion_matrix"] = [[tn, fp], [fn, tp]]
    return out
