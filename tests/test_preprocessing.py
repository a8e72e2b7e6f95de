"""The preprocessing graph written from train-split statistics, with expected numbers."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from models import features as f
from models.transform_writer import write_transform
from transforms.tfrecord import make_example, parse_example, quantize
from transforms.transform_graph import TrainStatisticsFn, image_moments

IDS = {f.SOP_INSTANCE_UID: "2.25.1", f.PATIENT_ID: "PATX", f.MODALITY: "CT"}


def image(values: list[float]) -> np.ndarray:
    return np.array(values, np.float32).reshape(2, 2, 1)


class Train:
    """One train example as ingest's statistics see it."""

    def __init__(self, record: bytes):
        parsed = parse_example(record)
        self.label = parsed[f.LABEL][0].decode()
        self.examples = (record,)
        self.pixel_moments = image_moments(parsed[f.IMAGE])


def analyze(records: list[bytes], out: str) -> tft.TFTransformOutput:
    """What ingest does over its train split: the statistics, then the graph from them."""
    fn = TrainStatisticsFn()
    acc = fn.create_accumulator()
    for record in records:
        acc = fn.add_input(acc, Train(record))
    stats = fn.extract_output(acc)
    write_transform(out, stats.pixel_mean, stats.pixel_std, stats.labels, size=2, channels=1)
    return tft.TFTransformOutput(out)


def transform(output: tft.TFTransformOutput, records: list[bytes]) -> dict:
    raw = tf.io.parse_example(tf.constant(records), f.raw_feature_spec())
    return {k: v.numpy() for k, v in output.transform_raw_features(raw).items()}


def test_statistics_come_from_the_analyzed_split_and_apply_to_any_example(tmp_path):
    train = [
        make_example(image([0, 0, 1, 1]), IDS, "1", 0),
        make_example(image([0, 1, 0, 1]), IDS, "0", 0),
        make_example(image([1, 1, 1, 1]), IDS, "1", 0),
    ]
    output = analyze(train, str(tmp_path))
    assert output.vocabulary_by_name(f.LABEL_VOCABULARY) == [b"1", b"0"]  # by frequency
    unseen = make_example(image([0.5, 0.5, 0.5, 0.5]), IDS, "", 0)  # unlabeled, not analyzed
    other = make_example(image([0, 0, 0, 0]), IDS, "2", 0)  # a label train never saw
    out = transform(output, [*train, unseen, other])
    mean, std = 8 / 12, np.sqrt(8 / 12 - (8 / 12) ** 2)
    expected_first = (np.array([0, 0, 1, 1]) - mean) / std
    np.testing.assert_allclose(out[f.IMAGE_NORMALIZED][0], expected_first, atol=1e-6)
    half = (round(0.5 * 255) / 255 - mean) / std
    np.testing.assert_allclose(out[f.IMAGE_NORMALIZED][3], [half] * 4, atol=1e-6)
    assert out[f.IMAGE_NORMALIZED].dtype == np.float32
    assert out[f.LABEL_ID].tolist() == [0, 1, 0, -1, -1]


def test_a_split_of_identical_pixels_is_only_centred(tmp_path):
    """tft.scale_to_z_score's rule for a variance of 0: no division, only the mean goes."""
    output = analyze([make_example(image([0.2] * 4), IDS, "1", 0)], str(tmp_path))
    out = transform(output, [make_example(image([0.2, 0.2, 0.6, 1]), IDS, "1", 0)])
    np.testing.assert_allclose(out[f.IMAGE_NORMALIZED][0], [0, 0, 0.4, 0.8], atol=1e-6)


def test_the_graph_holds_its_vocabulary_and_tf_transform_layout(tmp_path):
    """The vocabulary is the SavedModel's own asset (the temporary file it was written from
    is gone), and the folder is laid out as tft_beam.WriteTransformFn lays it out."""
    out = tmp_path / "transform"
    write_transform(str(out), 0.5, 0.25, ["b", "a"], size=2, channels=1)
    assert (out / "transform_fn" / "assets" / "label").read_bytes() == b"b\na\n"
    assert (out / "transformed_metadata" / "asset_map").read_text() == '{"label": "label"}'
    output = tft.TFTransformOutput(str(out))
    assert output.transformed_feature_spec() == {
        f.IMAGE_NORMALIZED: tf.io.FixedLenFeature([4], tf.float32),
        f.LABEL_ID: tf.io.FixedLenFeature([], tf.int64),
    }
    domain = {feature.name: feature for feature in output.transformed_metadata.schema.feature}
    assert (domain[f.LABEL_ID].int_domain.min, domain[f.LABEL_ID].int_domain.max) == (-1, 1)
    moved = tmp_path / "moved"
    out.rename(moved)  # nothing points back at where it was written
    ids = transform(tft.TFTransformOutput(str(moved)), [make_example(image([0] * 4), IDS, "a", 0)])
    assert ids[f.LABEL_ID].tolist() == [1]


def test_examples_are_deterministic_and_quantized():
    a = make_example(image([0, 0.2, 0.5, 1]), IDS, "1", 3)
    assert a == make_example(image([0, 0.2, 0.5, 1]), IDS, "1", 3)
    parsed = tf.io.parse_single_example(a, f.raw_feature_spec())
    pixels = tf.io.decode_raw(parsed[f.IMAGE], tf.uint8).numpy().tolist()
    assert pixels == [0, 51, 128, 255]
    assert int(parsed[f.FRAME]) == 3 and parsed[f.LABEL].numpy() == b"1"
    assert quantize(np.array([-1.0, 2.0])).tolist() == [0, 255]


def test_schema_has_no_defaults():
    """tf.Transform refuses defaults; every example must carry every feature."""
    from tensorflow_transform.tf_metadata import schema_utils

    schema_utils.schema_from_feature_spec(f.raw_feature_spec())
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.parse_single_example(tf.train.Example().SerializeToString(), f.raw_feature_spec())
