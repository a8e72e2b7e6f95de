"""`dicomflow deidentify` end to end: zero leaks, every object accounted for, run-stable."""

import io
import json
import os
import secrets
import zlib
from pathlib import Path

import pydicom
import pytest
from apache_beam.io.filesystems import FileSystems
from conftest import (
    DATAFLOW_DRY_RUN,
    build,
    count_objects,
    dry_run_steps,
    phi_values,
    read_table,
)
from cryptography.exceptions import InvalidTag
from pydicom.data import get_testdata_file

from models import features as f
from pipelines import deidentify
from pipelines.options import UsageError
from transforms import dicom_io
from transforms.keys import fingerprint
from transforms.linkage import decrypt_rows

KEY = "a" * 64
OTHER_KEY = "b" * 64
LINK_KEY = "c" * 64
MULTI_PROCESSING = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("DF_TEST_KEY", KEY)
    monkeypatch.setenv("DF_OTHER_KEY", OTHER_KEY)
    monkeypatch.setenv("DF_LINK_KEY", LINK_KEY)


def run_deid(inputs: list[str], output: Path, *extra: str) -> dict:
    argv = [a for uri in inputs for a in ("--input", uri)]
    argv += ["--output", str(output), "--key-env", "DF_TEST_KEY", *extra]
    assert deidentify.run(argv) == 0
    return json.loads((output / "manifest.json").read_text())


def dataset_bytes(data: bytes) -> bytes:
    """The file as stored, plus the inflated dataset of a deflated file."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    if ds.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian:
        return data + zlib.decompress(data[dicom_io.scan.file_meta(data)[0] :], -zlib.MAX_WBITS)
    return data


@pytest.fixture(scope="module")
def deid_run(corpus, tmp_path_factory):
    os.environ["DF_TEST_KEY"] = KEY
    out = tmp_path_factory.mktemp("deid")
    manifest = run_deid([str(corpus / "export")], out)
    return out, manifest


def test_leak_scan_finds_no_planted_phi(deid_run, phi):
    """Every output byte (deflated datasets inflated) against every planted value."""
    out, manifest = deid_run
    planted = phi_values({k: v for k, v in phi.items() if k != "date"})
    files = list((out / "deid_dicom").iterdir())
    assert len(files) == manifest["counts"]["deidentified"]
    # Not vacuous: hundreds of values are looked for, in every object that was not
    # dead-lettered, and that is most of the corpus (38 of 59 objects today).
    assert len(planted) >= 100
    counts = manifest["counts"]
    assert len(files) == counts["seen"] - counts["dead_lettered"] >= 30
    for path in files:
        blob = dataset_bytes(path.read_bytes()) + path.name.encode()
        leaks = [v for v in planted if v.encode() in blob]
        assert not leaks, (path.name, leaks[:3])
    assert not [v for v in planted if v in (out / "manifest.json").read_text()]
    for row in read_table(str(out / "errors")):
        assert not [v for v in planted if v in row[f.MESSAGE]]


def test_no_original_date_survives_in_its_own_file(corpus, deid_run):
    """Dates are shifted per patient: no date of a file is left as it was."""
    out, _ = deid_run
    by_uid = {}
    for path in (out / "deid_dicom").iterdir():
        by_uid[path.stem] = pydicom.dcmread(path, stop_before_pixels=True)
    from transforms import deid

    engine = deid.Deidentifier(deid.Profile.load(), deid.DeidConfig(), KEY.encode())
    checked = 0
    for path in (corpus / "export").rglob("*"):
        if not path.is_file():
            continue
        for item in dicom_io.iter_objects(str(path), path.stat().st_size):
            if not isinstance(item, dicom_io.SourceObject):
                continue
            try:
                original = dicom_io.parse_dataset(item.data)
            except Exception:
                continue
            new_uid = engine.pseudonyms.uid(str(original.get("SOPInstanceUID", "")))
            if new_uid not in by_uid:
                continue
            dates = {str(e.value) for e in original.iterall() if e.VR in ("DA", "DT") and e.value}
            out_values = {str(e.value) for e in by_uid[new_uid].iterall() if e.VR in ("DA", "DT")}
            assert not dates & out_values
            checked += 1
    assert checked > 20


def test_every_object_is_accounted_for(corpus, deid_run):
    out, manifest = deid_run
    counts = manifest["counts"]
    assert counts["seen"] == counts["deidentified"] + counts["dead_lettered"]
    assert counts["seen"] == count_objects(corpus / "export")
    errors = read_table(str(out / "errors"))
    assert len(errors) == counts["dead_lettered"]
    kinds = {(e[f.STAGE], e[f.ERROR_TYPE]) for e in errors}
    assert ("deidentify", "burned_in_annotation") not in kinds  # redacted by default
    # The audit view: images whose text was blanked, per modality and per region height.
    by_modality = counts["redacted_images_by_modality"]
    assert 0 < sum(by_modality.values()) <= counts["deidentified"]
    assert set(by_modality) <= {"US", "SC", "OT", "XA", "CR", "DX", "XC", "ES"}
    by_height = counts["redacted_images_by_region_height"]
    assert set(by_height) <= {"1-10", "11-20", "21-48", "49+"}
    assert max(by_height.values()) <= sum(by_modality.values()) <= sum(by_height.values())
    assert ("deidentify", "unsupported_transfer_syntax") in kinds
    assert ("deidentify", "not_an_instance") in kinds  # the DICOMDIR
    assert manifest["key_fingerprint"] == fingerprint(KEY.encode())
    assert KEY not in json.dumps(manifest)
    assert manifest["deid_options"]["retain_long_modified_dates"] is True


def test_deidentified_files_are_valid_and_marked(deid_run):
    out, _ = deid_run
    for path in sorted((out / "deid_dicom").iterdir())[:40]:
        ds = pydicom.dcmread(path)
        assert path.stem == ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PatientID.startswith("PAT")
        assert not [e for e in ds if e.tag.is_private]
        if "PixelData" in ds:  # the corpus has a valid image without pixels, too
            assert ds.pixel_array.size > 0


def test_same_key_same_bytes_across_runner_modes_other_key_other_names(corpus, deid_run, tmp_path):
    out, _ = deid_run
    run_deid([str(corpus / "export")], tmp_path / "mp", *MULTI_PROCESSING)
    first = {p.name: p.read_bytes() for p in (out / "deid_dicom").iterdir()}
    again = {p.name: p.read_bytes() for p in (tmp_path / "mp" / "deid_dicom").iterdir()}
    assert first == again
    argv = ["--input", str(corpus / "export"), "--output", str(tmp_path / "other")]
    assert deidentify.run([*argv, "--key-env", "DF_OTHER_KEY"]) == 0
    other = {p.name for p in (tmp_path / "other" / "deid_dicom").iterdir()}
    assert len(other) == len(first) and not other & set(first)


def test_linkage_table_is_encrypted_and_complete(corpus, tmp_path):
    link = tmp_path / "secure" / "linkage.bin"
    run_deid(
        [str(corpus / "export")],
        tmp_path / "out",
        "--linkage-output",
        str(link),
        "--linkage-key-env",
        "DF_LINK_KEY",
    )
    data = link.read_bytes()
    rows = decrypt_rows(data, LINK_KEY.encode())
    written = [
        pydicom.dcmread(p, stop_before_pixels=True)
        for p in (tmp_path / "out" / "deid_dicom").iterdir()
    ]
    # Complete: every patient and study written has its row, and no row names anyone else.
    assert {r["patient_pseudonym"] for r in rows} == {ds.PatientID for ds in written}
    assert {r["study_pseudonym"] for r in rows} == {ds.StudyInstanceUID for ds in written}
    assert {r["patient_id"] for r in rows} <= set(phi_ids(corpus))
    # Each row pairs an original with the pseudonym the pipeline made from it.
    pseudonyms = keyed_engine().pseudonyms
    assert all(pseudonyms.patient_id(r["patient_id"]) == r["patient_pseudonym"] for r in rows)
    assert all(pseudonyms.uid(r["study_instance_uid"]) == r["study_pseudonym"] for r in rows)
    with pytest.raises(InvalidTag):
        decrypt_rows(data, KEY.encode())


def keyed_engine():
    """The de-identification the deid_run made (default options, KEY)."""
    from transforms import deid

    return deid.Deidentifier(deid.Profile.load(), deid.DeidConfig(), KEY.encode())


def phi_ids(corpus: Path) -> list[str]:
    return json.loads((corpus / "phi.json").read_text())["patient_id"]


def test_cleaning_options_leak_nothing_either(corpus, phi, tmp_path):
    """The options that keep text (cleaned) must not keep the planted PHI."""
    config = tmp_path / "clean.yaml"
    config.write_text(
        "clean_descriptors: true\nclean_structured_content: true\nclean_graphics: true\n"
    )
    run_deid([str(corpus / "export")], tmp_path / "out", "--deid-config", str(config))
    planted = phi_values({k: v for k, v in phi.items() if k != "date"})
    for path in (tmp_path / "out" / "deid_dicom").iterdir():
        blob = dataset_bytes(path.read_bytes())
        leaks = [v for v in planted if v.encode() in blob]
        assert not leaks, (path.name, leaks[:3])


def test_duplicate_instances_become_one_file_and_a_row(tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    (source / "a.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    import zipfile

    with zipfile.ZipFile(source / "copy.zip", "w") as zf:
        zf.write(source / "a.dcm", "again.dcm")
    manifest = run_deid([str(source)], tmp_path / "out")
    assert len(list((tmp_path / "out" / "deid_dicom").iterdir())) == 1
    (row,) = read_table(str(tmp_path / "out" / "errors"))
    assert (row[f.MEMBER], row[f.ERROR_TYPE]) == ("again.dcm", "duplicate_instance")
    assert manifest["counts"]["seen"] == 2


def test_a_malformed_uid_cannot_choose_the_file_name(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    uid = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    buf = io.BytesIO()
    ds.save_as(buf)
    bad = "../" * 2 + "escaped"
    source = tmp_path / "in"
    source.mkdir()
    (source / "a.dcm").write_bytes(
        buf.getvalue().replace(uid.encode(), bad.encode().ljust(len(uid), b"\0"))
    )
    config = tmp_path / "keep-uids.yaml"
    config.write_text("retain_uids: true\n")
    run_deid([str(source)], tmp_path / "out", "--deid-config", str(config))
    assert not list(tmp_path.rglob("escaped*"))
    (row,) = read_table(str(tmp_path / "out" / "errors"))
    assert row[f.ERROR_TYPE] == "invalid_uid"


def test_public_test_files_are_all_accounted_for(tmp_path):
    """pydicom's own test files and deid-data: no crash, every file in one place."""
    import deid_data

    roots = [Path(get_testdata_file("CT_small.dcm")).parent, Path(deid_data.__file__).parent]
    for i, root in enumerate(roots):
        manifest = run_deid([str(root)], tmp_path / str(i))
        counts = manifest["counts"]
        assert counts["seen"] == count_objects(root)
        assert counts["seen"] == counts["deidentified"] + counts["dead_lettered"]
        assert counts["deidentified"] >= 5


def test_dataflow_dry_run_reads_the_key_from_the_bucket(gcs, tmp_path):
    key = secrets.token_hex(32)
    key_uri = f"{gcs}/keys/deid.key"
    with FileSystems.create(key_uri) as fh:
        fh.write(key.encode())
    argv = [
        "--input=gs://bucket/export",
        "--output=gs://bucket/deid",
        f"--key-file={key_uri}",
        *DATAFLOW_DRY_RUN,
    ]
    result = build(deidentify, deidentify.DeidentifyOptions, argv).run()
    names = dry_run_steps(result)
    assert {"Deidentify", "WriteDeidDicom", "WriteErrors", "WriteManifest"} <= names
    # The key never travels: the graph holds its location, and the DoFn only a KeySource.
    fn = deidentify_fn(result)
    assert {"_config", "_key_source", "_linkage"} <= set(vars(fn))
    assert not [v for v in vars(fn).values() if isinstance(v, bytes | str) and key in str(v)]
    assert fn._key_source.file == key_uri and key not in repr(vars(fn))


def deidentify_fn(result):
    """The DeidentifyFn as the job would ship it, unpickled from the built graph."""
    from apache_beam.internal import pickler
    from apache_beam.portability.api import beam_runner_api_pb2

    from transforms.deid import DeidentifyFn

    for transform in result.job.proto_pipeline.components.transforms.values():
        if transform.spec.urn != "beam:transform:pardo:v1":
            continue
        payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
        if not payload.do_fn.payload:
            continue
        fn = pickler.loads(payload.do_fn.payload)[0]
        if isinstance(fn, DeidentifyFn):
            return fn
    raise AssertionError("no DeidentifyFn in the job")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "key is required"),
        (["--key-env", "NOT_SET_ANYWHERE"], "is not set"),
        (["--key-env", "DF_SHORT"], "shorter than 32 bytes"),
        (["--key-env", "DF_TEST_KEY", "--key-file", "k"], "only one of"),
        (["--key-env", "DF_TEST_KEY", "--runner", "DataflowRunner"], "from --key-file gs://"),
        (["--key-file", "k", "--runner", "DataflowRunner"], "from --key-file gs://"),
        (["--key-env", "DF_TEST_KEY", "--deid-config", "cfg.yaml"], "unknown de-id config keys"),
        (
            [
                "--key-env",
                "DF_TEST_KEY",
                "--linkage-output",
                "l",
                "--linkage-key-env",
                "DF_TEST_KEY",
            ],
            "must differ",
        ),
    ],
)
def test_bad_keys_and_configs_fail_before_any_work(extra, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DF_SHORT", "tooshort")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.dcm").write_bytes(b"x")
    (tmp_path / "cfg.yaml").write_text("retain_everything: true\n")
    with pytest.raises(UsageError, match=message):
        deidentify.run(["--input", "in", "--output", "out", *extra])
    assert not (tmp_path / "out").exists()
