"""Parquet tables written from Beam, safe to re-run: a table is replaced, never appended to."""

import posixpath

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

SHARD_PREFIX = "part"
SUFFIX = ".parquet"


def table_dir(output: str, table: str) -> str:
    return FileSystems.join(output, table)


def delete_stale_shards(directory: str, written: list[str], suffix: str = SUFFIX) -> list[str]:
    """Deletes ``part-*<suffix>`` files under ``directory`` that this run did not write.

    A re-run that writes fewer shards than the last one would otherwise leave the old
    extra shards behind, and readers would see their rows twice.

    Returns:
        The base names of the shards this run wrote, sorted.
    """
    keep = {posixpath.basename(p) for p in written}
    pattern = FileSystems.join(directory, f"{SHARD_PREFIX}-*{suffix}")
    stale = [
        m.path
        for m in FileSystems.match([pattern])[0].metadata_list
        if posixpath.basename(m.path) not in keep
    ]
    if stale:
        FileSystems.delete(stale)
    return sorted(keep)


class WriteParquet(beam.PTransform):
    """dict rows → ``<directory>/part-SSSSS-of-NNNNN.parquet`` with a fixed Arrow schema.

    Beam's file sink writes to temporary files and renames them when the whole bundle set
    has finished, so a retried bundle never leaves a partial shard. The output is a
    one-element PCollection: the sorted list of shard names, available once the table is
    complete (a manifest waits on it).
    """

    def __init__(self, directory: str, schema: pa.Schema, num_shards: int = 0):
        super().__init__()
        self._directory = directory
        self._schema = schema
        self._num_shards = num_shards

    def expand(self, rows: beam.PCollection[dict]) -> beam.PCollection[list[str]]:
        return _write_table(
            rows, beam.io.WriteToParquet, self._directory, self._schema, self._num_shards
        )


def _finish_table(_, directory: str, written: list[str]) -> list[str]:
    return delete_stale_shards(directory, written)


def _write_table(pcoll, sink, directory: str, schema: pa.Schema, num_shards: int):
    """``pcoll`` through Beam's Parquet ``sink``, then the stale-shard clean-up once it is done."""
    written = pcoll | "Write" >> sink(
        FileSystems.join(directory, SHARD_PREFIX),
        schema,
        codec="snappy",
        file_name_suffix=SUFFIX,
        num_shards=num_shards,
    )
    return (
        pcoll.pipeline
        | "Once" >> beam.Create([None])
        | "DeleteStaleShards" >> beam.Map(_finish_table, directory, beam.pvalue.AsList(written))
    )


class WriteArrowTables(beam.PTransform):
    """Arrow tables → ``<directory>/part-*.parquet``, each table one row group at most.

    For rows that are built column by column (``WriteParquet`` takes dicts, one per row).
    The same temp-and-rename sink and stale-shard clean-up as ``WriteParquet``; the output
    is the one-element list of shard names.
    """

    def __init__(self, directory: str, schema: pa.Schema, num_shards: int = 0):
        super().__init__()
        self._directory = directory
        self._schema = schema
        self._num_shards = num_shards

    def expand(self, tables: beam.PCollection[pa.Table]) -> beam.PCollection[list[str]]:
        return _write_table(
            tables, beam.io.WriteToParquetBatched, self._directory, self._schema, self._num_shards
        )
