"""The hand-written Example encoder against TensorFlow's own serializer."""

import gzip
import io

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf

from models import features as f
from transforms.tfrecord import (
    ExampleError,
    GzipTFRecordSink,
    _varint,
    encode_example,
    frame_record,
    iter_records,
    make_example,
    parse_example,
    quantize,
)

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


def test_parse_example_reads_ours_and_tensorflows_alike():
    pixels = np.random.default_rng(0).uniform(0, 1, (6, 4, 3)).astype(np.float32)
    ours = make_example(pixels, IDS, "1", 300)
    theirs = reference(pixels, IDS, "1", 300)
    theirs.features.feature["score"].float_list.value.extend([0.5, 0.25])
    for record in (ours, theirs.SerializeToString()):
        parsed = parse_example(record)
        assert parsed[f.IMAGE] == [quantize(pixels).tobytes()]
        assert parsed[f.IMAGE_HEIGHT] == [6] and parsed[f.FRAME] == [300]
        assert parsed[f.SOP_INSTANCE_UID] == [b"2.25.1"] and parsed[f.LABEL] == [b"1"]
    assert parse_example(theirs.SerializeToString())["score"] == [0.5, 0.25]
    assert encode_example(quantize(pixels).tobytes(), (6, 4, 3), IDS, "1", 300) == ours


@pytest.mark.parametrize("junk", [b"\x0a\xff", b"\x0b\x01", b"\x0a\x02\x08\x01"])
def test_parse_example_refuses_what_is_not_an_example(junk):
    with pytest.raises(ExampleError):
        parse_example(junk)


RECORDS = [b"", b"one", bytes(range(256)) * 100]


def tensorflows_file(tmp_path) -> bytes:
    """RECORDS as TensorFlow's own writer frames them."""
    path = str(tmp_path / "part.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for record in RECORDS:
            writer.write(record)
    return (tmp_path / "part.tfrecord").read_bytes()


def test_iter_records_reads_tensorflows_framing_and_notices_damage(tmp_path):
    data = tensorflows_file(tmp_path)
    assert list(iter_records(io.BytesIO(data))) == RECORDS
    with pytest.raises(ExampleError, match="ends inside"):
        list(iter_records(io.BytesIO(data[:-3])))
    flipped = bytearray(data)
    flipped[-10] ^= 1
    with pytest.raises(ExampleError, match="checksum"):
        list(iter_records(io.BytesIO(bytes(flipped))))


def test_frame_record_is_tensorflows_framing(tmp_path):
    assert b"".join(frame_record(r) for r in RECORDS) == tensorflows_file(tmp_path)


@pytest.mark.parametrize("num_shards", [0, 3])
def test_gzip_sink_files_read_back_in_tensorflow(tmp_path, num_shards):
    records = [bytes([i % 251]) * (i * 37) for i in range(200)]
    prefix = str(tmp_path / "out" / "part")
    with beam.Pipeline() as p:
        _ = (
            p
            | beam.Create(records)
            | beam.io.Write(GzipTFRecordSink(prefix, ".tfrecord.gz", num_shards))
        )
    files = sorted((tmp_path / "out").glob("part-*.tfrecord.gz"))
    if num_shards:
        assert [p.name for p in files] == [f"part-0000{i}-of-00003.tfrecord.gz" for i in range(3)]
    read = [r.numpy() for r in tf.data.TFRecordDataset([str(p) for p in files], "GZIP")]
    assert sorted(read) == sorted(records)
    plain = []  # plain gzip too
    for path in files:
        data = path.read_bytes()
        assert data[:3] == b"\x1f\x8b\x08"  # gzip, deflate
        plain += iter_records(io.BytesIO(gzip.decompress(data)))
    assert sorted(plain) == sorted(records)
    assert sum(p.stat().st_size for p in files) < sum(map(len, records)) / 10  # compressed
