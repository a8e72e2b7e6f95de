"""The leak scan: the adversarial corpus (tests/adversarial.py) through `dicomflow deidentify`
and `dicomflow ingest` under the default configuration, every output byte searched; and
public test files (pydicom's, deid-data) searched for their own identifiers."""

import io
import json
import logging
from pathlib import Path

import adversarial as adv
import adversarial_keeplist as ak
import pydicom
import pytest
from pydicom.data import get_testdata_file

from pipelines import deidentify, ingest
from transforms import deid

KEY = "d" * 64


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adversarial")
    adv.write_corpus(root / "export", count=3)
    return root / "export"


def _run(command, argv: list[str], capfd, caplog) -> str:
    with caplog.at_level(logging.INFO):  # DEBUG is Beam tracing every element, sources too
        assert command.run(argv) == 0
    out, err = capfd.readouterr()
    return out + err + caplog.text


def test_deidentify_outputs_hold_no_planted_value(corpus, tmp_path, monkeypatch, capfd, caplog):
    monkeypatch.setenv("DF_LEAK_KEY", KEY)
    out = tmp_path / "deid"
    argv = ["--input", str(corpus), "--output", str(out), "--key-env", "DF_LEAK_KEY"]
    logs = _run(deidentify, argv, capfd, caplog)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["deidentified"] == 3
    found = adv.output_texts(out, logs)
    assert len([k for k in found if k.endswith(".dcm")]) == 3
    assert adv.leaks(found) == {}
    # What the net removed is counted by keyword, never by value.
    removed = manifest["counts"]["deid_net_removed"]
    assert removed["WaveformData"] == 3 and removed["unknown_public_tag"] == 12
    assert manifest["counts"]["invalid_modality"] == 1
    assert manifest["counts"]["deid_identifiers_removed"]["Manufacturer"] == 3
    assert manifest["counts"]["by_modality"] == {"CT": 2, "OT": 1}


def test_ingest_outputs_hold_no_planted_value(corpus, tmp_path, monkeypatch, capfd, caplog):
    monkeypatch.setenv("DF_LEAK_KEY", KEY)
    out = tmp_path / "ingest"
    argv = ["--input", str(corpus), "--output", str(out), "--key-env", "DF_LEAK_KEY"]
    logs = _run(ingest, argv, capfd, caplog)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["converted"] == 3
    found = adv.output_texts(out, logs)
    assert any("tfrecord" in k for k in found) and any("index" in k for k in found)
    assert adv.leaks(found) == {}
    assert manifest["counts"]["invalid_modality"] == 1


def test_the_scanner_finds_what_it_looks_for(corpus, tmp_path):
    """The scan itself can fail: the raw corpus leaks in every category, in every form."""
    found = adv.output_texts(corpus)
    assert set(adv.leaks(found)) == set(adv.counts_by_category())
    for form in ("utf-16-le", "latin-1"):
        blob = f"x {adv.ACCENTED} y".encode(form)
        (tmp_path / "a.bin").write_bytes(blob)
        assert "charset" in adv.leaks(adv.output_texts(tmp_path))
    double = adv.ACCENTED.encode().decode("latin-1").encode()
    (tmp_path / "a.bin").write_bytes(double)
    assert "charset" in adv.leaks(adv.output_texts(tmp_path))


# --- the keep-list corpus: one case per leak class of issue 23 -----------------------------


@pytest.fixture(scope="module")
def keeplist_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("keeplist") / "export"
    ak.write_corpus(root)
    return root


def test_keeplist_plants_sit_in_keep_listed_attributes():
    """The corpus tests the content check, not the keep-list: every attribute it plants in
    is one the keep-list lets through."""
    keep = deid.KeepList.load().keep
    for name in ak.KEEPLISTED:
        assert pydicom.datadict.tag_for_keyword(name) in keep, name


def test_deidentify_keeps_no_value_planted_where_the_keep_list_lets_values_through(
    keeplist_corpus, tmp_path, monkeypatch, capfd, caplog
):
    monkeypatch.setenv("DF_LEAK_KEY", KEY)
    out = tmp_path / "deid"
    argv = ["--input", str(keeplist_corpus), "--output", str(out), "--key-env", "DF_LEAK_KEY"]
    logs = _run(deidentify, argv, capfd, caplog)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["deidentified"] == 3
    found = adv.output_texts(out, logs)
    assert adv.leaks(found, ak.PLANTED) == {}
    counts = manifest["counts"]
    # Each class is counted per keyword: content, own identifiers, VRs, codes, pixels.
    assert counts["deid_content_changed"]["ProcessingFunction"] == 1
    assert counts["deid_content_changed"]["RealWorldValueLUTData"] == 1
    assert counts["deid_identifiers_removed"]["AcquisitionNumber"] == 1
    assert counts["deid_identifiers_removed"]["TransmitCoilName"] == 1
    assert counts["deid_vr_invalid"]["PositionerType"] == 1
    assert counts["deid_local_codes"]["CodingSchemeDesignator"] == 3
    assert counts["deid_pixel_streams"] == {
        "bits_above_stored": 2,
        "icc_profile_text": 1,
        "stream_segments": 1,
        "trailing_bytes": 1,
    }
    outputs = {p.name: pydicom.dcmread(p) for p in out.rglob("*.dcm")}
    assert len(outputs) == 3
    for ds in outputs.values():
        assert not ak.bits_above_stored(ds)
        assert list(ds.ImageType)[:3] in (
            ["ORIGINAL", "PRIMARY", "AXIAL"],
            ["ORIGINAL", "PRIMARY", "OTHER"],  # value 3 was the patient's name
        )
    kernels = {str(ds.get("ConvolutionKernel", "")) for ds in outputs.values()}
    assert "B30f" in kernels  # the technical part of a cleaned value stays
    models = {str(ds.get("ManufacturerModelName", "")) for ds in outputs.values()}
    assert "SOMATOM Definition AS+" in models
    jpeg = [ds for ds in outputs.values() if ds.file_meta.TransferSyntaxUID.is_encapsulated]
    assert len(jpeg) == 1 and jpeg[0].pixel_array.shape == (16, 16)


def test_ingest_keeps_no_value_planted_where_the_keep_list_lets_values_through(
    keeplist_corpus, tmp_path, monkeypatch, capfd, caplog
):
    monkeypatch.setenv("DF_LEAK_KEY", KEY)
    out = tmp_path / "ingest"
    argv = ["--input", str(keeplist_corpus), "--output", str(out), "--key-env", "DF_LEAK_KEY"]
    logs = _run(ingest, argv, capfd, caplog)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["converted"] == 3
    found = adv.output_texts(out, logs)
    assert any("tfrecord" in k for k in found) and any("index" in k for k in found)
    assert adv.leaks(found, ak.PLANTED) == {}


def test_the_scanner_finds_every_keeplist_plant_in_the_raw_corpus(keeplist_corpus):
    found = adv.output_texts(keeplist_corpus)
    assert set(adv.leaks(found, ak.PLANTED)) == set(adv.counts_by_category(ak.PLANTED))
    raw = [pydicom.dcmread(p) for p in sorted(keeplist_corpus.glob("*.dcm"))]
    assert sum(ak.bits_above_stored(ds) for ds in raw) == 2


# --- public test files ---------------------------------------------------------------------

_IDENTIFYING_VRS = {"PN", "LO", "SH", "ST", "LT", "UT", "UC"}


def _public_files() -> list[Path]:
    """pydicom's own test files, pydicom-data's (installed from the wheel, which holds the
    files: nothing is fetched) and deid-data's."""
    import data_store  # pydicom-data
    import deid_data

    roots = [
        Path(get_testdata_file("CT_small.dcm")).parent,
        Path(data_store.__file__).parent,
        Path(deid_data.__file__).parent,
    ]
    return sorted(p for root in roots for p in root.rglob("*.dcm"))


def _identifiers(ds, table: deid.Deidentifier) -> set[str]:
    """Values of the table's removed or replaced text attributes (names, IDs, institutions),
    six characters or more, at any depth; not those that a kept technical attribute holds
    too (a station named after its manufacturer)."""
    out, kept = set(), set()
    keep = deid.KeepList.load().keep
    for elem in ds.iterall():
        if int(elem.tag) in keep:
            kept.add(str(elem.value).strip())
        if elem.VR not in _IDENTIFYING_VRS or elem.tag.is_private:
            continue
        action = table.action_for(int(elem.tag))
        if action in ("X", "Z", "D") or elem.VR == "PN":
            for value in elem.value if elem.VM > 1 else [elem.value]:
                value = str(value).strip()
                if len(value) >= 6 and any(c.isalpha() for c in value):
                    out.add(value)
    return {v for v in out if not any(v in k for k in kept)}


@pytest.fixture(scope="module")
def public_results() -> list[tuple[str, pydicom.Dataset, bytes, set[str]]]:
    """(name, original, de-identified bytes, the original's identifiers) for every public
    test file the engine accepts."""
    engine = deid.Deidentifier(
        deid.Profile.load(), deid.DeidConfig(pixels=deid.PixelPolicy(policy="keep")), b"k" * 32
    )
    out = []
    for path in _public_files():
        try:
            data = path.read_bytes()
            original = pydicom.dcmread(io.BytesIO(data), force=True)
            values = _identifiers(original, engine)
            result, _ = deid.deidentify_object(data, engine)
        except Exception:  # unreadable or refused files are the parser tests' business
            continue
        out.append((str(path), original, result.data, values))
    return out


def test_public_files_keep_none_of_their_identifiers(public_results):
    """pydicom's test files and deid-data: no removed identifier reappears in the output."""
    leaked = []
    for name, _original, data, values in public_results:
        text = data.decode("latin-1")
        decoded = " ".join(str(e.value) for e in pydicom.dcmread(io.BytesIO(data)).iterall())
        leaked += [(Path(name).name, v) for v in values if v in text or v in decoded]
    assert len(public_results) >= 140
    assert leaked == [], leaked[:20]


# Technical values of real exports: vendor, model, kernel, sequence, geometry, exposure.
TECHNICAL = (
    "Manufacturer ManufacturerModelName ConvolutionKernel SequenceName ScanningSequence "
    "SequenceVariant ScanOptions MRAcquisitionType ImageType BodyPartExamined "
    "PatientPosition ViewPosition SliceThickness PixelSpacing SpacingBetweenSlices "
    "ImageOrientationPatient ImagePositionPatient SliceLocation KVP ExposureTime "
    "XRayTubeCurrent Exposure RepetitionTime EchoTime InversionTime FlipAngle "
    "MagneticFieldStrength EchoTrainLength FilterType FocalSpots ReceiveCoilName "
    "TransmitCoilName Rows Columns PhotometricInterpretation BitsStored"
).split()


def _as_list(ds: pydicom.Dataset, keyword: str) -> list[str]:
    if keyword not in ds:
        return []
    elem = ds[keyword]
    if elem.value is None or elem.value == "":
        return []
    return [str(v) for v in (elem.value if elem.VM > 1 else [elem.value])]


def test_public_image_files_keep_their_technical_values(public_results):
    """Utility: at least 98 % of the technical values of pydicom's and pydicom-data's image
    files leave unchanged (the content check cleans values, it must not empty exports);
    ImageType never leaves with a required value empty."""
    kept = total = 0
    for name, original, data, _values in public_results:
        if "PixelData" not in original or "deid_data" in Path(name).parts:
            continue  # image files of pydicom and pydicom-data only
        out = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        for keyword in TECHNICAL:
            before, after = _as_list(original, keyword), _as_list(out, keyword)
            total += len(before)
            kept += sum(1 for i, v in enumerate(before) if i < len(after) and after[i] == v)
        image_type = _as_list(out, "ImageType")
        assert "" not in image_type[:3], (Path(name).name, image_type)
    assert total > 1000
    assert kept / total >= 0.98, f"{kept}/{total}"
