"""Segmentation evaluation: overlap per class with patient-bootstrap intervals, lesions found
and false alarms per image, and the FROC curve.

Overlap (Dice, IoU) is computed per image and class and averaged over the images where the
class is in the truth or the prediction (an image where both are empty says nothing about
overlap; its false alarms are counted by the lesion figures instead). The promotion metric
``dice`` is that mean over the foreground classes.

Intervals resample *patients*, not images: the images of one patient are alike, and a
resample of images would make the interval too narrow. Percentile bootstrap, seeded, the
same replicates for every figure.

Lesions are the connected components (8-connected) of a class in the truth; a true lesion
is found when a predicted component of the same class overlaps it, and a predicted
component that overlaps no true lesion is a false positive. The FROC curve sweeps the
probability threshold that makes the predicted components: sensitivity against false
positives per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.uncertainty import LEVEL

BOOTSTRAP_REPLICATES = 1000
FROC_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
DEFAULT_THRESHOLD = 0.5  # a pixel is foreground when its class wins the argmax


@dataclass(frozen=True)
class Overlap:
    """Per image and foreground class: intersection, truth and prediction pixel counts."""

    intersection: np.ndarray  # [images, classes - 1]
    truth: np.ndarray
    predicted: np.ndarray

    def dice(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Mean Dice per class over the images (``rows``) where the class appears."""
        return self._mean(2 * self.intersection, self.truth + self.predicted, rows)

    def iou(self, rows: np.ndarray | None = None) -> np.ndarray:
        union = self.truth + self.predicted - self.intersection
        return self._mean(self.intersection, union, rows)

    def _mean(self, top: np.ndarray, bottom: np.ndarray, rows) -> np.ndarray:
        if rows is not None:
            top, bottom = top[rows], bottom[rows]
        present = bottom > 0
        ratio = np.divide(top, bottom, out=np.zeros(top.shape, float), where=present)
        counts = present.sum(axis=0)
        with np.errstate(invalid="ignore"):
            return np.where(counts > 0, ratio.sum(axis=0) / np.maximum(counts, 1), np.nan)


def overlap(truth: np.ndarray, predicted: np.ndarray, classes: int) -> Overlap:
    """``truth`` and ``predicted``: [images, H, W] class ids."""
    inter, t, p = [], [], []
    for c in range(1, classes):
        tc, pc = truth == c, predicted == c
        inter.append((tc & pc).sum(axis=(1, 2)))
        t.append(tc.sum(axis=(1, 2)))
        p.append(pc.sum(axis=(1, 2)))
    return Overlap(
        np.stack(inter, axis=1).astype(float),
        np.stack(t, axis=1).astype(float),
        np.stack(p, axis=1).astype(float),
    )


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a boolean image: (labels, count)."""
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    return labels, int(count)


@dataclass(frozen=True)
class LesionCounts:
    lesions: int  # true lesions
    found: int  # of them, overlapped by a predicted component
    false_positives: int  # predicted components overlapping no true lesion


def lesion_counts(truth: np.ndarray, predicted: np.ndarray) -> LesionCounts:
    """One image and class: boolean truth and prediction."""
    true_labels, lesions = components(truth)
    pred_labels, predictions = components(predicted)
    found = len(np.unique(true_labels[predicted & (true_labels > 0)]))
    hits = len(np.unique(pred_labels[truth & (pred_labels > 0)]))
    return LesionCounts(lesions, found, predictions - hits)


def lesion_table(
    truth: np.ndarray, probabilities: np.ndarray, thresholds: Sequence[float | None]
) -> np.ndarray:
    """[thresholds, images, 3]: lesions, found, false positives, over the foreground classes.

    A threshold None predicts by argmax; a number t predicts class c where its probability
    exceeds t.
    """
    classes = probabilities.shape[-1]
    argmax = probabilities.argmax(axis=-1)
    out = np.zeros((len(thresholds), len(truth), 3), int)
    for i, t in enumerate(thresholds):
        for n in range(len(truth)):
            for c in range(1, classes):
                predicted = argmax[n] == c if t is None else probabilities[n, ..., c] > t
                counts = lesion_counts(truth[n] == c, predicted)
                out[i, n] += (counts.lesions, counts.found, counts.false_positives)
    return out


def _rates(table: np.ndarray) -> tuple[float, float]:
    """(sensitivity, false positives per image) of a [images, 3] table."""
    lesions, found, fps = table.sum(axis=0)
    sensitivity = found / lesions if lesions else math.nan
    return float(sensitivity), float(fps / len(table)) if len(table) else math.nan


def patient_bootstrap(
    patients: Sequence[str], replicates: int = BOOTSTRAP_REPLICATES, seed: int = 0
) -> list[np.ndarray]:
    """Image-row indices of each replicate: patients drawn with replacement, all their images."""
    names = sorted(set(patients))
    rows_of: dict[str, list[int]] = {name: [] for name in names}
    for i, name in enumerate(patients):
        rows_of[name].append(i)
    groups = [np.asarray(rows_of[name]) for name in names]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(replicates):
        drawn = rng.integers(0, len(groups), len(groups))
        out.append(np.concatenate([groups[g] for g in drawn]))
    return out


def _interval(values: list[float], level: float = LEVEL) -> tuple[float | None, float | None]:
    finite = np.asarray([v for v in values if math.isfinite(v)])
    if not len(finite):
        return None, None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def evaluate(
    truth: np.ndarray,
    probabilities: np.ndarray,
    patients: Sequence[str],
    labels: Sequence[str],
    *,
    seed: int = 0,
    replicates: int = BOOTSTRAP_REPLICATES,
) -> dict:
    """``metrics.json`` of a segmentation model on one split.

    Args:
        truth: [images, H, W] class ids.
        probabilities: [images, H, W, classes] the network's softmax.
        patients: the patient pseudonym of each image (the bootstrap's unit).
        labels: class names, background first.
        seed, replicates: the bootstrap.

    Returns:
        ``dice``, ``dice_ci_low``, ``dice_ci_high``, ``iou`` (and its interval), per-class
        figures under ``classes``, ``lesion_sensitivity``, ``false_positives_per_image``
        (with intervals), the ``froc`` curve, and counts.
    """
    labels = list(labels)
    classes = probabilities.shape[-1]
    predicted = probabilities.argmax(axis=-1)
    ov = overlap(truth, predicted, classes)
    thresholds: list[float | None] = [None, *FROC_THRESHOLDS]
    table = lesion_table(truth, probabilities, thresholds)
    resamples = patient_bootstrap(patients, replicates, seed)

    def summary(
        rows: np.ndarray | None,
    ) -> tuple[float, float, np.ndarray, np.ndarray, float, float]:
        dice, iou = ov.dice(rows), ov.iou(rows)
        sens, fpi = _rates(table[0] if rows is None else table[0][rows])
        with np.errstate(invalid="ignore"):
            mean_dice = float(np.nanmean(dice)) if np.isfinite(dice).any() else math.nan
            mean_iou = float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan
        return mean_dice, mean_iou, dice, iou, sens, fpi

    dice, iou, per_dice, per_iou, sensitivity, fpi = summary(None)
    boot = [summary(rows) for rows in resamples]
    dice_ci = _interval([b[0] for b in boot])
    iou_ci = _interval([b[1] for b in boot])
    sens_ci = _interval([b[4] for b in boot])
    fpi_ci = _interval([b[5] for b in boot])
    per_class = {}
    for c in range(1, classes):
        per_class[labels[c]] = {
            "dice": _number(per_dice[c - 1]),
            "dice_ci": _interval([b[2][c - 1] for b in boot]),
            "iou": _number(per_iou[c - 1]),
            "iou_ci": _interval([b[3][c - 1] for b in boot]),
            "images_with_class": int(((ov.truth[:, c - 1] + ov.predicted[:, c - 1]) > 0).sum()),
        }
    froc = []
    for i, t in enumerate(FROC_THRESHOLDS, start=1):
        s, f = _rates(table[i])
        froc.append({"threshold": t, "sensitivity": _number(s), "false_positives_per_image": f})
    lesions, found, fps = (int(v) for v in table[0].sum(axis=(0)))
    return {
        "task": "segmentation",
        "examples": len(truth),
        "patients": len(set(patients)),
        "labels": labels,
        "dice": _number(dice),
        "dice_ci_low": dice_ci[0],
        "dice_ci_high": dice_ci[1],
        "iou": _number(iou),
        "iou_ci_low": iou_ci[0],
        "iou_ci_high": iou_ci[1],
        "classes": per_class,
        "lesions": lesions,
        "lesions_found": found,
        "false_positives": fps,
        "lesion_sensitivity": _number(sensitivity),
        "lesion_sensitivity_ci": sens_ci,
        "false_positives_per_image": _number(fpi),
        "false_positives_per_image_ci": fpi_ci,
        "froc": froc,
        "ci": {
            "level": LEVEL,
            "method": f"percentile bootstrap over patients, {len(resamples)} replicates",
            "dice": {"value": _number(dice), "low": dice_ci[0], "high": dice_ci[1]},
        },
    }


def summary_line(metrics: dict) -> str:
    """The trainer's one-line account of the test split."""

    def fmt(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    line = f"test: Dice {fmt(metrics['dice'])}"
    if metrics.get("dice_ci_low") is not None:
        line += f" (95% CI {fmt(metrics['dice_ci_low'])}-{fmt(metrics['dice_ci_high'])})"
    return line + (
        f", IoU {fmt(metrics['iou'])}; lesions found {metrics['lesions_found']}/"
        f"{metrics['lesions']} (sensitivity {fmt(metrics['lesion_sensitivity'])}), "
        f"{fmt(metrics['false_positives_per_image'])} false positives per image, on "
        f"{metrics['examples']} images of {metrics['patients']} patients"
    )


def plot_froc(metrics: dict, path: str) -> None:
    """The FROC curve (sensitivity against false positives per image) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in metrics["froc"] if p["sensitivity"] is not None]
    fig, ax = plt.subplots(figsize=(4.5, 3.5), dpi=100)
    ax.plot(
        [p["false_positives_per_image"] for p in points],
        [p["sensitivity"] for p in points],
        marker="o",
    )
    for p in points[:: max(1, len(points) // 5)]:
        ax.annotate(
            f"{p['threshold']:g}",
            (p["false_positives_per_image"], p["sensitivity"]),
            fontsize=7,
            textcoords="offset points",
            xytext=(3, 3),
        )
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("lesion sensitivity")
    ax.set_ylim(0, 1.02)
    ax.set_title("FROC (test)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
