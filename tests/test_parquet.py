"""Parquet tables from Beam: fixed schema, empty tables still readable, re-runs replace."""

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from conftest import read_table

from models import features as f
from transforms.parquet import WriteArrowTables, WriteParquet, delete_stale_shards

ROW = {f.SOURCE: "gs://b/x", f.MEMBER: None, f.STAGE: "read", f.ERROR_TYPE: "empty", f.MESSAGE: "m"}


def write(rows: list[dict], directory: str, num_shards: int = 0) -> None:
    with beam.Pipeline() as p:
        _ = p | beam.Create(rows) | WriteParquet(directory, f.ERRORS_SCHEMA, num_shards)


def test_rows_round_trip_with_the_schema(tmp_path):
    with TestPipeline() as p:
        rows = p | beam.Create([ROW, {**ROW, f.MEMBER: "a/b"}])
        shards = rows | WriteParquet(str(tmp_path), f.ERRORS_SCHEMA, num_shards=1)
        assert_that(shards, equal_to([["part-00000-of-00001.parquet"]]))
    table = pq.read_table(tmp_path)
    assert table.schema.equals(f.ERRORS_SCHEMA, check_metadata=False)
    assert sorted(read_table(str(tmp_path)), key=str) == sorted(
        [ROW, {**ROW, f.MEMBER: "a/b"}], key=str
    )


def test_an_empty_table_is_still_a_readable_table(tmp_path):
    write([], str(tmp_path))
    files = list(tmp_path.glob("part-*.parquet"))
    assert len(files) == 1
    table = pq.read_table(files[0])
    assert table.num_rows == 0
    assert table.schema.equals(f.ERRORS_SCHEMA, check_metadata=False)


def test_rerun_with_fewer_shards_leaves_no_stale_shard(tmp_path):
    write([ROW] * 10, str(tmp_path), num_shards=3)
    assert len(list(tmp_path.glob("part-*.parquet"))) == 3
    write([ROW] * 4, str(tmp_path), num_shards=1)
    assert [p.name for p in tmp_path.glob("part-*.parquet")] == ["part-00000-of-00001.parquet"]
    assert len(read_table(str(tmp_path))) == 4


def test_delete_stale_shards_keeps_other_files(tmp_path):
    for name in ("part-00000-of-00002.parquet", "part-00001-of-00002.parquet", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    kept = delete_stale_shards(str(tmp_path), [str(tmp_path / "part-00000-of-00002.parquet")])
    assert kept == ["part-00000-of-00002.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt",
        "part-00000-of-00002.parquet",
    ]


def test_arrow_tables_become_one_table_and_stale_shards_go(tmp_path):
    (tmp_path / "part-00001-of-00002.parquet").write_bytes(b"an older run's shard")
    first = pa.Table.from_pylist([ROW, {**ROW, f.MEMBER: "a/b"}], schema=f.ERRORS_SCHEMA)
    second = pa.Table.from_pylist([{**ROW, f.SOURCE: "gs://b/y"}], schema=f.ERRORS_SCHEMA)
    with TestPipeline() as p:
        tables = p | beam.Create([first, second], reshuffle=False)
        shards = tables | WriteArrowTables(str(tmp_path), f.ERRORS_SCHEMA, num_shards=1)
        assert_that(shards, equal_to([["part-00000-of-00001.parquet"]]))
    assert [p.name for p in tmp_path.iterdir()] == ["part-00000-of-00001.parquet"]
    assert sorted(read_table(str(tmp_path)), key=str) == sorted(
        first.to_pylist() + second.to_pylist(), key=str
    )
