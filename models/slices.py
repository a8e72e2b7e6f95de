"""Test-split metrics per slice: modality, manufacturer, body part, label source.

The first question anyone validating an imaging model asks is whether it works on *their*
scanners and body parts. Each slice gets its counts, ROC AUC with its DeLong interval and
the figures at the model's operating point. A slice with fewer than ``MIN_EXAMPLES``
examples or fewer than ``MIN_PER_CLASS`` of either class is flagged ``small``: its figures
are printed, but with the flag, not as if they were reliable (an AUC over 3 positives
moves by a third with one image).

The slice values come from ingest's index (``models.inputs.split_slices``): pseudonymous by
construction, because the index holds only what survived de-identification; a value that
was removed (or an older index without the column) is the slice ``unknown``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from models import features as f
from models import operating_point as op
from models.uncertainty import auc_ci

COLUMNS = (f.MODALITY, f.MANUFACTURER, f.BODY_PART_EXAMINED, f.LABEL_SOURCE)
MIN_EXAMPLES = 30
MIN_PER_CLASS = 10
UNKNOWN = "unknown"


def slice_metrics(
    y_true: np.ndarray,
    score: np.ndarray,
    threshold: float | None,
    columns: Mapping[str, Sequence[str | None]],
) -> dict[str, list[dict]]:
    """Per column, one row per value (most examples first).

    Args:
        y_true: 1 for a positive, 0 for a negative, per test example.
        score: the positive class's calibrated probability, per example.
        threshold: the operating point (None: no threshold figures).
        columns: column name → one value per example (None → ``unknown``).
    """
    y_true = np.asarray(y_true).astype(bool)
    score = np.asarray(score, dtype=float)
    out: dict[str, list[dict]] = {}
    for name, values in columns.items():
        keys = np.array([UNKNOWN if v in (None, "") else str(v) for v in values], dtype=object)
        if len(keys) != len(y_true):
            raise ValueError(f"slice column {name} has {len(keys)} values for {len(y_true)}")
        rows = []
        for value in sorted(set(keys), key=lambda v: (-int((keys == v).sum()), v)):
            chosen = keys == value
            rows.append(_row(value, y_true[chosen], score[chosen], threshold))
        out[name] = rows
    return out


def _row(value: str, y: np.ndarray, score: np.ndarray, threshold: float | None) -> dict:
    positives, negatives = int(y.sum()), int((~y).sum())
    reasons = []
    if len(y) < MIN_EXAMPLES:
        reasons.append(f"fewer than {MIN_EXAMPLES} examples")
    if min(positives, negatives) < MIN_PER_CLASS:
        reasons.append(f"fewer than {MIN_PER_CLASS} of a class")
    auc = auc_ci(y, score)
    row = {
        "value": value,
        "examples": len(y),
        "positives": positives,
        "negatives": negatives,
        "roc_auc": auc["value"],
        "roc_auc_low": auc["low"],
        "roc_auc_high": auc["high"],
        "small": bool(reasons),
        "why_small": "; ".join(reasons) or None,
    }
    if threshold is not None:
        rates = op.threshold_metrics(y, score, threshold)
        row.update({k: rates[k] for k in ("accuracy", "recall", "specificity")})
        if not positives:
            row["recall"] = math.nan  # undefined, not 0: there was nothing to find
        if not negatives:
            row["specificity"] = math.nan
    return row
