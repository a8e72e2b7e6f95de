"""Segmentation's parts: the U-Net, its loss and metric, joint augmentation, and the
evaluation (Dice and IoU with patient-bootstrap intervals, lesions, FROC) on masks whose
answers are known by hand."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import seg_evaluation as se
from models.inputs import Augment
from models.seg_losses import DiceScore, SegmentationLoss
from models.tasks import get_task
from models.train_config import TrainConfig
from models.unet import build_unet


def _disc(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return ((y - cy) ** 2 + (x - cx) ** 2 <= r * r).astype(np.uint8)


def _probabilities(predicted: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    """One-hot class ids [N, H, W] → [N, H, W, 2] probabilities with the given confidence."""
    p = np.where(predicted[..., None] == np.arange(2), confidence, 1 - confidence)
    return p.astype(np.float32)


def test_unet_maps_every_pixel_to_class_probabilities():
    model = build_unet((32, 32, 1), 3, depth=2, width=4)
    out = model(np.zeros((2, 32, 32, 1), np.float32))
    assert out.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(np.asarray(out).sum(axis=-1), 1.0, rtol=1e-5)
    assert model.get_layer("probabilities").dtype_policy.compute_dtype == "float32"
    with pytest.raises(ValueError, match="divisible by 8"):
        build_unet((36, 36, 1), 2, depth=3, width=4)
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_unet((32, 32, 1), 1)


def test_dice_of_hand_made_masks():
    truth = np.stack([_disc(16, 8, 8, 4), np.zeros((16, 16), np.uint8)])
    predicted = truth.copy()
    predicted[0, 8:, :] = 0  # half the disc
    a, b = truth[0].sum(), predicted[0].sum()
    ov = se.overlap(truth, predicted, 2)
    # Image 2 has neither truth nor prediction: it does not count in the mean.
    assert ov.dice()[0] == pytest.approx(2 * b / (a + b))
    assert ov.iou()[0] == pytest.approx(b / a)


def test_lesions_found_and_false_positives():
    truth = np.zeros((20, 20), bool)
    truth[2:5, 2:5] = truth[12:15, 12:15] = True  # two lesions
    predicted = np.zeros((20, 20), bool)
    predicted[3:4, 3:4] = True  # touches the first
    predicted[16:19, 2:5] = True  # a false alarm
    predicted[0, 19] = True  # another, one pixel
    counts = se.lesion_counts(truth, predicted)
    assert (counts.lesions, counts.found, counts.false_positives) == (2, 1, 2)


def test_evaluation_with_intervals_over_patients_and_froc():
    rng = np.random.default_rng(0)
    truth, predicted, patients = [], [], []
    for i in range(12):
        t = _disc(24, 12, 12, 5)
        p = np.roll(t, rng.integers(0, 3), axis=1)  # shifted by 0-2 pixels
        truth.append(t)
        predicted.append(p)
        patients.append(f"p{i // 3}")  # 4 patients, 3 images each
    truth_a, predicted_a = np.stack(truth), np.stack(predicted)
    metrics = se.evaluate(
        truth_a, _probabilities(predicted_a), patients, ["0", "1"], replicates=200
    )
    expected = se.overlap(truth_a, predicted_a, 2).dice()[0]
    assert metrics["dice"] == pytest.approx(expected)
    assert metrics["dice_ci_low"] <= metrics["dice"] <= metrics["dice_ci_high"]
    assert metrics["patients"] == 4 and metrics["examples"] == 12
    assert metrics["lesion_sensitivity"] == 1.0 and metrics["false_positives_per_image"] == 0
    # Above the prediction's confidence nothing is predicted: the FROC curve ends at 0.
    last = metrics["froc"][-1]
    assert last["threshold"] > 0.9 and last["sensitivity"] == 0.0
    assert "over patients" in metrics["ci"]["method"]
    record = get_task("segmentation").read_metrics(metrics)
    assert (record.value, record.low) == (metrics["dice"], metrics["dice_ci_low"])
    assert "Dice" in se.summary_line(metrics)


def test_patient_bootstrap_keeps_a_patients_images_together():
    patients = ["a", "a", "b", "c", "c", "c"]
    for rows in se.patient_bootstrap(patients, replicates=50, seed=1):
        drawn = [patients[i] for i in rows]
        for name in set(drawn):
            assert drawn.count(name) % patients.count(name) == 0


def test_the_loss_is_lowest_for_the_truth_and_the_metric_is_its_dice():
    truth = _disc(16, 8, 8, 5)[None]
    onehot = tf.one_hot(truth, 2)
    loss = SegmentationLoss()
    exact = float(loss(onehot, onehot * 0.98 + 0.01))
    wrong = float(loss(onehot, tf.reverse(onehot, axis=[-1]) * 0.98 + 0.01))
    assert exact < 0.1 < wrong
    focal = SegmentationLoss(focal=True)
    assert float(focal(onehot, onehot * 0.98 + 0.01)) < exact  # easy pixels count less
    half = truth.copy()
    half[0, 8:] = 0
    metric = DiceScore(2)
    metric.update_state(onehot, tf.one_hot(half, 2))
    a, b = truth.sum(), half.sum()
    assert float(metric.result()) == pytest.approx(2 * b / (a + b))
    restored = keras.losses.deserialize(keras.losses.serialize(focal))
    assert restored.focal and restored.gamma == 2.0


def test_augmentation_moves_image_and_mask_together():
    mask = _disc(32, 10, 20, 5)[None, ..., None].astype(np.float32)
    image = mask * 3.0  # the image is the mask: any misalignment shows
    augment = Augment.parse("flip,rotate=30,crop=0.8")
    for seed in range(4):
        out_image, out_mask = augment.joint(
            tf.constant(image), tf.constant(mask), tf.constant([seed, 7])
        )
        assert set(np.unique(out_mask.numpy())) <= {0.0, 1.0}  # nearest: no new class
        inside = out_image.numpy()[out_mask.numpy() > 0]
        outside = out_image.numpy()[out_mask.numpy() == 0]
        assert inside.mean() > 2.0 and outside.mean() < 0.5
    # Without a mask, the same draws as before masks existed.
    np.testing.assert_array_equal(
        augment(tf.constant(image), tf.constant([1, 7])).numpy(),
        augment.joint(tf.constant(image), None, tf.constant([1, 7]))[0].numpy(),
    )


def test_segmentation_refuses_what_it_does_not_take():
    with pytest.raises(ValueError, match="U-Net"):
        TrainConfig(data="d", model_dir="m", task="segmentation", network="resnet50").validate()
    with pytest.raises(ValueError, match="unet-depth"):
        TrainConfig(data="d", model_dir="m", task="segmentation", unet_depth=9).validate()
    config = TrainConfig(data="d", model_dir="m", task="segmentation")
    config.validate()
    classifier = TrainConfig(data="d", model_dir="m")
    # Segmentation's arguments at their defaults leave a classifier's checkpoint key as it was.
    assert classifier.key() == TrainConfig(data="d", model_dir="m", unet_width=16).key()
    assert classifier.key() != TrainConfig(data="d", model_dir="m", unet_width=8).key()
    assert not math.isnan(get_task("segmentation").minimum(config))
