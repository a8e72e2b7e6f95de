"""DICOMweb input and output against a real PACS: Orthanc with its DICOMweb plugin.

One Orthanc per session holds a small synthetic corpus (the same instances are also
written as loose files); a second one, with basic auth, receives de-identified instances.
"""

import dataclasses
import hashlib
import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
import pydicom
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from conftest import DATAFLOW_DRY_RUN, build, corpus_objects, dry_run_steps, read_table
from orthanc import FaultyProxy, Orthanc, running_orthanc

from pipelines import deidentify, ingest, inventory
from pipelines import synth as synth_pipeline
from pipelines.options import UsageError, parse_options
from transforms.dicomweb import DicomwebSettings, ReadDicomweb, StoreUrl, WriteDicomweb

PATIENTS = 3
SEED = 11
KEY = "w" * 64
USER, PASSWORD = "dicomflow", "pw-Zq81-never-logged"
FAST = DicomwebSettings(backoff_seconds=0.01, max_backoff_seconds=0.05, max_concurrency=4)


def sop_uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


@dataclass
class Pacs:
    server: Orthanc
    export: Path  # the synthetic export (labels.csv, phi.json)
    files: Path  # the same instances as the server holds, as loose files
    instances: dict[str, bytes]  # SOP Instance UID → Part 10 bytes

    def __iter__(self):
        return iter((self.server, self.files, self.instances))


@pytest.fixture(scope="session")
def pacs(tmp_path_factory):
    """Orthanc loaded with the corpus's instances, and the same instances as files."""
    export = tmp_path_factory.mktemp("dicomweb-export")
    synth_pipeline.run(["--output", str(export), "--patients", str(PATIENTS), "--seed", str(SEED)])
    files = tmp_path_factory.mktemp("dicomweb-files")
    with running_orthanc() as server:
        instances = {}
        for obj in corpus_objects(export / "export"):
            try:
                uid = sop_uid(obj.data)
            except Exception:
                continue  # junk: only what a PACS would hold goes in
            if uid in instances or not server.upload(obj.data):
                continue
            instances[uid] = obj.data
            name = hashlib.sha256(uid.encode()).hexdigest()[:16]
            (files / f"{name}.dcm").write_bytes(obj.data)
        assert len(instances) >= 6
        yield Pacs(server, export, files, instances)


@pytest.fixture(scope="session")
def target():
    """An empty Orthanc that wants HTTP basic auth."""
    with running_orthanc({USER: PASSWORD}) as server:
        yield server


def web(url: str) -> str:
    return "dicomweb+" + url


PUBLIC_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # pydicom's own


def hex_uid_instance() -> bytes:
    """A public test instance whose Study, Series and SOP Instance UIDs are 64 hex digits,
    as some anonymizers write them (malformed, but a PACS holds and serves it)."""
    ds = pydicom.dcmread(PUBLIC_FILES / "CT_small.dcm")
    for name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, name, hashlib.sha256(name.encode()).hexdigest())
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


@pytest.fixture(scope="module")
def public_pacs(tmp_path_factory):
    """Orthanc holding pydicom's public test files and the hex-UID instance, and the same
    instances as files. One copy per SOP Instance UID: Orthanc cannot serve either copy of
    one held twice (its WADO-RS answers 404), which the duplicate test covers."""
    files = tmp_path_factory.mktemp("public-files")
    objects = [(p.name, p.read_bytes()) for p in sorted(PUBLIC_FILES.glob("*.dcm"))]
    objects.append(("hex-uids.dcm", hex_uid_instance()))
    with running_orthanc() as server:
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
        yield server, files


def test_queries_and_flags_are_checked_before_any_work(pacs):
    opts, _ = parse_options(
        "dicomflow inventory",
        ["--input", "in", "--output", "out", "--dicomweb-query", "Modality=CT"],
        inventory.InventoryOptions,
    )
    with pytest.raises(UsageError, match="for dicomweb"):
        inventory.configure(opts, beam.options.pipeline_options.PipelineOptions([]))
    with pytest.raises(ValueError, match="Key=value"):
        DicomwebSettings(query="=CT&&").filters()
    server, _, _ = pacs
    argv = ["--input", web(server.url), "--output", "out", "--dicomweb-query", "PatientID=none"]
    with pytest.raises(UsageError, match="matches no studies"):
        inventory.run(argv)


# ------------------------------------------------------------------ against Orthanc


def _strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("source", "member")}


def test_inventory_from_the_store_equals_inventory_from_the_files(pacs, tmp_path):
    server, files, instances = pacs
    inventory.run(["--input", web(server.url), "--output", str(tmp_path / "web")])
    inventory.run(["--input", str(files), "--output", str(tmp_path / "files")])
    from_web = {
        StoreUrl.parse(r["source"]).instance: _strip(r)
        for r in read_table(str(tmp_path / "web" / "inventory"))
    }
    from_files = {}
    for row in read_table(str(tmp_path / "files" / "inventory")):
        from_files[sop_uid(Path(row["source"]).read_bytes())] = _strip(row)
    assert len(from_web) == len(instances)
    assert from_web == from_files
    manifest = json.loads((tmp_path / "web" / "manifest.json").read_text())
    assert manifest["counts"]["seen"] == len(instances)
    assert manifest["inputs"] == [web(server.url)]


def _rows(output: Path, table: str) -> list[dict]:
    found = list((output / table).glob("*.parquet"))
    return read_table(str(output / table)) if found else []


def test_public_files_in_a_store_are_each_one_row_hex_uids_included(public_pacs, tmp_path):
    server, files = public_pacs
    held = len(server.sop_instance_uids())
    inventory.run(["--input", web(server.url), "--output", str(tmp_path / "web")])
    rows, errors = _rows(tmp_path / "web", "inventory"), _rows(tmp_path / "web", "errors")
    assert len(rows) + len(errors) == held
    assert not errors
    hexuid = hashlib.sha256(b"SOPInstanceUID").hexdigest()
    assert [r for r in rows if StoreUrl.parse(r["source"]).instance == hexuid]
    inventory.run(["--input", str(files), "--output", str(tmp_path / "files")])
    assert len(_rows(tmp_path / "files", "inventory")) == len(rows)


def test_ingest_from_a_store_of_public_files_equals_ingest_from_the_files(
    public_pacs, tmp_path, monkeypatch
):
    server, files = public_pacs
    monkeypatch.setenv("DW_KEY", KEY)
    for name, uri in (("web", web(server.url)), ("files", str(files))):
        argv = ["--input", uri, "--output", str(tmp_path / name), "--key-env", "DW_KEY"]
        assert ingest.run(argv) == 0
    index = {n: _rows(tmp_path / n, "index") for n in ("web", "files")}
    errors = {n: _rows(tmp_path / n, "errors") for n in ("web", "files")}
    assert index["web"] and len(index["web"]) == len(index["files"])
    key = lambda r: (r["sop_instance_uid"], r["frame"])  # noqa: E731
    assert sorted(map(key, index["web"])) == sorted(map(key, index["files"]))
    kinds = {n: sorted((e["stage"], e["error_type"]) for e in errors[n]) for n in errors}
    assert kinds["web"] == kinds["files"]


def test_an_instance_held_twice_is_one_row_per_listing_never_a_store_failure(tmp_path):
    data = (PUBLIC_FILES / "CT_small.dcm").read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.SeriesInstanceUID = "1.2.3.4.5.6"  # the same SOP Instance UID in a second series
    copy = io.BytesIO()
    ds.save_as(copy)
    with running_orthanc() as server:
        assert server.upload(data) and server.upload(copy.getvalue())
        assert server.upload(hex_uid_instance())
        inventory.run(["--input", web(server.url), "--output", str(tmp_path)])
    rows, errors = _rows(tmp_path, "inventory"), _rows(tmp_path, "errors")
    assert len(rows) + len(errors) == 3
    assert [e["error_type"] for e in errors].count("duplicate_instance") == 1
    # Orthanc answers 404 for both copies (its look-up by SOP Instance UID finds two)
    assert {e["error_type"] for e in errors} <= {"duplicate_instance", "retrieve_failed"}
    assert len(rows) == 1 + (len(errors) == 1)


def test_a_query_selects_studies(pacs, tmp_path):
    server, _, instances = pacs
    modalities = {}
    for uid, data in instances.items():
        modalities.setdefault(pydicom.dcmread(io.BytesIO(data)).Modality, set()).add(uid)
    modality, uids = sorted(modalities.items())[0]
    argv = ["--input", web(server.url), "--output", str(tmp_path / "q")]
    inventory.run([*argv, "--dicomweb-query", f"ModalitiesInStudy={modality}"])
    rows = read_table(str(tmp_path / "q" / "inventory"))
    assert {r["modality"] for r in rows} == {modality}
    assert {StoreUrl.parse(r["source"]).instance for r in rows} == uids


def examples(output: Path) -> list[bytes]:
    from transforms.tfrecord import iter_records, open_stream

    records = []
    for path in sorted(output.glob("tfrecords/*/part-*.tfrecord.gz")):
        with open_stream(str(path)) as fh:
            records += [bytes(r) for r in iter_records(fh)]
    return sorted(records)


def test_ingest_from_the_store_gives_the_same_examples_as_from_the_files(
    pacs, tmp_path, monkeypatch
):
    monkeypatch.setenv("DW_KEY", KEY)
    common = ["--key-env", "DW_KEY", "--labels", str(pacs.export / "labels.csv")]
    for name, uri in (("web", web(pacs.server.url)), ("files", str(pacs.files))):
        assert ingest.run(["--input", uri, "--output", str(tmp_path / name), *common]) == 0
    rows = {n: read_table(str(tmp_path / n / "index")) for n in ("web", "files")}
    errors = {n: read_table(str(tmp_path / n / "errors")) for n in ("web", "files")}
    assert len(rows["web"]) + len(errors["web"]) >= len(pacs.instances)
    assert sorted(e["error_type"] for e in errors["web"]) == sorted(
        e["error_type"] for e in errors["files"]
    )
    key = lambda r: (r["sop_instance_uid"], r["frame"])  # noqa: E731
    assert sorted(rows["web"], key=key) == sorted(rows["files"], key=key)
    assert examples(tmp_path / "web") == examples(tmp_path / "files")
    manifest = json.loads((tmp_path / "web" / "manifest.json").read_text())
    assert manifest["counts"]["seen"] == len(pacs.instances)
    assert manifest["inputs"] == [web(pacs.server.url)]


def test_deidentify_stores_into_a_second_pacs_idempotently_and_never_logs_the_secret(
    pacs, target, tmp_path, caplog, capfd
):
    secret = tmp_path / "target.secret"
    secret.write_text(f"{USER}:{PASSWORD}")
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    base = ["--input", web(pacs.server.url), "--key-file", str(key_file)]
    sink = [
        "--output-store", web(target.url),
        "--output-store-credentials-file", str(secret),
    ]  # fmt: skip
    caplog.set_level(logging.DEBUG)
    target.clear()
    assert deidentify.run([*base, "--output", str(tmp_path / "a"), *sink]) == 0
    stored = target.sop_instance_uids()
    assert deidentify.run([*base, "--output", str(tmp_path / "b"), *sink]) == 0  # re-run
    assert target.sop_instance_uids() == stored  # replaced or ignored, never duplicated
    # The same run to files names the files by the same new UIDs.
    assert deidentify.run([*base, "--output", str(tmp_path / "files")]) == 0
    written = sorted(p.stem for p in (tmp_path / "files" / "deid_dicom").glob("*.dcm"))
    errors = read_table(str(tmp_path / "a" / "errors"))
    assert stored == written and len(stored) + len(errors) == len(pacs.instances)
    assert {e["stage"] for e in errors} <= {"deidentify", "pixels"}  # none in the store
    assert not set(stored) & set(pacs.instances)  # new UIDs, not the originals
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["counts"]["deidentified"] == len(stored)
    out, err = capfd.readouterr()
    texts = [caplog.text, out, err, *(p.read_text() for p in tmp_path.rglob("*.json"))]
    assert not any(PASSWORD in text for text in texts)


def test_a_refused_login_is_one_line_before_any_work(pacs, target, tmp_path, capfd):
    secret = tmp_path / "wrong.secret"
    secret.write_text(f"{USER}:not-{PASSWORD}")
    (tmp_path / "key").write_text(KEY)
    argv = [
        "--input", str(pacs.files), "--output", str(tmp_path / "o"),
        "--key-file", str(tmp_path / "key"), "--output-store", web(target.url),
        "--output-store-credentials-file", str(secret),
    ]  # fmt: skip
    with pytest.raises(UsageError, match="HTTP 401") as info:
        deidentify.run(argv)
    assert PASSWORD not in str(info.value)
    assert not (tmp_path / "o").exists()


def test_retrieval_retries_429_503_and_dropped_connections_and_dead_letters_the_rest(pacs):
    """Every instance once: retrieved after transient faults, or one dead letter."""
    uids = sorted(pacs.instances)
    lost = set(uids[:2])

    def fault(method, path, count):
        if "/instances/" in path and path.rsplit("/", 1)[1] in lost:
            return 503  # never recovers
        if count == 0:  # every request's first try fails, in turn each way
            return (503, 429, "drop", 500)[len(path) % 4]
        return None

    proxy = FaultyProxy(pacs.server.rest, fault)
    try:
        with BeamTestPipeline() as p:
            objects, errors = p | ReadDicomweb([web(proxy.url)], FAST)
            sources = objects | beam.Map(lambda o: StoreUrl.parse(o.source).instance)
            assert_that(sources, equal_to(sorted(set(uids) - lost)), label="Retrieved")
            rows = errors | beam.Map(
                lambda e: (StoreUrl.parse(e.source).instance, e.error_type, e.message)
            )
            message = f"WADO-RS retrieve failed: HTTP 503 after {FAST.attempts} attempts"
            expected = [(uid, "retrieve_failed", message) for uid in sorted(lost)]
            assert_that(rows, equal_to(expected), label="DeadLetters")
    finally:
        proxy.close()
    retried = [s for s in proxy.seen if s[2] in (429, 500, "drop")]
    assert retried and any(s[2] is None for s in proxy.seen)


def test_retrieval_keeps_within_the_per_worker_cap(pacs):
    """Two DoFn instances in one process share the cap: at most 3 requests at once."""
    from transforms.dicomweb import RetrieveFn

    proxy = FaultyProxy(pacs.server.rest, lambda *a: None, delay=0.05)
    store = StoreUrl.parse(web(proxy.url))
    uris = []
    for uid, data in sorted(pacs.instances.items()):
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        uris.append(store.child(study=ds.StudyInstanceUID, series=ds.SeriesInstanceUID).child(
            instance=uid).uri)  # fmt: skip
    settings = dataclasses.replace(FAST, max_concurrency=3)
    fns = [RetrieveFn(settings), RetrieveFn(settings)]
    try:
        for fn in fns:
            fn.setup()
        with ThreadPoolExecutor(2) as pool:
            halves = [[(u,) for u in uris[::2]], [(u,) for u in uris[1::2]]]
            outputs = pool.map(lambda fn, part: list(fn.process(part)), fns, halves)
            retrieved = [o for out in outputs for o in out]
    finally:
        for fn in fns:
            fn.teardown()
        proxy.close()
    assert sorted(o.source for o in retrieved) == sorted(uris)
    assert 2 <= proxy.max_in_flight <= 3


def test_store_retries_a_failing_batch_and_dead_letters_what_never_goes_in(
    pacs, target, monkeypatch
):
    from transforms.deid import DeidResult

    uids = sorted(pacs.instances)[:4]
    results = [
        ("src", None, DeidResult(uid, "", "", "", "CT", pacs.instances[uid])) for uid in uids
    ]
    settings = dataclasses.replace(FAST, credentials_env="DW_TARGET", store_batch=2)
    monkeypatch.setenv("DW_TARGET", f"{USER}:{PASSWORD}")
    for fault, stored in ((lambda m, p, n: 503 if n < 2 else None, uids), (lambda *a: 500, [])):
        target.clear()
        proxy = FaultyProxy(target.rest, fault)
        try:
            with BeamTestPipeline() as p:
                ok, errors = p | beam.Create(results) | WriteDicomweb(web(proxy.url), settings)
                assert_that(ok, equal_to([("CT", ())] * len(stored)), label="Stored")
                kinds = errors | beam.Map(lambda e: (e.stage, e.error_type))
                missing = len(uids) - len(stored)
                assert_that(kinds, equal_to([("write", "store_failed")] * missing), label="Errs")
        finally:
            proxy.close()
        assert target.sop_instance_uids() == sorted(stored)


def test_dataflow_dry_run_builds_with_cloud_healthcare_stores(gcs, monkeypatch):
    from apache_beam.io.filesystems import FileSystems

    key_uri = f"{gcs}/keys/dicomweb.key"
    with FileSystems.create(key_uri) as fh:
        fh.write(KEY.encode())
    store = (
        "dicomweb+https://healthcare.googleapis.com/v1/projects/p/locations/europe-west4/"
        "datasets/d/dicomStores/{}/dicomWeb"
    )
    argv = [
        f"--input={store.format('raw')}", "--output=gs://bucket/deid", f"--key-file={key_uri}",
        "--dicomweb-query=ModalitiesInStudy=CR", f"--output-store={store.format('deid')}",
        *DATAFLOW_DRY_RUN,
    ]  # fmt: skip
    names = dry_run_steps(build(deidentify, deidentify.DeidentifyOptions, argv).run())
    for step in ("SearchStudies", "OnePerInstance", "Retrieve", "Deidentify", "StoreInstances"):
        assert any(step in name for name in names), step
    monkeypatch.setenv("DW_TOKEN", "t")
    opts, beam_options = parse_options(
        "dicomflow deidentify",
        [*argv, "--dicomweb-credentials-env=DW_TOKEN"],
        deidentify.DeidentifyOptions,
    )
    with pytest.raises(UsageError, match="--dicomweb-credentials-file only"):
        deidentify.configure(opts, beam_options)


def test_run_plans_by_instance_uids_and_fetches_only_what_is_new(pacs, tmp_path, monkeypatch):
    from pipelines import run as run_mod

    uids = sorted(pacs.instances)
    calls = []

    def fake(stage):
        def runner(config, record, objects):
            calls.append((stage, sorted(StoreUrl.parse(o).instance for o in objects)))
            return {}

        return runner

    monkeypatch.setattr(run_mod, "RUNNERS", {s: fake(s) for s in run_mod.STAGES})
    monkeypatch.setenv("DW_KEY", KEY)
    with running_orthanc() as server:
        for uid in uids[:3]:
            assert server.upload(pacs.instances[uid])
        config = run_mod.RunConfig.from_mapping(
            {
                "inputs": [web(server.url)],
                "output": str(tmp_path / "out"),
                "key_env": "DW_KEY",
                "sources": {"dicomweb": {"query": "StudyDate=19000101-", "max_concurrency": 2}},
            }
        )
        assert run_mod.execute_run(config, log=lambda m: None) == 0
        assert calls[-1] == ("score", uids[:3])
        calls.clear()
        assert run_mod.execute_run(config, log=lambda m: None) == 0
        assert calls == [("score", [])]  # nothing new: nothing fetched
        calls.clear()
        server.upload(pacs.instances[uids[3]])
        assert run_mod.execute_run(config, log=lambda m: None) == 0
        assert calls == [("score", [uids[3]])]
    state = (tmp_path / "out" / "state.json").read_text()
    assert not any(uid in state for uid in uids)  # instances are named by keyed digests
    # The stages get run.yaml's settings as typed args; score's inputs are the planned
    # instances themselves (no query narrows them again), and files get no store settings.
    args, _ = run_mod.ingest_args(config)
    settings = args.sources.dicomweb
    assert (settings.query, settings.max_concurrency) == ("StudyDate=19000101-", 2)
    args, _ = run_mod.score_args(config, "r1", [web(server.url)], "/m")
    assert args.sources.dicomweb.max_concurrency == 2
    args, _ = run_mod.score_args(config, "r1", [str(tmp_path)], "/m")
    assert args.sources.dicomweb == DicomwebSettings()
