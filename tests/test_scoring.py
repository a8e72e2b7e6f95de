"""Scoring's building blocks, called directly: model inputs, TFRecord shards, score rows."""

import gzip
import struct

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from models import features as f
from transforms import scoring as sc
from transforms.convert import Image, Instance
from transforms.deadletter import DEAD_LETTER
from transforms.tfrecord import _masked_crc, encode_example

SHAPE = (4, 4, 1)
IDS = {
    f.SOP_INSTANCE_UID: "2.25.1",
    f.SERIES_INSTANCE_UID: "2.25.2",
    f.STUDY_INSTANCE_UID: "2.25.3",
    f.PATIENT_ID: "PATX",
    f.MODALITY: "XA",
}


def image(frame: int, shape=SHAPE) -> Image:
    return Image(bytes([frame]) * int(np.prod(shape)), shape, frame, 8, 8, 0.5, 1.0, "MONO")


def framed(records: list[bytes]) -> bytes:
    """TFRecord framing, as TensorFlow writes it."""
    out = b""
    for r in records:
        length = struct.pack("<Q", len(r))
        out += length + struct.pack("<I", _masked_crc(length)) + r
        out += struct.pack("<I", _masked_crc(r))
    return out


def test_an_instance_becomes_one_input_with_all_its_frames():
    fn = sc.FromInstanceFn(SHAPE)
    instance = Instance("gs://b/Doe/x.dcm", None, IDS, "1.2", (image(0), image(5)), None)
    ((key, blob),) = fn.process(instance)
    assert key.frames == (0, 5) and key.sop_instance_uid == "2.25.1" and key.modality == "XA"
    assert blob == image(0).data + image(5).data
    other = Instance("s", "m", IDS, "1.2", (image(0, (8, 8, 1)),), None)
    (letter,) = fn.process(other)
    assert letter.tag == DEAD_LETTER
    assert (letter.value.stage, letter.value.error_type) == ("score", "geometry_mismatch")
    assert "8x8x1" in letter.value.message and "4x4x1" in letter.value.message


def test_a_shard_gives_examples_and_dead_letters_for_what_it_cannot(tmp_path):
    good = encode_example(bytes(16), SHAPE, IDS, "", 3)
    wrong = encode_example(bytes(64), (8, 8, 1), IDS, "", 0)
    path = tmp_path / "part-00000-of-00001.tfrecord.gz"
    data = framed([good, b"\x0a\x02\x08\x01", wrong, good])
    path.write_bytes(gzip.compress(data[:-5]))  # the last record is cut short
    fn = sc.ReadExamplesFn(SHAPE)
    fn.setup()
    out = list(fn.process((str(path), path.stat().st_size)))
    key, blob = out[0]
    assert key.frames == (3,) and key.ids[0] == "2.25.1" and blob == bytes(16)
    assert (key.source, key.member) == (str(path), "record 0")
    letters = [(o.value.member, o.value.stage, o.value.error_type) for o in out[1:]]
    assert letters == [
        ("record 1", "parse", "invalid_example"),
        ("record 2", "score", "geometry_mismatch"),
        ("record 3", "read", "corrupt_tfrecord"),
    ]


def result(key: sc.ScoreKey, probabilities) -> tuple:
    return key, PredictionResult(b"", np.asarray(probabilities, np.float32))


def test_score_rows_are_arrow_tables_with_counts():
    fn = sc.ScoreRowsFn(["0", "1"], "1", "3", "r1", rows_per_table=3)
    fn.setup()
    fn.start_bundle()
    multi = sc.ScoreKey("s", None, tuple(IDS.values()), (0, 7))
    single = sc.ScoreKey("s", None, ("2.25.9", "", "", "PATY", ""), (0,))
    first = list(fn.process(result(multi, [[0.9, 0.1], [0.2, 0.8]]), {("2.25.1", 7): "x.png"}))
    labels = [("by_predicted_label", "0"), ("by_predicted_label", "1")]
    assert [o.value for o in first] == [
        ["seen", "scored", ("by_modality", "XA"), "images", "images", *labels]
    ]
    second = list(fn.process(result(single, [[0.4, 0.6]])))
    assert second[0].value[2] == ("by_modality", "none")
    table = second[1]  # three rows: a full table
    assert isinstance(table, pa.Table) and table.schema == f.SCORES_SCHEMA
    rows = table.to_pylist()
    assert [r[f.FRAME] for r in rows] == [0, 7, 0]
    assert [round(r[f.SCORE], 6) for r in rows] == [0.1, 0.8, 0.6]
    assert [r[f.PREDICTED_LABEL] for r in rows] == ["0", "1", "1"]
    assert [r[f.EXPLANATION] for r in rows] == [None, "x.png", None]
    assert {r[f.MODEL_VERSION] for r in rows} == {"3"} and rows[0][f.SCORED_AT].tzinfo
    assert list(fn.finish_bundle()) == []  # nothing left


def test_a_binary_models_threshold_decides_the_predicted_label():
    probabilities = np.array([[0.9, 0.1], [0.75, 0.25], [0.2, 0.8]])
    score, predicted = sc.score_columns(probabilities, 1, threshold=0.25)
    assert score.tolist() == pytest.approx([0.1, 0.25, 0.8])
    assert predicted.tolist() == [0, 1, 1]  # at or above the threshold: positive
    assert sc.score_columns(probabilities, 1)[1].tolist() == [0, 0, 1]  # no threshold: argmax
    assert sc.score_columns(probabilities[:, ::-1], 0, 0.25)[1].tolist() == [1, 0, 0]
    fn = sc.ScoreRowsFn(["0", "1"], "1", "1", "r", rows_per_table=10, threshold=0.25)
    fn.setup()
    fn.start_bundle()
    key = sc.ScoreKey("s", None, tuple(IDS.values()), (0,))
    (counts,) = fn.process(result(key, [[0.7, 0.3]]))
    assert ("by_predicted_label", "1") in counts.value
    (windowed,) = fn.finish_bundle()
    assert windowed.value.to_pylist()[0][f.PREDICTED_LABEL] == "1"


def test_multi_class_score_is_the_predicted_labels_probability():
    fn = sc.ScoreRowsFn(["a", "b", "c"], None, "1", "r", rows_per_table=10)
    fn.setup()
    fn.start_bundle()
    key = sc.ScoreKey("s", None, tuple(IDS.values()), (0,))
    list(fn.process(result(key, [[0.2, 0.5, 0.3]])))
    (windowed,) = fn.finish_bundle()
    (row,) = windowed.value.to_pylist()
    assert row[f.PREDICTED_LABEL] == "b" and row[f.SCORE] == pytest.approx(0.5)
    assert row[f.SCORES] == pytest.approx([0.2, 0.5, 0.3])


def test_candidates_cut_each_image_out_for_grad_cam():
    key = sc.ScoreKey("s", None, tuple(IDS.values()), (0, 7))
    blob = bytes(16) + bytes([1]) * 16
    found = sc.candidates((key, PredictionResult(blob, np.array([[0.9, 0.1], [0.2, 0.8]]))), 1, 16)
    assert [(c.score, c.frame, c.class_index, c.image) for c in found] == [
        (pytest.approx(0.1), 0, 1, bytes(16)),
        (pytest.approx(0.8), 7, 1, bytes([1]) * 16),
    ]


@pytest.mark.parametrize("name", ["part.tfrecord.gz", "part.tfrecord"])
def test_a_shard_cut_inside_its_compressed_stream_is_one_read_row(tmp_path, name):
    good = encode_example(bytes(16), SHAPE, IDS, "", 0)
    data = framed([good] * 50)
    path = tmp_path / name
    body = gzip.compress(data) if name.endswith(".gz") else data
    path.write_bytes(body[: len(body) // 2 + 7])  # the file itself ends inside a record
    fn = sc.ReadExamplesFn(SHAPE)
    fn.setup()
    out = list(fn.process((str(path), path.stat().st_size)))
    read = [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
    (letter,) = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
    assert len(read) < 50 and letter.member == f"record {len(read)}"  # stands for the rest
    assert (letter.stage, letter.error_type) == ("read", "corrupt_tfrecord")


def test_read_examples_reads_each_shard_once_in_a_pipeline(tmp_path):
    """Overlapping patterns name a shard twice: its examples come once; bad records are
    dead letters with their record number."""
    good = encode_example(bytes(16), SHAPE, IDS, "", 3)
    first = tmp_path / "train" / "part-00000-of-00002.tfrecord.gz"
    second = tmp_path / "eval" / "part-00001-of-00002.tfrecord.gz"
    first.parent.mkdir()
    second.parent.mkdir()
    first.write_bytes(gzip.compress(framed([good, good])))
    second.write_bytes(gzip.compress(framed([b"\x0a\x02\x08\x01", good])))
    patterns = [f"{tmp_path}/*/part-*.tfrecord.gz", str(first)]
    with TestPipeline() as p:
        outputs = p | sc.ReadExamples(patterns, SHAPE)
        assert_that(
            outputs.inputs
            | "Keys" >> beam.Map(lambda kv: (kv[0].source, kv[0].member, kv[0].frames, kv[1])),
            equal_to(
                [
                    (str(first), "record 0", (3,), bytes(16)),
                    (str(first), "record 1", (3,), bytes(16)),
                    (str(second), "record 1", (3,), bytes(16)),
                ]
            ),
            label="CheckInputs",
        )
        assert_that(
            outputs.dead_letters | "Where" >> beam.Map(lambda e: (e.source, e.member, e.stage)),
            equal_to([(str(second), "record 0", "parse")]),
            label="CheckErrors",
        )
