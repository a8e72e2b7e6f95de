"""The training input: ingest TFRecords through the transform graph, augmentation, weights."""

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from models import features as f
from models import inputs
from models.layout import TRANSFORM_DIR


@pytest.fixture(scope="module")
def info(train_data):
    return inputs.read_info(str(train_data))


@pytest.fixture(scope="module")
def transform(info):
    return tft.TFTransformOutput(info.transform_dir).transform_features_layer()


def test_read_info_from_the_ingest_output(train_data, info):
    manifest = json.loads((train_data / "manifest.json").read_text())
    assert info.image_shape == (64, 64, 1)
    assert sorted(info.labels) == ["0", "1"]
    assert info.labels == tuple(manifest["tf_transform"]["labels"])
    by_split = {split: sum(c.values()) for split, c in info.counts.items()}
    assert by_split == manifest["counts"]["examples_by_split"]
    assert info.labelled("unlabeled") == 0 and info.labelled("test") > 20


def test_eval_batches_are_transformed_in_file_order(info, transform):
    ds = inputs.make_dataset(info, "eval", transform, 16)
    first = [(x.numpy(), y.numpy()) for x, y in ds]
    again = [(x.numpy(), y.numpy()) for x, y in ds]
    images = np.concatenate([x for x, _ in first])
    assert images.shape == (info.labelled("eval"), 64, 64, 1) and images.dtype == np.float32
    assert all((a[0] == b[0]).all() for a, b in zip(first, again, strict=True))
    onehot = np.concatenate([y for _, y in first])
    assert set(onehot.sum(axis=1)) == {1.0}
    # Standardized with the train split's statistics: near zero mean, unit spread.
    assert abs(images.mean()) < 0.5 and 0.5 < images.std() < 2.0


def test_unlabeled_examples_never_reach_training(info, transform):
    ds = inputs.make_dataset(info, "unlabeled", transform, 8)
    assert sum(int(tf.shape(x)[0]) for x, _ in ds) == 0


def test_train_batches_carry_class_weights(info, transform):
    weights = (0.25, 4.0)
    ds = inputs.make_dataset(
        info, "train", transform, 32, training=True, class_weights=weights, seed=1, cache=True
    )
    seen = 0
    for _, onehot, weight in ds:
        np.testing.assert_allclose(weight, np.take(weights, np.argmax(onehot, axis=1)))
        seen += len(weight)
    assert seen == info.labelled("train")


def test_class_weights_balance_the_train_counts():
    info = inputs.DataInfo("d", (8, 8, 1), ("0", "1", "2"), {"train": {"0": 30, "1": 10}})
    assert inputs.class_weights(info) == pytest.approx((40 / 90, 40 / 30, 1.0))


def test_augment_parses_and_prints():
    augment = inputs.Augment.parse("flip, rotate=10,crop=0.9,noise=0.05")
    assert augment == inputs.Augment(flip=True, rotate=10, crop=0.9, noise=0.05)
    assert inputs.Augment.parse(str(augment)) == augment
    assert not inputs.Augment.parse("none").active and str(inputs.Augment()) == "none"
    for bad in ("blur", "rotate", "crop=0", "rotate=200", "flip=1"):
        with pytest.raises(ValueError):
            inputs.Augment.parse(bad)


def test_flips_mirror_some_images_and_keep_the_rest():
    images = tf.random.stateless_normal([16, 9, 9, 1], seed=[1, 2])
    out = inputs.Augment(flip=True)(images, tf.constant([0, 1])).numpy()
    mirrored = [(o == i[:, ::-1]).all() for o, i in zip(out, images.numpy(), strict=True)]
    kept = [(o == i).all() for o, i in zip(out, images.numpy(), strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert any(mirrored) and any(kept)


def test_rotation_turns_about_the_centre():
    image = np.zeros((4, 33, 33, 1), np.float32)
    image[:, 16, 16] = 1.0  # the centre
    image[:, 16, 28] = 1.0  # a point to its right
    out = inputs.Augment(rotate=30)(tf.constant(image), tf.constant([3, 1])).numpy()
    np.testing.assert_allclose(out[:, 16, 16, 0], 1.0, atol=1e-5)
    assert (out[:, 16, 28, 0] < 0.9).all()  # moved off its place
    np.testing.assert_allclose(out.sum(axis=(1, 2, 3)), 2.0, atol=0.35)  # nothing lost


def test_crop_zooms_in_and_noise_has_its_spread():
    ramp = np.tile(np.linspace(-1, 1, 32, dtype=np.float32), (32, 1))[None, :, :, None]
    zoomed = inputs.Augment(crop=0.5)(tf.constant(np.repeat(ramp, 8, 0)), tf.constant([4, 1]))
    spans = zoomed.numpy()[:, 16, -1, 0] - zoomed.numpy()[:, 16, 0, 0]
    assert (spans < 2.0 - 1e-3).all() and (spans > 0.9).all()  # a part of the ramp, enlarged
    noisy = inputs.Augment(noise=0.1)(tf.zeros([4, 32, 32, 1]), tf.constant([5, 1]))
    assert 0.08 < float(tf.math.reduce_std(noisy)) < 0.12


def test_split_slices_follow_the_evaluation_order_and_join_the_index(info, transform):
    columns = inputs.split_slices(info, "test")
    n = info.labelled("test")
    assert set(columns) == {
        f.MODALITY, f.MANUFACTURER, f.BODY_PART_EXAMINED, f.LABEL_SOURCE
    }  # fmt: skip
    assert all(len(values) == n for values in columns.values())
    # Kept by de-identification: the vendors' names pass the content check.
    by_modality = {"CT": "SIEMENS", "CR": "AGFA", "DX": "FUJIFILM", "MR": "GE MEDICAL SYSTEMS"}
    by_modality |= {"US": "Philips", "XA": "TOSHIBA", "OT": "Carestream Health"}
    for modality, name in zip(columns[f.MODALITY], columns[f.MANUFACTURER], strict=True):
        assert name == by_modality[modality]
    assert set(columns[f.LABEL_SOURCE]) == {"sop_instance_uid"}  # labels.csv's key
    assert set(columns[f.MODALITY]) <= {"CT", "CR", "DX", "MR", "US", "XA", "OT"}
    expected_part = {"CT": "CHEST", "CR": "CHEST", "DX": "HAND", "MR": "HEAD", "XA": "HEART"}
    for modality, part in zip(columns[f.MODALITY], columns[f.BODY_PART_EXAMINED], strict=True):
        assert part == expected_part.get(modality, part)
    # The same order as the evaluation batches, example by example.
    batches = inputs.make_dataset(info, "test", transform, 16)
    ids = np.concatenate([label.numpy().argmax(axis=1) for _, label in batches])
    keys = inputs.split_keys(info, "test")
    assert [info.labels[i] for i in ids] == [label for *_, label in keys]
    assert [modality for _, _, modality, _ in keys] == columns[f.MODALITY]


def test_not_an_ingest_output(train_data, tmp_path):
    with pytest.raises(ValueError, match="not an ingest output"):
        inputs.check_data(str(tmp_path))
    partial = tmp_path / "partial"
    shutil.copytree(train_data / TRANSFORM_DIR, partial / TRANSFORM_DIR)
    shutil.copytree(train_data / "tfrecords" / "train", partial / "tfrecords" / "train")
    with pytest.raises(ValueError, match="no eval examples"):
        inputs.check_data(str(partial))
