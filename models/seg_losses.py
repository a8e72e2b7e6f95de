"""The segmentation loss and training metric, serializable with the model (checkpoints are
saved and resumed as ``.keras`` files)."""

from __future__ import annotations

import keras
from keras import ops

_EPSILON = 1e-6


@keras.saving.register_keras_serializable(package="dicomflow")
class SegmentationLoss(keras.losses.Loss):
    """Soft Dice over the foreground classes plus pixel cross-entropy, per image.

    ``y_true``: one-hot label maps [N, H, W, K]; ``y_pred``: softmax [N, H, W, K]. Soft Dice
    (1 - 2|A∩B| / (|A| + |B|), on probabilities) does not care how rare the foreground is;
    the cross-entropy keeps gradients well behaved early on. ``focal``: the cross-entropy
    of each pixel is weighted by (1 - p_true)^gamma (Lin et al., 2017), so the many easy
    background pixels count for little.
    """

    def __init__(self, focal: bool = False, gamma: float = 2.0, name: str = "dice_ce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.focal = focal
        self.gamma = gamma

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.clip(ops.cast(y_pred, "float32"), _EPSILON, 1.0 - _EPSILON)
        p_true = ops.sum(y_true * y_pred, axis=-1)  # [N, H, W]
        ce = -ops.log(p_true)
        if self.focal:
            ce = ce * ops.power(1.0 - p_true, self.gamma)
        ce = ops.mean(ce, axis=(1, 2))
        foreground_true, foreground_pred = y_true[..., 1:], y_pred[..., 1:]
        intersection = ops.sum(foreground_true * foreground_pred, axis=(1, 2))
        total = ops.sum(foreground_true, axis=(1, 2)) + ops.sum(foreground_pred, axis=(1, 2))
        dice = (2.0 * intersection + _EPSILON) / (total + _EPSILON)  # [N, K - 1]
        return ce + 1.0 - ops.mean(dice, axis=-1)

    def get_config(self):
        return {**super().get_config(), "focal": self.focal, "gamma": self.gamma}


@keras.saving.register_keras_serializable(package="dicomflow")
class DiceScore(keras.metrics.Metric):
    """Dice of the argmax prediction over all pixels seen, averaged over the foreground
    classes present in truth or prediction (what early stopping watches on eval)."""

    def __init__(self, classes: int, name: str = "dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.classes = classes
        self.intersection = self.add_weight(
            shape=(classes - 1,), initializer="zeros", name="intersection"
        )
        self.total = self.add_weight(shape=(classes - 1,), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        predicted = ops.one_hot(ops.argmax(y_pred, axis=-1), self.classes)[..., 1:]
        truth = ops.cast(y_true, "float32")[..., 1:]
        self.intersection.assign_add(ops.sum(truth * predicted, axis=(0, 1, 2)))
        self.total.assign_add(ops.sum(truth + predicted, axis=(0, 1, 2)))

    def result(self):
        present = ops.cast(self.total > 0, "float32")
        dice = 2.0 * self.intersection / ops.maximum(self.total, 1.0)
        return ops.sum(dice * present) / ops.maximum(ops.sum(present), 1.0)

    def reset_state(self):
        self.intersection.assign(ops.zeros_like(self.intersection))
        self.total.assign(ops.zeros_like(self.total))

    def get_config(self):
        return {**super().get_config(), "classes": self.classes}
