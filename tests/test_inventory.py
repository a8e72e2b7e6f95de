"""`dicomflow inventory` end to end on the synthetic corpus: every object in exactly one row."""

import json
from pathlib import Path

import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from conftest import DATAFLOW_DRY_RUN, build, count_objects, dry_run_steps, phi_values, read_table

from models import features as f
from pipelines import inventory, synth
from pipelines.options import UsageError, parse_options
from transforms import testing as corpus_gen

MULTI_PROCESSING = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def run_inventory(inputs: list[str], output: str, *extra: str) -> dict:
    argv = [a for uri in inputs for a in ("--input", uri)] + ["--output", output, *extra]
    assert inventory.run(argv) == 0
    with FileSystems.open(FileSystems.join(output, "manifest.json")) as fh:
        manifest = json.load(fh)
    return {
        "rows": read_table(FileSystems.join(output, "inventory")),
        "errors": read_table(FileSystems.join(output, "errors")),
        "manifest": manifest,
    }


def relative(row: dict, root: str) -> tuple:
    source = row[f.SOURCE][len(root) :].lstrip("/")
    return source, row[f.MEMBER]


@pytest.fixture(scope="module")
def local_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("inventory")
    return run_inventory([str(corpus / "export")], str(out))


def test_every_object_ends_in_exactly_one_row(corpus, local_run):
    rows, errors = local_run["rows"], local_run["errors"]
    places = [(r[f.SOURCE], r[f.MEMBER]) for r in rows + errors]
    assert len(places) == len(set(places)), "an object was reported twice"
    assert len(places) == count_objects(corpus / "export")
    counts = local_run["manifest"]["counts"]
    assert counts["seen"] == len(places)
    assert counts["inventoried"] == len(rows)
    assert counts["dead_lettered"] == len(errors)


def test_junk_gets_the_right_rows(corpus, local_run):
    root = str(corpus / "export")
    by_place = {relative(r, root): r for r in local_run["rows"]}
    err_by_place = {relative(r, root): r for r in local_run["errors"]}
    junk = {name: err_by_place.get((f"junk/{name}", None)) for name in corpus_gen.JUNK}
    assert junk["README.txt"][f.ERROR_TYPE] == "not_dicom"
    assert junk["Thumbs.db"][f.ERROR_TYPE] == "not_dicom"
    assert junk["empty.dcm"][f.ERROR_TYPE] == "empty"
    assert (junk["truncated.dcm"][f.STAGE], junk["truncated.dcm"][f.ERROR_TYPE]) == (
        "parse",
        "truncated",
    )
    # Readable, so inventoried, with the facts that later stages act on.
    no_pixels = by_place[("junk/no_pixels.dcm", None)]
    assert no_pixels[f.PARSE_STATUS] == f.STATUS_NO_PIXEL_DATA
    unsupported = by_place[("junk/unsupported.dcm", None)]
    assert unsupported[f.DECODER_AVAILABLE] is False
    assert unsupported[f.TRANSFER_SYNTAX_UID] == corpus_gen.UNSUPPORTED_TS
    zip_rel = corpus_gen.CORRUPT_ZIP.removeprefix("export/")
    bad = err_by_place[(zip_rel, corpus_gen.CORRUPT_MEMBER)]
    assert (bad[f.STAGE], bad[f.ERROR_TYPE]) == ("read", "corrupt_archive_member")
    for member in corpus_gen.GOOD_ZIP_MEMBERS:
        assert by_place[(zip_rel, member)][f.PARSE_STATUS] == f.STATUS_IMAGE
    for row in local_run["errors"]:
        assert row[f.MESSAGE] and row[f.STAGE] in {"read", "parse"}


def test_corpus_facts_are_reported(local_run):
    rows = local_run["rows"]
    counts = local_run["manifest"]["counts"]
    assert counts["by_parse_status"][f.STATUS_DICOMDIR] == 1
    assert {"CT", "CR", "DX", "MR", "US", "XA", "OT"} <= set(counts["by_modality"])
    assert len(counts["by_transfer_syntax"]) >= 8
    assert {r[f.PHOTOMETRIC_INTERPRETATION] for r in rows} >= {"MONOCHROME1", "MONOCHROME2"}
    assert any(r[f.BURNED_IN_ANNOTATION] == "YES" for r in rows)
    assert max(r[f.FRAMES] or 0 for r in rows) > 1
    assert any(r[f.MEMBER] and r[f.SOURCE].endswith(".tar.gz") for r in rows)
    assert any(r[f.MEMBER] is None and not r[f.SOURCE].endswith(".dcm") for r in rows)


def test_no_phi_outside_the_location_columns(phi, local_run):
    """Inventory facts carry no identifiers; only source/member (raw locations) may."""
    planted = phi_values(phi)
    for row in local_run["rows"]:
        for column, value in row.items():
            if column in (f.SOURCE, f.MEMBER) or value is None:
                continue
            assert not any(p in str(value) for p in planted), column
    for row in local_run["errors"]:
        assert not any(p in row[f.MESSAGE] for p in planted)
    manifest = json.dumps(local_run["manifest"]["counts"])
    assert not any(p in manifest for p in planted)


def test_counters_match_rows(corpus, tmp_path):
    argv = ["--input", str(corpus / "export"), "--output", str(tmp_path)]
    result = build(inventory, inventory.InventoryOptions, argv).run()
    result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace("dicomflow"))["counters"]
    }
    rows = read_table(str(tmp_path / "inventory"))
    errors = read_table(str(tmp_path / "errors"))
    inventoried = sum(v for k, v in counters.items() if k.startswith("inventoried_"))
    assert inventoried == len(rows)
    assert counters["read_dead_letters"] + counters["parse_dead_letters"] == len(errors)
    assert counters["read_objects"] == len(rows) + counters["parse_dead_letters"]


def test_multi_processing_gives_the_same_rows(corpus, local_run, tmp_path):
    root = str(corpus / "export")
    mp = run_inventory([root], str(tmp_path), *MULTI_PROCESSING)
    assert sorted(map(str, mp["rows"])) == sorted(map(str, local_run["rows"]))
    assert sorted(map(str, mp["errors"])) == sorted(map(str, local_run["errors"]))


def test_portable_runner_gives_the_same_rows(corpus, local_run, tmp_path):
    """Beam's portable path (job service + loopback SDK harness): no DirectRunner shortcuts."""
    portable = ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"]
    run = run_inventory([str(corpus / "export")], str(tmp_path), *portable)
    assert sorted(map(str, run["rows"])) == sorted(map(str, local_run["rows"]))
    assert sorted(map(str, run["errors"])) == sorted(map(str, local_run["errors"]))
    assert run["manifest"]["counts"] == local_run["manifest"]["counts"]


def test_rerun_replaces_the_tables(corpus, tmp_path, monkeypatch):
    root = str(corpus / "export")
    first = run_inventory([root], str(tmp_path))
    stale = tmp_path / "inventory" / "part-00007-of-00009.parquet"
    stale.write_bytes((tmp_path / "inventory" / "part-00000-of-00001.parquet").read_bytes())
    # Overlapping inputs, spelled three ways: each object is still counted once.
    monkeypatch.chdir(corpus)
    again = run_inventory(
        [root, "export/junk/../junk", f"file://{root}/junk/empty.dcm"], str(tmp_path)
    )
    assert not stale.exists()
    assert sorted(map(str, again["rows"])) == sorted(map(str, first["rows"]))
    assert sorted(map(str, again["errors"])) == sorted(map(str, first["errors"]))


def test_size_cap_dead_letters_big_objects_and_loses_nothing(corpus, tmp_path):
    result = run_inventory([str(corpus / "export")], str(tmp_path), "--max-object-bytes=20000")
    too_large = [e for e in result["errors"] if e[f.ERROR_TYPE] == "too_large"]
    assert too_large
    assert all("20000" in e[f.MESSAGE] for e in too_large)
    assert len(result["rows"]) + len(result["errors"]) == count_objects(corpus / "export")


def test_file_uri_and_glob_inputs(corpus, tmp_path):
    result = run_inventory([f"file://{corpus}/export/junk/*.dcm"], str(tmp_path))
    names = {Path(r[f.SOURCE]).name for r in result["rows"] + result["errors"]}
    assert names == {n for n in corpus_gen.JUNK if n.endswith(".dcm")}


def test_gcs_emulator_round_trip(gcs, corpus, local_run):
    """synth writes straight into the bucket; inventory reads it there and writes there."""
    bucket_corpus = f"{gcs}/corpus"
    synth.run(["--output", bucket_corpus, "--patients", "8", "--seed", "3", *MULTI_PROCESSING])
    # A "folder" placeholder object, as the console creates: not an object to count.
    FileSystems.create(f"{bucket_corpus}/export/junk/").close()
    result = run_inventory([f"{bucket_corpus}/export"], f"{gcs}/inventory", *MULTI_PROCESSING)
    local_root, gcs_root = str(corpus / "export"), f"{bucket_corpus}/export"

    def strip(rows, root):
        return sorted(str({**r, f.SOURCE: relative(r, root)[0]}) for r in rows)

    assert strip(result["rows"], gcs_root) == strip(local_run["rows"], local_root)
    assert strip(result["errors"], gcs_root) == strip(local_run["errors"], local_root)
    assert result["manifest"]["counts"] == local_run["manifest"]["counts"]


def test_dataflow_dry_run_builds_the_job(tmp_path):
    argv = [
        "--input=gs://bucket/export",
        "--output=gs://bucket/inventory",
        "--max-object-bytes=1000000",
        "--setup_file=./setup.py",
        *DATAFLOW_DRY_RUN,
    ]
    pipeline = build(inventory, inventory.InventoryOptions, argv)
    names = dry_run_steps(pipeline.run())
    for step in ("MatchInputs", "ReadObjects", "InspectDicom", "WriteInventory", "WriteErrors"):
        assert any(step in name.split("/") for name in names), step
    # Our flags are not shipped to the service as Beam options (Dataflow sends unknown
    # options along too, so look with retain_unknown_options).
    shipped = pipeline.options.get_all_options(retain_unknown_options=True)
    assert not {"input", "output", "max_object_bytes"} & set(shipped)
    opts, beam_options = parse_options("dicomflow inventory", argv, inventory.InventoryOptions)
    assert inventory.configure(opts, beam_options).limits.max_object_bytes == 1000000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--output", "x"], "--input is required"),
        (["--input", "x"], "--output is required"),
        (["--input", ".", "--output", "x", "--ouput", "y"], "unrecognized arguments: --ouput y"),
        (["--input", ".", "--output", "x", "--max-object-bytes", "ten"], "invalid int value"),
        (["--input", "/no/such/folder", "--output", "x"], "input matches no objects"),
        (["--input", ".", "--output", "x", "--max-object-bytes", "0"], "must be positive"),
        (["--input", ".", "--output", "./x/inv"], "lies inside --input"),
        (["--input", ".", "--output", "../x", "--runner", "NoSuchRunner"], "unknown --runner"),
    ],
)
def test_bad_arguments_fail_before_any_work(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.dcm").write_bytes(b"x")
    with pytest.raises(UsageError, match=message):
        inventory.run(argv)
    assert not (tmp_path / "x").exists()


def test_build_pipeline_takes_a_test_pipeline_and_a_config(tmp_path):
    """The graph is built on the Pipeline it is given, from a config made in code."""
    import shutil

    from apache_beam.testing.test_pipeline import TestPipeline
    from pydicom.data import get_testdata_file

    export = tmp_path / "export"
    export.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), export / "ct.dcm")
    (export / "junk.bin").write_bytes(b"not DICOM")
    config = inventory.InventoryConfig(
        inputs=(str(export),), output=str(tmp_path / "out"), run_id="r1"
    )
    pipeline = TestPipeline()
    assert inventory.build_pipeline(pipeline, config) is pipeline
    pipeline.run().wait_until_finish()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["run_id"] == "r1"
    assert (manifest["counts"]["inventoried"], manifest["counts"]["dead_lettered"]) == (1, 1)
