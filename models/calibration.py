"""Probability calibration fitted on the eval split, and how calibrated probabilities are.

A softmax network trained with class weights and early stopping gives scores that rank
well but are not probabilities. The fix is the standard post-hoc one, fitted on held-out
(eval) predictions and applied inside the exported model:

- binary: Platt scaling on the log-odds, ``p = sigmoid(a * log(p1 / p0) + b)``;
- multi-class: temperature scaling, ``p = softmax(log(p) / T)``.

Both are ``softmax(scale * log(p) + bias)`` with a bias on the positive column only (Platt)
or none (temperature), so one Keras layer, ``Calibrate``, serves both. ``scale`` is kept
positive: calibration never reorders the examples, so ROC AUC does not change.

Figures: expected calibration error (ECE, 10 equal-width bins, the positive class's
probability for a binary model, the top label's otherwise) and the Brier score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
import numpy as np

PLATT, TEMPERATURE = "platt", "temperature"
BINS = 10
_EPS = 1e-7
_MAX_LOG_SCALE = 3.0  # scale within [e^-3, e^3] (0.05 to 20)
_MAX_BIAS = 10.0


@dataclass(frozen=True)
class Calibration:
    """``softmax(scale * log(p) + bias)``; ``bias`` has one entry per class."""

    method: str
    scale: float
    bias: tuple[float, ...]

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated probabilities [N, classes] for raw ones (numpy, float64)."""
        logits = self.scale * np.log(np.clip(probabilities, _EPS, 1.0)) + np.asarray(self.bias)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def describe(self) -> dict:
        out = asdict(self)
        out["bias"] = list(self.bias)
        if self.method == TEMPERATURE:
            out["temperature"] = 1.0 / self.scale
        return out

    @classmethod
    def identity(cls, classes: int) -> Calibration:
        return cls(TEMPERATURE, 1.0, (0.0,) * classes)


def fit(
    label_ids: np.ndarray, probabilities: np.ndarray, positive_index: int | None
) -> Calibration:
    """Fits Platt scaling (binary, ``positive_index`` set; with Platt's smoothed targets) or
    a temperature by minimizing the negative log-likelihood of the eval split's labels.

    Args:
        label_ids: true label ids of the eval examples.
        probabilities: the network's raw probabilities for them, [N, classes].
        positive_index: the positive column of a binary model, or None (multi-class).
    """
    from scipy.optimize import minimize

    label_ids = np.asarray(label_ids, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=float)
    classes = probabilities.shape[1]
    if len(label_ids) == 0 or len(np.unique(label_ids)) < 2:
        return Calibration.identity(classes)  # nothing to fit on
    log_p = np.log(np.clip(probabilities, _EPS, 1.0))
    binary = positive_index is not None
    targets = np.eye(classes)[label_ids]
    if positive_index is not None:
        # Platt's own guard against a small, separable calibration set: targets
        # (N+ + 1) / (N+ + 2) and 1 / (N- + 2) instead of 1 and 0, so that the fit stays
        # finite and does not promise certainty a few dozen examples cannot show.
        positive = label_ids == positive_index
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        t = np.where(positive, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
        targets = np.zeros((len(label_ids), classes))
        targets[:, positive_index] = t
        targets[:, 1 - positive_index] = 1 - t

    def bias(b: float) -> np.ndarray:
        out = np.zeros(classes)
        if binary:
            out[positive_index] = b
        return out

    def nll(params: np.ndarray) -> float:
        logits = np.exp(params[0]) * log_p + bias(params[1] if binary else 0.0)
        logits -= logits.max(axis=1, keepdims=True)
        log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return float(-np.mean(np.sum(targets * log_softmax, axis=1)))

    start = np.zeros(2 if binary else 1)
    bounds = [(-_MAX_LOG_SCALE, _MAX_LOG_SCALE)] + ([(-_MAX_BIAS, _MAX_BIAS)] if binary else [])
    result = minimize(nll, start, method="L-BFGS-B", bounds=bounds)
    params = result.x if nll(result.x) <= nll(start) else start
    method = PLATT if binary else TEMPERATURE
    b = float(params[-1]) if binary else 0.0
    return Calibration(method, float(np.exp(params[0])), tuple(float(v) for v in bias(b)))


@keras.saving.register_keras_serializable(package="dicomflow")
class Calibrate(keras.layers.Layer):
    """The calibration inside the exported network: probabilities in, probabilities out."""

    def __init__(self, scale: float, bias: list[float], **kwargs):
        super().__init__(dtype="float32", **{k: v for k, v in kwargs.items() if k != "dtype"})
        self.scale = float(scale)
        self.bias = [float(b) for b in bias]

    def call(self, probabilities):
        ops = keras.ops
        p = ops.clip(ops.cast(probabilities, "float32"), _EPS, 1.0)
        return ops.softmax(self.scale * ops.log(p) + ops.convert_to_tensor(self.bias), axis=-1)

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": self.scale, "bias": self.bias}


def calibrated_network(network: keras.Model, calibration: Calibration) -> keras.Model:
    """The network with ``Calibrate`` on its output, as one functional model (its layers
    stay reachable by name, so Grad-CAM finds the same convolution)."""
    outputs = Calibrate(calibration.scale, list(calibration.bias), name="calibration")(
        network.output
    )
    return keras.Model(network.input, outputs, name=network.name)


def _confidence(
    label_ids: np.ndarray, probabilities: np.ndarray, positive_index: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted probability, outcome 0/1) per example: the positive class's for a binary
    model, the top label's (and whether it was right) otherwise."""
    label_ids = np.asarray(label_ids)
    probabilities = np.asarray(probabilities, dtype=float)
    if positive_index is not None:
        return probabilities[:, positive_index], (label_ids == positive_index).astype(float)
    top = probabilities.argmax(axis=1)
    return probabilities.max(axis=1), (top == label_ids).astype(float)


def reliability(
    label_ids: np.ndarray, probabilities: np.ndarray, positive_index: int | None, bins: int = BINS
) -> list[dict]:
    """Per equal-width bin: examples, mean predicted probability, observed frequency."""
    confidence, outcome = _confidence(label_ids, probabilities, positive_index)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    out = []
    for k in range(bins):
        chosen = which == k
        n = int(chosen.sum())
        out.append(
            {
                "low": k / bins,
                "high": (k + 1) / bins,
                "examples": n,
                "predicted": float(confidence[chosen].mean()) if n else None,
                "observed": float(outcome[chosen].mean()) if n else None,
            }
        )
    return out


def ece(
    label_ids: np.ndarray, probabilities: np.ndarray, positive_index: int | None, bins: int = BINS
) -> float:
    """Expected calibration error: the examples-weighted mean |observed - predicted| per bin."""
    total = len(label_ids)
    if not total:
        return float("nan")
    rows = reliability(label_ids, probabilities, positive_index, bins)
    return float(
        sum(r["examples"] * abs(r["observed"] - r["predicted"]) for r in rows if r["examples"])
        / total
    )


def brier(label_ids: np.ndarray, probabilities: np.ndarray, positive_index: int | None) -> float:
    """Brier score: mean squared error of the probabilities against the one-hot outcome
    (for a binary model, of the positive class's probability, as scikit-learn defines it)."""
    from sklearn.metrics import brier_score_loss

    label_ids = np.asarray(label_ids)
    probabilities = np.asarray(probabilities, dtype=float)
    if positive_index is not None:
        truth = (label_ids == positive_index).astype(int)
        return float(brier_score_loss(truth, probabilities[:, positive_index], pos_label=1))
    onehot = np.eye(probabilities.shape[1])[label_ids]
    return float(np.mean(np.sum((probabilities - onehot) ** 2, axis=1)))


def report(
    label_ids: np.ndarray,
    raw: np.ndarray,
    calibrated: np.ndarray,
    positive_index: int | None,
) -> dict:
    """ECE and Brier before and after calibration, and the reliability bins after."""
    return {
        "ece_before": ece(label_ids, raw, positive_index),
        "ece_after": ece(label_ids, calibrated, positive_index),
        "brier_before": brier(label_ids, raw, positive_index),
        "brier_after": brier(label_ids, calibrated, positive_index),
        "reliability": reliability(label_ids, calibrated, positive_index),
    }


def plot_reliability(
    label_ids: np.ndarray,
    raw: np.ndarray,
    calibrated: np.ndarray,
    positive_index: int | None,
    path: str,
    split: str = "test",
) -> None:
    """The reliability diagram (PNG): observed frequency against predicted probability per
    bin, before and after calibration, with the diagonal a calibrated model lies on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hist) = plt.subplots(
        2, 1, figsize=(5, 6), dpi=100, gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfectly calibrated")
    for name, probabilities, style in (("raw", raw, "--"), ("calibrated", calibrated, "-")):
        rows = [r for r in reliability(label_ids, probabilities, positive_index) if r["examples"]]
        error = ece(label_ids, probabilities, positive_index)
        ax.plot(
            [r["predicted"] for r in rows],
            [r["observed"] for r in rows],
            style,
            marker="o",
            label=f"{name} (ECE {error:.3f})",
        )
        confidence, _ = _confidence(label_ids, probabilities, positive_index)
        hist.hist(confidence, bins=BINS, range=(0, 1), histtype="step", label=name)
    what = "positive-class probability" if positive_index is not None else "top-label confidence"
    ax.set_title(f"Reliability, {split} split ({len(label_ids)} examples)")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left")
    hist.set_xlabel(what)
    hist.set_ylabel("examples")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
