"""Tests for transforms.testing: the synthetic PACS export."""

from __future__ import annotations

import io
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.errors import InvalidDicomError

from transforms import testing as synth
from transforms.testing import (
    CORRUPT_MEMBER,
    CORRUPT_ZIP,
    JUNK,
    KINDS,
    UNSUPPORTED_TS,
    CorpusPart,
    SynthFile,
    available_transfer_syntaxes,
    datasets,
    identities,
    images,
    synth_extras,
    synth_patient,
)

SEED = 7


@pytest.fixture(scope="module")
def patients() -> list[CorpusPart]:
    return [synth_patient(i, SEED) for i in range(8)]


@pytest.fixture(scope="module")
def extras() -> CorpusPart:
    return synth_extras(SEED)


def _members(f: SynthFile) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of a loose file, or of every readable member of an archive."""
    if f.path.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(f.data)) as zf:
            for name in zf.namelist():
                if f.path == CORRUPT_ZIP and name == CORRUPT_MEMBER:
                    continue
                yield f"{f.path}/{name}", zf.read(name)
    elif f.path.endswith(".tar.gz"):
        with tarfile.open(fileobj=io.BytesIO(f.data), mode="r:gz") as tf:
            for member in tf.getmembers():
                yield f"{f.path}/{member.name}", tf.extractfile(member).read()
    else:
        yield f.path, f.data


def _images(parts: list[CorpusPart]) -> Iterator[tuple[str, pydicom.Dataset]]:
    """Every image dataset in the parts: DICOMDIR and junk left out, bar the broken zip's
    readable members."""
    for part in parts:
        for f in part.files:
            if f.path.startswith("export/junk/") and f.path != CORRUPT_ZIP:
                continue
            for path, data in _members(f):
                if not path.endswith("DICOMDIR"):
                    yield path, pydicom.dcmread(io.BytesIO(data))


def _plain_text(part: CorpusPart) -> bytes:
    """Paths and bytes of a part with archives unpacked and deflated datasets inflated."""
    chunks = []
    for f in part.files:
        chunks.append(f.path.encode())
        for path, data in _members(f):
            chunks += [path.encode(), data]
            if uid.DeflatedExplicitVRLittleEndian.encode() in data[:400]:
                ds = pydicom.dcmread(io.BytesIO(data))
                ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                chunks.append(buf.getvalue())
    return b"\n".join(chunks)


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_identical_bytes() -> None:
    assert synth_patient(3, 11) == synth_patient(3, 11)
    assert synth_extras(11) == synth_extras(11)


def test_other_seed_or_index_gives_other_bytes() -> None:
    base = {f.data for f in synth_patient(3, 11).files}
    assert base.isdisjoint(f.data for f in synth_patient(3, 12).files)
    assert base.isdisjoint(f.data for f in synth_patient(4, 11).files)
    assert synth_extras(11).files[-1].data != synth_extras(12).files[-1].data


def test_negative_index_or_seed_is_refused() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        synth_patient(-1, 0)
    with pytest.raises(ValueError, match="must be >= 0"):
        synth_patient(0, -5)
    with pytest.raises(ValueError, match="must be >= 0"):
        synth_extras(-1)


def test_names_are_unique_for_100k_patients() -> None:
    names = {identities._name_parts(i, SEED) for i in range(100_000)}
    assert len(names) == 100_000
    parts = synth.FAMILY + synth.GIVEN + synth.MIDDLE
    assert len(set(parts)) == len(parts) and min(map(len, parts)) >= 5


# ---------------------------------------------------------------- content coverage


def test_seven_patients_cover_every_kind(patients: list[CorpusPart]) -> None:
    seen = {}
    for _, ds in _images(patients[:7]):
        seen.setdefault(ds.Modality, []).append(ds)
    assert set(seen) == {"CT", "CR", "DX", "MR", "US", "XA", "OT"}
    for ds in seen["CT"]:  # signed CT pads outside the field of view with -2000
        assert (ds.pixel_array.min() < 0) == (ds.PixelRepresentation == 1)
    assert all(ds.RescaleSlope == 1 and ds.RescaleIntercept == -1024 for ds in seen["CT"])
    assert {ds.PhotometricInterpretation for ds in seen["CR"]} == {"MONOCHROME1"}
    assert {ds.PhotometricInterpretation for ds in seen["DX"]} == {"MONOCHROME2"}
    assert {ds.pixel_array.dtype.str[1:] for ds in seen["MR"]} == {"u2"}  # big endian: ">u2"
    assert {ds.BurnedInAnnotation for ds in seen["US"]} == {"YES"}
    for ds in seen["XA"]:
        assert ds.SOPClassUID == uid.XRayAngiographicImageStorage
        assert 4 <= ds.NumberOfFrames <= 8 and ds.FrameIncrementPointer == 0x00181063
        assert ds.pixel_array.shape == (ds.NumberOfFrames, ds.Rows, ds.Columns)
    for ds in seen["OT"]:
        assert ds.SOPClassUID == uid.SecondaryCaptureImageStorage
        assert ds.SamplesPerPixel == 3 and ds.PlanarConfiguration == 0
        assert ds.PhotometricInterpretation in ("RGB", "YBR_FULL_422")
    for modality, kind_datasets in seen.items():
        kind = next(k for k in KINDS.values() if k.modality == modality)
        assert {ds.SOPClassUID for ds in kind_datasets} == {kind.sop_class}


@pytest.mark.parametrize("seed", [0, 1, SEED])
def test_seven_patients_use_every_available_syntax(seed: int) -> None:
    parts = [synth_patient(i, seed) for i in range(7)]
    used = {ds.file_meta.TransferSyntaxUID for _, ds in _images(parts)}
    assert used == set(available_transfer_syntaxes())
    paths = [f.path for p in parts for f in p.files]
    assert any(p.endswith(".zip") for p in paths) and any(p.endswith(".tar.gz") for p in paths)
    assert any("/IMG" in p for p in paths)  # and loose files


def test_available_syntaxes_are_the_eight_expected_here() -> None:
    assert set(available_transfer_syntaxes()) == set(synth.TRANSFER_SYNTAXES)
    assert available_transfer_syntaxes() is not available_transfer_syntaxes()  # callers' copies


def test_every_image_is_valid_part10_and_decodes(
    patients: list[CorpusPart], extras: CorpusPart
) -> None:
    count = 0
    for path, ds in _images([*patients, extras]):
        meta = ds.file_meta
        assert meta.MediaStorageSOPClassUID == ds.SOPClassUID, path
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID, path
        assert meta.ImplementationClassUID and ds.preamble is not None
        arr = ds.pixel_array
        frames = ds.get("NumberOfFrames", 1)
        expected = (ds.Rows, ds.Columns) + ((3,) if ds.SamplesPerPixel == 3 else ())
        assert arr.shape == ((frames,) if frames > 1 else ()) + expected, path
        if 0x60003000 in ds:  # the overlay bitmap draws the patient ID
            mask = images._text_mask((ds.Rows, ds.Columns), [ds.PatientID])
            assert np.array_equal(ds.overlay_array(0x6000), mask.astype(np.uint8)), path
        count += 1
    assert count > 30


def test_big_endian_pixel_bytes_are_swapped(patients: list[CorpusPart]) -> None:
    found = 0
    for _, ds in _images(patients):
        if ds.file_meta.TransferSyntaxUID == uid.ExplicitVRBigEndian and ds.BitsAllocated == 16:
            dtype = ">i2" if ds.PixelRepresentation else ">u2"
            raw = np.frombuffer(ds.PixelData, dtype).reshape(ds.Rows, ds.Columns)
            assert np.array_equal(raw, ds.pixel_array)
            found += 1
    assert found


def _kind_array(kind: str, signed: bool = False) -> np.ndarray:
    rng = np.random.default_rng([1, len(kind), signed])
    rows, cols = (100, 180) if kind == "US" else (61, 77)
    return images._stored_pixels(kind, images._phantom(rng, rows, cols, True), rng, signed)


ENCODE_CASES = [
    pytest.param(kind, signed, ts, id=f"{kind}{'-signed' * signed}-{uid.UID(ts).keyword}")
    for kind, signed in [*((k, False) for k in KINDS), ("CT", True)]
    for ts in synth.TRANSFER_SYNTAXES
    if images._fits(ts, KINDS[kind])
]


@pytest.mark.parametrize("kind,signed,ts", ENCODE_CASES)
def test_encode_round_trips_to_the_source_array(kind: str, signed: bool, ts: str) -> None:
    arr = _kind_array(kind, signed)
    person = identities._person(np.random.default_rng(0), "ROUNDTRIP", "TESTER", "", "PID999")
    study = identities._study(np.random.default_rng(0), kind, (0,), 0.0)
    ds = datasets._image_dataset(person, study, 1, 1, arr, np.random.default_rng(0))
    out = pydicom.dcmread(io.BytesIO(images._encode(ds, arr, ts))).pixel_array
    assert out.shape == arr.shape and out.dtype.str[1:] == arr.dtype.str[1:]
    if ts in synth.LOSSY_SYNTAXES:
        assert np.abs(out.astype(int) - arr).mean() < 6
    else:
        assert np.array_equal(out, arr)


# ---------------------------------------------------------------- labels and lesions


def test_labels_match_instances(patients: list[CorpusPart]) -> None:
    for part in patients:
        images = {ds.SOPInstanceUID: ds for _, ds in _images([part])}
        assert {row["SOPInstanceUID"] for row in part.labels} == set(images)
        assert len(part.labels) == len(images)
        by_accession: dict[str, set[str]] = {}
        for row in part.labels:
            assert images[row["SOPInstanceUID"]].AccessionNumber == row["AccessionNumber"]
            by_accession.setdefault(row["AccessionNumber"], set()).add(row["label"])
        assert all(len(v) == 1 and v <= {"0", "1"} for v in by_accession.values())


def test_positive_rate_is_respected() -> None:
    studies = {}
    for i in range(50):
        for row in synth_patient(i, 3).labels:
            studies[row["AccessionNumber"]] = row["label"]
    rate = list(studies.values()).count("1") / len(studies)
    assert 0.08 < rate < 0.35
    assert {r["label"] for r in synth_patient(0, 3, positive_rate=1.0).labels} == {"1"}
    assert {r["label"] for r in synth_patient(0, 3, positive_rate=0.0).labels} == {"0"}


def test_positive_studies_differ_from_negative_only_by_a_local_blob() -> None:
    # The label draw does not depend on the rate, so both corpora share every other pixel.
    positive, negative = synth_patient(0, 5, positive_rate=1.0), synth_patient(0, 5, 0.0)
    pairs = zip(_images([positive]), _images([negative]), strict=True)
    compared = 0
    for (_, pos), (_, neg) in pairs:
        assert pos.SOPInstanceUID == neg.SOPInstanceUID
        if pos.file_meta.TransferSyntaxUID in synth.LOSSY_SYNTAXES:
            continue
        changed = np.mean(pos.pixel_array != neg.pixel_array)
        assert 0.002 < changed < 0.6, pos.Modality
        compared += 1
    assert compared


def test_lesion_is_a_bright_blob_inside_the_body() -> None:
    for seed in range(10):
        with_blob = images._phantom(np.random.default_rng(seed), 120, 140, True)
        without = images._phantom(np.random.default_rng(seed), 120, 140, False)
        diff = with_blob - without
        peak = np.unravel_index(np.argmax(diff), diff.shape)
        assert diff.max() > 0.15 and diff.min() >= 0
        assert without[peak] > 0.3  # the peak lies in the body, not in the air around it


# ---------------------------------------------------------------- PHI


def test_every_phi_value_occurs_in_the_files(
    patients: list[CorpusPart], extras: CorpusPart
) -> None:
    for part in [*patients, extras]:
        text = _plain_text(part)
        for category, values in part.phi.items():
            assert values, category
            for value in values:
                assert value.encode() in text, (category, value)


def test_phi_categories_and_placements(patients: list[CorpusPart]) -> None:
    part = patients[0]
    expected = {"patient_name", "patient_name_parts", "patient_id", "other_patient_id"}
    expected |= {"birth_date", "address", "phone", "accession_number", "institution_name"}
    expected |= {"physician_name", "operator_name", "uid", "date", "private_value"}
    assert expected <= set(part.phi)
    name, pid = part.phi["patient_name"][0], part.phi["patient_id"][0]
    _, ds = next(iter(_images([part])))
    assert name.replace("^", "_") in next(iter(part.files)).path and pid in part.files[0].path
    assert ds.OtherPatientIDsSequence[0].PatientID in part.phi["other_patient_id"]
    context = ds.RequestAttributesSequence[0].ScheduledProtocolCodeSequence[0]
    assert name in context.ProtocolContextSequence[0].TextValue
    assert ds.RequestAttributesSequence[0].RequestedProcedureID in part.phi["procedure_id"]
    assert name in ds.StudyDescription
    assert {ds.SOPInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID} <= set(part.phi["uid"])


def test_private_tags_hold_name_and_id(patients: list[CorpusPart]) -> None:
    checked = 0
    for _, ds in _images(patients):
        if ds.file_meta.TransferSyntaxUID == uid.ImplicitVRLittleEndian:
            continue  # private VRs are unknown there: values come back as raw bytes
        block = ds.private_block(0x0011, synth.PRIVATE_CREATOR)
        assert block[0x01].value == str(ds.PatientName) and block[0x02].value == ds.PatientID
        item = block[0x10].value[0]
        assert item.private_block(0x0011, synth.PRIVATE_CREATOR)[0x01].value == ds.PatientName
        checked += 1
    assert checked


def test_burned_in_text_is_drawn_and_recorded_box_by_box(patients: list[CorpusPart]) -> None:
    by_uid = {str(ds.SOPInstanceUID): ds for _, ds in _images(patients)}
    boxes = [b for part in patients for b in part.text_boxes]
    with_text = {b["sop_instance_uid"] for b in boxes}
    for ds in by_uid.values():
        if ds.Modality in ("US", "OT"):  # ultrasound and screenshots always carry text
            assert str(ds.SOPInstanceUID) in with_text
        if str(ds.SOPInstanceUID) in with_text and ds.Modality in ("CR", "DX", "XA"):
            assert "BurnedInAnnotation" not in ds  # radiographs often lack it: risky
    checked = 0
    for b in boxes:
        ds = by_uid[b["sop_instance_uid"]]
        x0, y0, x1, y1 = b["box"]
        assert 0 <= x0 < x1 <= ds.Columns and 0 <= y0 < y1 <= ds.Rows
        if ds.file_meta.TransferSyntaxUID in synth.LOSSY_SYNTAXES:
            continue
        arr = ds.pixel_array if ds.get("NumberOfFrames", 1) > 1 else ds.pixel_array[None]
        region = arr[b["frame"], y0:y1, x0:x1].reshape(-1, ds.SamplesPerPixel)
        # The glyphs share one stored value: the most common one covers a good part.
        _, counts = np.unique(region, axis=0, return_counts=True)
        assert counts.max() >= 0.15 * len(region), b["text"]
        checked += 1
    assert checked > 50
    for part in patients:
        texts = {b["text"] for b in part.text_boxes if b["phi"]}
        assert not part.text_boxes or f"ID: {part.phi['patient_id'][0]}" in texts
    assert {b["text"] for b in boxes if not b["phi"]} <= {"L", "R"}  # laterality markers
    assert synth_patient(1, SEED).text_boxes == patients[1].text_boxes  # deterministic


def test_loose_files_follow_the_export_layout(patients: list[CorpusPart]) -> None:
    pattern = re.compile(r"export/[A-Z_]+_PID\d{6}/\d{8}_AC\d+/S\d/IMG\d(\.dcm)?")
    loose = [f.path for p in patients for f in p.files if "IMG" in f.path]
    assert loose and all(pattern.fullmatch(path) for path in loose)
    with_ext = sum(path.endswith(".dcm") for path in loose) / len(loose)
    assert 0.25 < with_ext < 0.75
    archives = [f for p in patients for f in p.files if f.path.endswith((".zip", ".tar.gz"))]
    assert archives
    for archive in archives:
        folder = archive.path.split("/")[1]  # NAME_PID, also the start of the archive name
        assert archive.path.split("/")[2].startswith(folder)
        for path, _ in _members(archive):
            member = path[len(archive.path) + 1 :]
            assert re.fullmatch(rf"{folder}/\d{{8}}_AC\d+/S\d/IMG\d(\.dcm)?", member), member


# ---------------------------------------------------------------- extras


def _extra(extras: CorpusPart, name: str) -> bytes:
    return next(f.data for f in extras.files if f.path == f"export/junk/{name}")


def test_dicomdir_export_lists_the_extra_patient(extras: CorpusPart) -> None:
    paths = {f.path: f.data for f in extras.files}
    dicomdir_path = next(p for p in paths if p.endswith("/DICOMDIR"))
    root = dicomdir_path.rsplit("/", 1)[0]
    assert root.startswith("export/CDROM_")
    records = pydicom.dcmread(io.BytesIO(paths[dicomdir_path])).DirectoryRecordSequence
    patient = next(r for r in records if r.DirectoryRecordType == "PATIENT")
    assert patient.PatientName == extras.phi["patient_name"][0]
    images = [r for r in records if r.DirectoryRecordType == "IMAGE"]
    assert len(images) == 2
    for record in images:
        assert f"{root}/{'/'.join(record.ReferencedFileID)}" in paths


def test_junk_constants_and_paths(extras: CorpusPart) -> None:
    paths = {f.path for f in extras.files}
    assert {f"export/junk/{name}" for name in JUNK} | {CORRUPT_ZIP} <= paths
    values = [v for vs in extras.phi.values() for v in vs]
    assert not any(v in p for p in paths if p.startswith("export/junk/") for v in values)


@pytest.mark.parametrize("name", ["README.txt", "empty.dcm", "Thumbs.db"])
def test_non_dicom_junk_is_not_dicom(extras: CorpusPart, name: str) -> None:
    with pytest.raises(InvalidDicomError):
        pydicom.dcmread(io.BytesIO(_extra(extras, name)))
    assert (len(_extra(extras, name)) == 0) == (JUNK[name] == "empty")


def test_truncated_file_gives_no_pixels(extras: CorpusPart) -> None:
    ds = pydicom.dcmread(io.BytesIO(_extra(extras, "truncated.dcm")))
    assert ds.Modality == "CT"
    with pytest.raises(ValueError, match="less than expected"):
        _ = ds.pixel_array


def test_no_pixels_file_is_an_image_header_without_pixel_data(extras: CorpusPart) -> None:
    ds = pydicom.dcmread(io.BytesIO(_extra(extras, "no_pixels.dcm")))
    assert ds.SOPClassUID == uid.CTImageStorage and ds.Rows and "PixelData" not in ds


def test_unsupported_syntax_parses_but_does_not_decode(extras: CorpusPart) -> None:
    ds = pydicom.dcmread(io.BytesIO(_extra(extras, "unsupported.dcm")))
    assert ds.file_meta.TransferSyntaxUID == UNSUPPORTED_TS and ds.PatientID
    with pytest.raises(NotImplementedError):
        _ = ds.pixel_array


def test_corrupt_zip_member_raises_and_the_others_read(extras: CorpusPart) -> None:
    with zipfile.ZipFile(
        io.BytesIO(next(f.data for f in extras.files if f.path == CORRUPT_ZIP))
    ) as zf:
        assert CORRUPT_MEMBER in zf.namelist() and len(zf.namelist()) == 3
        with pytest.raises((zipfile.BadZipFile, zlib.error)):
            zf.read(CORRUPT_MEMBER)
        for name in synth.GOOD_ZIP_MEMBERS:
            assert pydicom.dcmread(io.BytesIO(zf.read(name))).pixel_array.shape == (48, 48)
