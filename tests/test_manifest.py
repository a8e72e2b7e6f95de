"""Manifests: counts combined from rows, written after the tables they describe."""

import json

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from models.layout import MANIFEST_NAME
from transforms.manifest import CountKeysFn, WriteManifest, nest_counts


def test_nest_counts():
    flat = {"seen": 3, ("by_modality", "CT"): 2, ("by_modality", "MR"): 1}
    assert nest_counts(flat) == {"seen": 3, "by_modality": {"CT": 2, "MR": 1}}
    # Values with "/" in them stay whole.
    syntax = "MPEG-4 AVC/H.264 High Profile / Level 4.1"
    assert nest_counts({("by_transfer_syntax", syntax): 1}) == {"by_transfer_syntax": {syntax: 1}}


def test_count_keys_fn_merges():
    fn = CountKeysFn()
    a = fn.add_input(fn.create_accumulator(), ["seen", "x"])
    b = fn.add_input(fn.create_accumulator(), ["seen"])
    assert fn.extract_output(fn.merge_accumulators([a, b])) == {"seen": 2, "x": 1}


def test_manifest_lists_tables_and_counts(tmp_path):
    with beam.Pipeline() as p:
        table = p | "Table" >> beam.Create([["part-00000-of-00001.parquet"]])
        _ = (
            p
            | "Keys" >> beam.Create([["seen", ("by_kind", "a")], ["seen", ("by_kind", "b")]])
            | WriteManifest(str(tmp_path), {"run_id": "r1"}, {"things": table})
        )
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["run_id"] == "r1"
    assert manifest["counts"] == {"seen": 2, "by_kind": {"a": 1, "b": 1}}
    assert manifest["tables"] == {"things": ["part-00000-of-00001.parquet"]}
    assert manifest["finished_at"]


def test_manifest_is_the_output_and_takes_what_only_the_run_learns(tmp_path):
    """The written manifest is also the composite's output; a section replaces the header's,
    and ``complete`` makes the last change before it is written."""
    with TestPipeline() as p:
        table = p | "Table" >> beam.Create([["part-00000-of-00001.parquet"]])
        stats = p | "Stats" >> beam.Create([{"mean": 0.5}])
        manifest = (
            p
            | "Keys" >> beam.Create([["seen"], ["seen", ("by_split", "train")]])
            | WriteManifest(
                str(tmp_path),
                {"run_id": "r1", "statistics": None},
                {"index": table},
                sections={"statistics": stats},
                complete=lambda m: {**m, "timings": {"total": 1}},
            )
        )
        assert_that(
            manifest | beam.Map(lambda m: {k: v for k, v in m.items() if k != "finished_at"}),
            equal_to(
                [
                    {
                        "run_id": "r1",
                        "statistics": {"mean": 0.5},
                        "counts": {"seen": 2, "by_split": {"train": 1}},
                        "tables": {"index": ["part-00000-of-00001.parquet"]},
                        "timings": {"total": 1},
                    }
                ]
            ),
        )
    written = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert written["statistics"] == {"mean": 0.5} and written["timings"] == {"total": 1}
