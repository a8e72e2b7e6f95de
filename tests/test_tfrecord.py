"""The hand-written Example encoder against TensorFlow's own serializer."""

import numpy as np
import pytest
import tensorflow as tf

from models import features as f
from transforms.tfrecord import _varint, make_example, quantize

IDS = {
    f.SOP_INSTANCE_UID: "2.25.1",
    f.SERIES_INSTANCE_UID: "2.25.2",
    f.STUDY_INSTANCE_UID: "2.25.3",
    f.PATIENT_ID: "PATABC",
    f.MODALITY: "CT",
}


def reference(pixels: np.ndarray, ids: dict, label: str, frame: int) -> tf.train.Example:
    """What tf.train.Example writes for the same features."""
    h, w, c = pixels.shape

    def b(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    feature = {
        f.IMAGE: b(quantize(pixels).tobytes()),
        f.IMAGE_HEIGHT: i(h),
        f.IMAGE_WIDTH: i(w),
        f.IMAGE_CHANNELS: i(c),
        f.LABEL: b(label.encode()),
        f.FRAME: i(frame),
        **{k: b(ids.get(k, "").encode()) for k in IDS},
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


@pytest.mark.parametrize(
    ("shape", "label", "frame", "ids"),
    [
        ((224, 224, 1), "1", 0, IDS),
        ((7, 5, 3), "", 130, IDS),  # multi-byte varints for lengths and the frame
        ((300, 300, 1), "lesion-é", 2**40, {f.PATIENT_ID: "P"}),  # unicode, missing ids
        ((1, 1, 1), "0", -1, {}),  # a negative int64 takes ten bytes
    ],
)
def test_bytes_equal_tensorflow(shape, label, frame, ids):
    rng = np.random.default_rng(sum(shape))
    pixels = rng.uniform(0, 1, shape).astype(np.float32)
    ours = make_example(pixels, ids, label, frame)
    assert tf.train.Example.FromString(ours) == reference(pixels, ids, label, frame)
    assert ours == make_example(pixels.copy(), dict(reversed(ids.items())), label, frame)
    keys = [k.encode() for k in sorted(f.raw_feature_spec())]
    assert sorted(keys, key=ours.index) == sorted(keys)  # entries in byte order of keys
    parsed = tf.io.parse_single_example(ours, f.raw_feature_spec())
    assert parsed[f.IMAGE].numpy() == quantize(pixels).tobytes()
    assert parsed[f.FRAME].numpy() == frame and parsed[f.LABEL].numpy() == label.encode()


def test_varint():
    assert _varint(0) == b"\x00" and _varint(127) == b"\x7f" and _varint(300) == b"\xac\x02"
    assert _varint(-1) == b"\xff" * 9 + b"\x01"
