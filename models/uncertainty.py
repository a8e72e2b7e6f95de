"""95 % confidence intervals: DeLong for ROC AUC, a stratified bootstrap for threshold metrics.

DeLong, DeLong & Clarke-Pearson (1988): the AUC is a two-sample U-statistic; its variance
comes from the structural components (each positive's share of negatives ranked below
it, and each negative's share of positives ranked above it). Computed with midranks
(Sun & Xu, 2014), O(n log n), no resampling, the same number every time. The interval is
the normal one, clipped to [0, 1]; a perfectly separated sample has zero variance and the
interval [1, 1]: that says the sample cannot tell, not that the model is perfect.

Threshold metrics (accuracy, precision, recall, specificity, F1) at a fixed threshold have
no such closed form across all five, so they come from a stratified bootstrap: positives
and negatives are resampled separately (each replicate keeps the sample's class counts),
with a seeded generator, percentile intervals.
"""

from __future__ import annotations

import math

import numpy as np

from models import operating_point as op

LEVEL = 0.95
BOOTSTRAP_REPLICATES = 2000


def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


def _midranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values, method="average")


def delong(y_true: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """(AUC, its DeLong variance); (NaN, NaN) when one class is absent."""
    y_true = np.asarray(y_true).astype(bool)
    score = np.asarray(score, dtype=float)
    pos, neg = score[y_true], score[~y_true]
    m, n = len(pos), len(neg)
    if not m or not n:
        return math.nan, math.nan
    all_ranks = _midranks(np.r_[pos, neg])
    pos_ranks, neg_ranks = _midranks(pos), _midranks(neg)
    v10 = (all_ranks[:m] - pos_ranks) / n  # per positive: share of negatives below (ties ½)
    v01 = 1.0 - (all_ranks[m:] - neg_ranks) / m  # per negative: share of positives above
    auc = float(v10.mean())
    s10 = float(np.var(v10, ddof=1)) if m > 1 else 0.0
    s01 = float(np.var(v01, ddof=1)) if n > 1 else 0.0
    return auc, s10 / m + s01 / n


def auc_ci(y_true: np.ndarray, score: np.ndarray, level: float = LEVEL) -> dict:
    """``{"value", "low", "high", "method"}`` for ROC AUC (DeLong)."""
    auc, variance = delong(y_true, score)
    if math.isnan(auc):
        return {"value": math.nan, "low": math.nan, "high": math.nan, "method": "delong"}
    half = _z(level) * math.sqrt(max(variance, 0.0))
    low, high = max(0.0, auc - half), min(1.0, auc + half)
    return {"value": auc, "low": low, "high": high, "method": "delong"}


def bootstrap_threshold_ci(
    y_true: np.ndarray,
    score: np.ndarray,
    threshold: float,
    *,
    replicates: int = BOOTSTRAP_REPLICATES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict[str, dict]:
    """Per threshold metric, ``{"value", "low", "high", "method"}`` (stratified bootstrap).

    Each replicate draws as many positives and negatives as the sample has, with
    replacement, from each class. Only the four counts matter, and the number of called
    positives among m positives drawn with replacement is Binomial(m, share called): so a
    replicate is two binomial draws, exactly the resampling's distribution, in constant
    memory whatever the size of the test split.
    """
    y_true = np.asarray(y_true).astype(bool)
    predicted = np.asarray(score, dtype=float) >= threshold
    value = op.rates(*op.counts(y_true, score, threshold))
    rng = np.random.default_rng(seed)
    pos_hits, neg_hits = predicted[y_true], predicted[~y_true]
    m, n = len(pos_hits), len(neg_hits)
    tp = rng.binomial(m, pos_hits.mean(), replicates) if m else np.zeros(replicates)
    fp = rng.binomial(n, neg_hits.mean(), replicates) if n else np.zeros(replicates)
    boot = op.rates(n - fp, fp, m - tp, tp)
    tail = (1 - level) / 2 * 100
    out = {}
    for name in op.THRESHOLD_METRICS:
        low, high = np.percentile(boot[name], [tail, 100 - tail])
        out[name] = {
            "value": float(value[name]),
            "low": float(low),
            "high": float(high),
            "method": f"stratified bootstrap, {replicates} replicates, seed {seed}",
        }
    return out
