"""preprocessing_fn through tf.Transform's record-batch path, with expected numbers."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from models import features as f
from models.preprocessing import make_preprocessing_fn
from transforms.tfrecord import make_example, quantize

IDS = {f.SOP_INSTANCE_UID: "2.25.1", f.PATIENT_ID: "PATX", f.MODALITY: "CT"}


def image(values: list[float]) -> np.ndarray:
    return np.array(values, np.float32).reshape(2, 2, 1)


def analyze(records: list[bytes], out: str) -> tft.TFTransformOutput:
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.public import tfxio

    schema = schema_utils.schema_from_feature_spec(f.raw_feature_spec())
    source = tfxio.TFExampleBeamRecord(
        physical_format="inmem", telemetry_descriptors=["dicomflow"], schema=schema
    )
    with beam.Pipeline() as p, tft_beam.Context(temp_dir=out + "/tmp"):
        batches = p | beam.Create(records) | source.BeamSource()
        transform_fn = (batches, source.TensorAdapterConfig()) | tft_beam.AnalyzeDataset(
            make_preprocessing_fn(size=2, channels=1)
        )
        _ = transform_fn | tft_beam.WriteTransformFn(out)
    return tft.TFTransformOutput(out)


def test_statistics_come_from_the_analyzed_split_and_apply_to_any_example(tmp_path):
    train = [
        make_example(image([0, 0, 1, 1]), IDS, "1", 0),
        make_example(image([0, 1, 0, 1]), IDS, "0", 0),
        make_example(image([1, 1, 1, 1]), IDS, "1", 0),
    ]
    output = analyze(train, str(tmp_path))
    assert output.vocabulary_by_name(f.LABEL_VOCABULARY) == [b"1", b"0"]  # by frequency
    unseen = make_example(image([0.5, 0.5, 0.5, 0.5]), IDS, "", 0)  # unlabeled, not analyzed
    raw = tf.io.parse_example(tf.constant([*train, unseen]), f.raw_feature_spec())
    out = output.transform_raw_features(raw)
    mean, std = 8 / 12, np.sqrt(8 / 12 - (8 / 12) ** 2)
    expected_first = (np.array([0, 0, 1, 1]) - mean) / std
    np.testing.assert_allclose(out[f.IMAGE_NORMALIZED].numpy()[0], expected_first, atol=1e-4)
    half = (round(0.5 * 255) / 255 - mean) / std
    np.testing.assert_allclose(out[f.IMAGE_NORMALIZED].numpy()[3], [half] * 4, atol=1e-4)
    assert out[f.LABEL_ID].numpy().tolist() == [0, 1, 0, -1]


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
