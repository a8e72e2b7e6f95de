"""DIMSE nodes as a source and a sink (transforms/sources/dimse*.py), against a real PACS:
Orthanc's DICOM port on loopback, loaded with pydicom's public test files and an instance
whose UIDs are 64 hex digits; the same instances as files are the reference."""

import dataclasses
import io
from pathlib import Path

import apache_beam as beam
import pydicom
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from conftest import DATAFLOW_DRY_RUN, build, dry_run_steps, read_table
from orthanc import CALLING_AET, free_port, running_orthanc
from test_dicomweb import PUBLIC_FILES, hex_uid_instance, sop_uid

from pipelines import deidentify, ingest, inventory
from pipelines.options import UsageError
from transforms.dicom_io.limits import Limits
from transforms.sources import dimse, dimse_retrieve
from transforms.sources.dimse_association import DimseSettings, NodeUrl
from transforms.sources.dimse_query import Listed

KEY = "d" * 64
FAST = DimseSettings(attempts=2, backoff_seconds=0.01, move_bind="127.0.0.1")
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclasses.dataclass
class Node:
    server: object
    files: Path
    move_port: int


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """Orthanc with a DICOM port, pydicom's public test files and the hex-UID instance
    (one copy per SOP Instance UID), and the same instances as files. C-MOVE may send to
    DICOMFLOW at a loopback port the reading worker listens on."""
    files = tmp_path_factory.mktemp("dimse-files")
    move_port = free_port()
    objects = [(p.name, p.read_bytes()) for p in sorted(PUBLIC_FILES.glob("*.dcm"))]
    objects.append(("hex-uids.dcm", hex_uid_instance()))
    with running_orthanc(dicom=True, modalities={CALLING_AET: ("127.0.0.1", move_port)}) as server:
        held = set()
        for name, data in objects:
            try:
                uid = sop_uid(data)
            except Exception:
                continue
            if uid not in held and server.upload(data):
                held.add(uid)
                (files / name).write_bytes(data)
        assert len(held) >= 30
        yield Node(server, files, move_port)
    dimse_retrieve.stop_move_servers()


def _rows(output: Path, table: str) -> list[dict]:
    return read_table(str(output / table)) if list((output / table).glob("*.parquet")) else []


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("dimse://AE:secret@h:104", "no password"),
        ("dimse://h:104", "called AE title"),
        ("dimse://AE@h:104?PatientID=x", "--dimse-query"),
        ("dimse://AE@h:port", "port is a number"),
        ("dimse://AE@h/studies/1.2/instances/1.3", "ends in /studies/S"),
        ("dimse://AE@h/studies/a%2Fb", "needs a UID"),
    ],
)
def test_bad_node_urls_are_refused_with_a_reason(uri, message):
    with pytest.raises(ValueError, match=message) as info:
        NodeUrl.parse(uri)
    assert "secret" not in str(info.value)


def test_node_urls_parse_at_every_level():
    url = NodeUrl.parse(f"dimse://PACS@10.0.0.5:11112/studies/1.2/series/{'ab' * 32}")
    assert (url.called_aet, url.host, url.port, url.level) == ("PACS", "10.0.0.5", 11112, "series")
    assert NodeUrl.parse(url.uri) == url and NodeUrl.parse("dimse://PACS@h").port == 104


def test_settings_are_checked_before_any_work(node):
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        DimseSettings(query="Modalities=CT").check()
    with pytest.raises(ValueError, match="get or move"):
        DimseSettings(retrieve="copy").check()
    with pytest.raises(UsageError, match="--dimse-query: for dimse inputs only"):
        inventory.run(["--input", str(node.files), "--output", "o", "--dimse-query", "X=1"])
    argv = ["--input", node.server.dimse, "--output", "o", "--dimse-query", "PatientID=none"]
    with pytest.raises(UsageError, match="matches no studies"):
        inventory.run(argv)
    wrong = node.server.dimse.replace("ORTHANC@", "NOBODY@")
    with pytest.raises(UsageError, match="cannot be reached"):
        inventory.run(["--input", wrong, "--output", "o"])


def test_every_instance_in_the_node_is_one_row_hex_uids_included(node, tmp_path):
    held = len(node.server.sop_instance_uids())
    assert inventory.run(["--input", node.server.dimse, "--output", str(tmp_path / "n")]) == 0
    rows, errors = _rows(tmp_path / "n", "inventory"), _rows(tmp_path / "n", "errors")
    assert len(rows) + len(errors) == held and not errors
    sources = {NodeUrl.parse(r["source"]).instance for r in rows}
    assert hex_uid_instance() and len(sources) == held
    assert any(len(uid) == 64 and "." not in uid for uid in sources)  # the hex-UID instance
    inventory.run(["--input", str(node.files), "--output", str(tmp_path / "files")])
    files = _rows(tmp_path / "files", "inventory")
    # The node sends each instance as it holds it: the same syntax and parse status.
    columns = ("transfer_syntax_uid", "parse_status", "modality")
    strip = lambda r: tuple(str(r[c]) for c in columns)  # noqa: E731
    assert sorted(map(strip, rows)) == sorted(map(strip, files))


def test_ingest_from_the_node_equals_ingest_from_the_files(node, tmp_path, monkeypatch):
    monkeypatch.setenv("DIMSE_KEY", KEY)
    for name, uri in (("node", node.server.dimse), ("files", str(node.files))):
        argv = ["--input", uri, "--output", str(tmp_path / name), "--key-env", "DIMSE_KEY"]
        assert ingest.run(argv) == 0
    index = {n: _rows(tmp_path / n, "index") for n in ("node", "files")}
    key = lambda r: (r["sop_instance_uid"], r["frame"])  # noqa: E731
    assert index["node"] and sorted(map(key, index["node"])) == sorted(map(key, index["files"]))
    errors = {n: _rows(tmp_path / n, "errors") for n in ("node", "files")}
    kinds = {n: sorted((e["stage"], e["error_type"]) for e in errors[n]) for n in errors}
    assert kinds["node"] == kinds["files"]


def test_c_move_to_the_workers_storage_scp_reads_the_same_instances(node):
    settings = dataclasses.replace(FAST, retrieve="move", move_port=node.move_port)
    held = node.server.sop_instance_uids()
    with BeamTestPipeline() as p:
        objects, errors = p | dimse.ReadDimse([node.server.dimse], settings, 1 << 30)
        assert_that(objects | beam.Map(lambda o: sop_uid(o.data)), equal_to(held), label="All")
        assert_that(errors, equal_to([]), label="NoErrors")


def test_an_instance_the_node_does_not_send_is_one_dead_letter_after_retries(node):
    study = NodeUrl.parse(node.server.dimse).child(study="1.2.3", series="1.2.3.4")
    missing = Listed(study.child(instance="1.2.3.4.5").uri, CT_IMAGE)
    fn = dimse.RetrieveSeriesFn(FAST, 1 << 30)
    [letter] = [o.value for o in fn.process((study.uri, [(missing,)]))]
    assert (letter.source, letter.stage, letter.error_type) == (
        missing.uri,
        "read",
        "retrieve_failed",
    )
    closed = NodeUrl.parse(node.server.dimse).child(host="127.0.0.1", port=free_port())
    gone = Listed(closed.child(study="1.2", series="1.3", instance="1.4").uri, CT_IMAGE)
    letters = [o.value for o in fn.process((gone.uri, [(gone, gone)]))]  # listed twice
    assert [x.error_type for x in letters] == ["retrieve_failed", "duplicate_instance"]
    assert letters[0].message == "C-GET failed: association not established after 2 attempts"


def test_deidentify_stores_into_a_node_by_c_store_idempotently(node, tmp_path):
    (tmp_path / "key").write_text(KEY)
    with running_orthanc(dicom=True) as target:
        base = ["--input", str(node.files), "--key-file", str(tmp_path / "key")]
        sink = ["--output-store", target.dimse]
        assert deidentify.run([*base, "--output", str(tmp_path / "a"), *sink]) == 0
        stored = target.sop_instance_uids()
        assert deidentify.run([*base, "--output", str(tmp_path / "b"), *sink]) == 0
        assert target.sop_instance_uids() == stored  # the same instances, once each
        written = [e for e in _rows(tmp_path / "a", "errors") if e["stage"] == "write"]
    assert deidentify.run([*base, "--output", str(tmp_path / "files")]) == 0
    files = sorted(p.stem for p in (tmp_path / "files" / "deid_dicom").glob("*.dcm"))
    # Each instance is stored or has its row (Orthanc answers 0xA700 to a few it cannot
    # index); none is lost, none stored twice.
    assert set(stored) <= set(files) and len(stored) + len(written) == len(files)
    assert len(stored) > len(files) // 2
    assert {e["error_type"] for e in written} <= {"store_rejected"}
    assert not set(stored) & set(node.server.sop_instance_uids())  # pseudonyms only


def test_dataflow_dry_run_accepts_a_dimse_input():
    argv = [
        "--input=dimse://PACS@10.0.0.5:11112",
        "--output=gs://bucket/inventory",
        "--dimse-query=ModalitiesInStudy=CR",
        "--dimse-calling-aet=DATAFLOW",
        *DATAFLOW_DRY_RUN,
    ]
    names = dry_run_steps(build(inventory, inventory.InventoryOptions, argv).run())
    for step in ("FindStudies", "FindInstances", "OnePerSeries", "RetrieveSeries"):
        assert any(step in name.split("/") for name in names), step


def test_a_study_url_reads_only_that_study(node):
    data = (PUBLIC_FILES / "CT_small.dcm").read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    study = NodeUrl.parse(node.server.dimse).child(study=ds.StudyInstanceUID)
    source = dimse.DimseSource.configure([study.uri], FAST)
    source.check()
    assert list(source.list_objects()) == [
        study.child(series=ds.SeriesInstanceUID, instance=ds.SOPInstanceUID).uri
    ]
    assert source.describe() == [f"{study.root.uri} (1 studies, series or instances in it)"]
    with BeamTestPipeline() as p:
        objects, _ = p | source.read(Limits())
        assert_that(objects | beam.Map(lambda o: sop_uid(o.data)), equal_to([ds.SOPInstanceUID]))
