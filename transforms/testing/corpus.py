"""Synthetic PACS export: DICOM studies with planted PHI, labels, archives and junk."""

from __future__ import annotations

import gzip
import io
import os
import struct
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field

import numpy as np
from pydicom import dcmwrite, uid
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet

from transforms.testing.burnin import BURNED_KINDS, MIN_SIDE, TextBox, burn_text, text_lines
from transforms.testing.datasets import _image_dataset, available_transfer_syntaxes
from transforms.testing.difficulty import DEFAULT, SKE, Difficulty
from transforms.testing.identities import (
    _EXTRA_FAMILY,
    _EXTRA_GIVEN,
    _name_parts,
    _Person,
    _person,
    _Phi,
    _Study,
    _study,
    _uid,
)
from transforms.testing.images import (
    CYCLE,
    KINDS,
    _encode,
    _fits,
    _image_size,
    _phantom,
    _set_encapsulated,
    _stored_pixels,
    lesion_mask,
    phantom_and_lesion,
)
from transforms.testing.masks import (
    RTSTRUCT_KINDS,
    RTSTRUCT_SERIES_NUMBER,
    SEG_SERIES_NUMBER,
    rtstruct_dataset,
    seg_dataset,
)


@dataclass(frozen=True)
class SynthFile:
    path: str  # relative POSIX path under the output root, no leading slash
    data: bytes


@dataclass
class CorpusPart:
    files: list[SynthFile]
    phi: dict[str, list[str]]  # category -> planted values, exactly as written
    labels: list[dict[str, str]]  # labels.csv rows: AccessionNumber, SOPInstanceUID, label
    # Burned-in text, one dict per line per frame: file, member, sop_instance_uid, frame,
    # box [x0, y0, x1, y1] (pixels, end-exclusive), text, phi (False for a marker).
    text_boxes: list[dict] = field(default_factory=list)
    # With masks: every image's exact lesion mask (rows x cols uint8 0/1; all zero without
    # a lesion), by the image's original SOP Instance UID; and one row per SEG or RTSTRUCT
    # written: file, member, kind (seg | rtstruct), sop_instance_uid, referenced (image UIDs).
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    mask_objects: list[dict] = field(default_factory=list)


UNSUPPORTED_TS = "1.2.840.10008.1.2.4.112"  # JPEG XL: no pydicom decoder exists
JUNK = {
    "README.txt": "not_dicom",
    "empty.dcm": "empty",
    "truncated.dcm": "truncated",
    "no_pixels.dcm": "no_pixel_data",
    "unsupported.dcm": "unsupported_transfer_syntax",
    "Thumbs.db": "not_dicom",
}
CORRUPT_ZIP = "export/junk/broken_study.zip"
CORRUPT_MEMBER = "broken_study/S1/IMG2.dcm"
GOOD_ZIP_MEMBERS = ("broken_study/S1/IMG1.dcm", "broken_study/S1/IMG3.dcm")


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))  # fixed: stable bytes
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def _tar_gz(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tf.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), mtime=0)


def _deliver(
    p: _Person, st: _Study, study_no: int, index: int, images: list[tuple[int, int, bytes]]
) -> tuple[list[SynthFile], list[tuple[str, str | None]]]:
    """Loose files in nested folders, or one zip / tar.gz per study, as PACS exports do.

    Returns:
        The files, and where each image went: (file path, archive member or None).
    """
    study_dir = f"{st.date}_{st.accession}"
    mode = ("loose", "loose", "zip", "tar.gz")[(index + 3 * study_no) % 4]
    members = []
    for series_no, number, data in images:
        ext = ".dcm" if (series_no + number + index) % 2 else ""
        members.append((f"{study_dir}/S{series_no}/IMG{number}{ext}", data))
    if mode == "loose":
        files = [SynthFile(f"export/{p.folder}/{name}", data) for name, data in members]
        return files, [(f.path, None) for f in files]
    nested = [(f"{p.folder}/{name}", data) for name, data in members]
    if mode == "zip":
        archive = SynthFile(f"export/{p.folder}/{p.folder}_{study_dir}.zip", _zip(nested))
    else:
        archive = SynthFile(f"export/{p.folder}/{p.folder}_{study_dir}.tar.gz", _tar_gz(nested))
    return [archive], [(archive.path, name) for name, _ in nested]


def _record_person(phi: _Phi, p: _Person) -> None:
    phi.add("patient_name", p.name, p.name.replace("^", "_"), f"{p.family}, {p.given}")
    phi.add("patient_name_parts", *(n for n in (p.family, p.given, p.middle) if len(n) >= 4))
    phi.add("patient_id", p.pid)
    phi.add("other_patient_id", p.other_id)
    phi.add("birth_date", p.birth_date)
    phi.add("address", p.address)
    phi.add("phone", p.phone)
    phi.add("private_value", p.private_key)
    phi.add("uid", p.uid)


def _record_study(phi: _Phi, st: _Study) -> None:
    phi.add("accession_number", st.accession)
    phi.add("institution_name", st.institution[0])
    phi.add("institution_address", st.institution[1])
    phi.add("physician_name", st.referring, st.performing)
    phi.add("operator_name", st.operator)
    phi.add("procedure_id", st.rp_id, st.sps_id)
    phi.add("date", st.date)
    phi.add("uid", st.uid)


def _record_image(phi: _Phi, ds: Dataset) -> None:
    phi.add("uid", ds.SeriesInstanceUID, ds.FrameOfReferenceUID, ds.SOPInstanceUID)


def _study_images(
    p: _Person,
    st: _Study,
    key: tuple[int, int, int],
    rng: np.random.Generator,
    counter: int,
    difficulty: Difficulty = DEFAULT,
) -> tuple[list[tuple[int, int, bytes]], list[Dataset], list[list[TextBox]], list]:
    """Encoded images (series, number, bytes) of one study, their datasets, the burned-in
    text boxes and the lesion outline (or None) of each image."""
    kind = KINDS[st.kind]
    fits = [ts for ts in available_transfer_syntaxes() if _fits(ts, kind)]
    images, datasets, texts, outlines = [], [], [], []
    for series_no in range(1, int(rng.integers(1, 3)) + 1):
        for number in range(1, int(rng.integers(1, 4)) + 1):
            img_rng = np.random.default_rng([*key, series_no, number])
            outline = None
            if difficulty.mode == SKE:  # white noise only: no body, no burned-in text
                img = difficulty.ske_image(img_rng, st.positive)
            else:
                rows, cols = _image_size(st.kind, img_rng)
                if st.kind in BURNED_KINDS:
                    rows, cols = max(rows, MIN_SIDE[st.kind]), max(cols, MIN_SIDE[st.kind])
                img, outline = phantom_and_lesion(img_rng, rows, cols, st.positive, difficulty)
            arr = _stored_pixels(st.kind, img, img_rng, signed=bool(img_rng.integers(2)))
            # Its own rng: the text changes nothing else about the image or its header.
            text_rng = np.random.default_rng([*key, series_no, number, 7])
            boxes: list[TextBox] = []
            if difficulty.mode != SKE:
                arr, boxes = _burned_text(p, st, arr, text_rng)
            ds = _image_dataset(p, st, series_no, number, arr, img_rng)
            if boxes and st.kind != "US":
                # Radiographs and angiography runs often lack the attribute; screenshots
                # (SC, written as OT) say YES.
                if st.kind == "SC":
                    ds.BurnedInAnnotation = "YES"
                else:
                    del ds.BurnedInAnnotation
            datasets.append(ds)
            texts.append(boxes)
            outlines.append(outline)
            # Rotating through the syntaxes spreads them over kinds, series and patients.
            ts = fits[(counter + len(datasets)) % len(fits)]
            images.append((series_no, number, _encode(ds, arr, ts)))
    return images, datasets, texts, outlines


def _mask_objects(
    st: _Study, datasets: list[Dataset], outlines: list, rtstruct: bool
) -> tuple[list[tuple[int, int, bytes]], list[Dataset], dict[str, np.ndarray]]:
    """The study's segmentation objects: one SEG per single-frame image with a lesion, or
    (``rtstruct``, CT and MR only) one RTSTRUCT per series; and each labelled image's mask."""
    objects, written, masks = [], [], {}
    by_series: dict[int, list[tuple[Dataset, np.ndarray]]] = {}
    for ds, outline in zip(datasets, outlines, strict=True):
        if outline is None or int(ds.get("NumberOfFrames", 1) or 1) > 1:
            continue  # no lesion, or a cine run (no frame of reference for its frames)
        mask = lesion_mask(outline, ds.Rows, ds.Columns)
        masks[str(ds.SOPInstanceUID)] = mask
        if rtstruct and st.kind in RTSTRUCT_KINDS:
            by_series.setdefault(int(ds.SeriesNumber), []).append((ds, outline))
            continue
        number = int(ds.SeriesNumber) * 100 + int(ds.InstanceNumber)
        seg = seg_dataset(ds, mask, _uid(st.uid, "seg"), _uid(st.uid, "seg", number), number)
        objects.append((SEG_SERIES_NUMBER, number, _dataset_bytes(seg)))
        written.append(seg)
    for series_no, members in sorted(by_series.items()):
        sources, shapes = [m[0] for m in members], [m[1] for m in members]
        uids = _uid(st.uid, "rtstruct", series_no), _uid(st.uid, "rtstruct", series_no, 1)
        rt = rtstruct_dataset(sources, shapes, *uids)
        objects.append((RTSTRUCT_SERIES_NUMBER, series_no, _dataset_bytes(rt)))
        written.append(rt)
    return objects, written, masks


def _dataset_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _burned_text(
    p: _Person, st: _Study, arr: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, list[TextBox]]:
    """Ultrasound and screenshots always carry text; radiographs and XA runs mostly do."""
    if st.kind not in BURNED_KINDS or (st.kind not in ("US", "SC") and rng.random() < 0.25):
        return arr, []
    fields = {"family": p.family, "given": p.given, "pid": p.pid, "date": st.date}
    fields.update(time=st.time, institution=st.institution[0], accession=st.accession)
    top = {"CR": 4095, "DX": 16383}.get(st.kind, 255)
    return burn_text(
        arr,
        text_lines(fields, rng),
        rng,
        top,
        monochrome1=KINDS[st.kind].photometric == "MONOCHROME1",
        frames=KINDS[st.kind].multiframe,
    )


# ---------------------------------------------------------------- public API


def synth_patient(
    index: int,
    seed: int,
    positive_rate: float = 0.2,
    difficulty: Difficulty = DEFAULT,
    masks: bool = False,
) -> CorpusPart:
    """One patient's studies as an export delivers them, with the PHI planted and the labels.

    Args:
        index: patient number in the corpus (0-based); names are unique for 100,800 indices.
        seed: corpus seed; the same (index, seed) always gives byte-identical files.
        positive_rate: probability that a study is positive (every image has a lesion).
        difficulty: lesion contrast, size and noise (pixel values only: files, studies,
            labels and PHI are the same for every phantom difficulty). In SKE mode every
            study is a DX study of ``SKE_SIZE``-pixel white-noise images without text.
        masks: also deliver segmentation objects with each study (``_mask_objects``): a
            DICOM SEG per single-frame image with a lesion, or for every other positive CT
            and MR study an RTSTRUCT per series. Files and PHI of the images are the same
            either way.

    Raises:
        ValueError: if index or seed is negative.
    """
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index} seed={seed}")
    rng = np.random.default_rng([seed, index])
    person = _person(rng, *_name_parts(index, seed), f"PID{index:06d}")
    phi, labels, files, text_boxes = _Phi(), [], [], []
    truth: dict[str, np.ndarray] = {}
    mask_rows: list[dict] = []
    _record_person(phi, person)
    counter = index * 3 - 1  # consecutive patients start 3 syntaxes apart
    for study_no in range(int(rng.integers(1, 4))):
        kind = "DX" if difficulty.mode == SKE else CYCLE[(index + study_no) % len(CYCLE)]
        st = _study(rng, kind, (seed, index, study_no), positive_rate)
        _record_study(phi, st)
        key = (seed, index, study_no)
        images, datasets, texts, outlines = _study_images(person, st, key, rng, counter, difficulty)
        counter += len(datasets)
        extra: list[tuple[int, int, bytes]] = []
        written: list[Dataset] = []
        if masks:
            rtstruct = (index + study_no) % 2 == 0
            extra, written, study_masks = _mask_objects(st, datasets, outlines, rtstruct)
            truth.update(study_masks)
        for ds in datasets:
            _record_image(phi, ds)
            row = {"AccessionNumber": st.accession, "SOPInstanceUID": str(ds.SOPInstanceUID)}
            labels.append({**row, "label": str(int(st.positive))})
        delivered, where = _deliver(person, st, study_no, index, images + extra)
        files += delivered
        for obj, (path, member) in zip(written, where[len(datasets) :], strict=True):
            phi.add("uid", obj.SeriesInstanceUID, obj.SOPInstanceUID)
            mask_rows.append(
                {
                    "file": path,
                    "member": member,
                    "kind": "seg" if obj.Modality == "SEG" else "rtstruct",
                    "sop_instance_uid": str(obj.SOPInstanceUID),
                    "referenced": _referenced(obj),
                }
            )
        for ds, boxes, (path, member) in zip(datasets, texts, where[: len(datasets)], strict=True):
            for b in boxes:
                loc = {"file": path, "member": member, "sop_instance_uid": ds.SOPInstanceUID}
                text_boxes.append({**loc, "frame": b.frame, "box": list(b.box), "text": b.text})
                text_boxes[-1]["phi"] = b.phi
    return CorpusPart(
        files=files,
        phi=dict(phi),
        labels=labels,
        text_boxes=text_boxes,
        masks=truth,
        mask_objects=mask_rows,
    )


def _referenced(obj: Dataset) -> list[str]:
    """The image SOP Instance UIDs a SEG or RTSTRUCT labels."""
    if obj.Modality == "SEG":
        items = [i for s in obj.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence]
        return [str(i.ReferencedSOPInstanceUID) for i in items]
    contours = obj.ROIContourSequence[0].ContourSequence
    return [str(c.ContourImageSequence[0].ReferencedSOPInstanceUID) for c in contours]


def _extra_image(p: _Person, st: _Study, number: int, rng: np.random.Generator) -> tuple:
    arr = _stored_pixels("CT", _phantom(rng, 48, 48, False), rng, signed=False)
    return _image_dataset(p, st, 1, number, arr, rng), arr


def _dicomdir_export(p: _Person, st: _Study, seed: int, phi: _Phi) -> list[SynthFile]:
    """A CD-ROM style export: DICOMDIR plus files, written by pydicom's FileSet."""
    fs = FileSet()
    # FileSet would pick a random UID
    fs.ID, fs.UID = "CDROM", uid.UID(_uid(seed, "extra", "fileset"))
    for number in (1, 2):
        ds, arr = _extra_image(p, st, number, np.random.default_rng([seed, 0xCD, number]))
        ds.PixelData = arr.tobytes()
        _record_image(phi, ds)
        fs.add(ds)
    root = f"export/CDROM_{p.family}_{p.given}"
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        fs.write(tmp)
        for folder, _, names in sorted(os.walk(tmp)):
            for name in sorted(names):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, tmp).replace(os.sep, "/")
                with open(path, "rb") as fh:
                    out.append(SynthFile(f"{root}/{rel}", fh.read()))
    return out


def _corrupt_zip(members: list[tuple[str, bytes]]) -> bytes:
    """A zip whose CORRUPT_MEMBER has damaged deflate data; the other members read fine."""
    data = bytearray(_zip(members))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        info = zf.getinfo(CORRUPT_MEMBER)
    # Local header: 30 fixed bytes, then the name and the extra field (lengths at 26 and 28).
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    middle = start + info.compress_size // 3
    data[middle : middle + 64] = bytes(b ^ 0xA5 for b in data[middle : middle + 64])
    return bytes(data)


def _unsupported(ds: Dataset) -> bytes:
    # pydicom refuses to write a syntax it does not know, so force the explicit LE encoding.
    ds.file_meta.TransferSyntaxUID = uid.UID(UNSUPPORTED_TS)
    _set_encapsulated(ds, [b"\xff\x0a" + bytes(range(256)) * 4])
    ds.preamble = b"\0" * 128
    ds.file_meta.FileMetaInformationVersion = b"\0\1"
    buf = io.BytesIO()
    dcmwrite(buf, ds, implicit_vr=False, little_endian=True, force_encoding=True)
    return buf.getvalue()


def _junk(p: _Person, st: _Study, seed: int, phi: _Phi) -> list[SynthFile]:
    def image(number: int, record: bool = True) -> tuple[Dataset, np.ndarray]:
        ds, arr = _extra_image(p, st, number, np.random.default_rng([seed, 0x7A, number]))
        if record:  # the damaged zip member cannot leak anything: its UIDs are not listed
            _record_image(phi, ds)
        return ds, arr

    def encoded(number: int, record: bool = True) -> bytes:
        return _encode(*image(number, record), uid.ExplicitVRLittleEndian)

    whole = encoded(10)
    cut = len(whole) - 48 * 48  # the uncompressed pixel bytes are the last 2 * 48 * 48
    no_pixels = io.BytesIO()
    image(11)[0].save_as(no_pixels, enforce_file_format=True)
    zipped = [
        (name, encoded(20 + i, record=name != CORRUPT_MEMBER))
        for i, name in enumerate(sorted((CORRUPT_MEMBER, *GOOD_ZIP_MEMBERS)))
    ]
    thumbs = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + np.random.default_rng([seed, 0xDB]).bytes(3000)
    readme = b"ACME PACS export. Burn date and contents listed in DICOMDIR.\r\n"
    return [
        SynthFile("export/junk/README.txt", readme),
        SynthFile("export/junk/empty.dcm", b""),
        SynthFile("export/junk/truncated.dcm", whole[:cut]),
        SynthFile("export/junk/no_pixels.dcm", no_pixels.getvalue()),
        SynthFile("export/junk/unsupported.dcm", _unsupported(image(12)[0])),
        SynthFile("export/junk/Thumbs.db", thumbs),
        SynthFile(CORRUPT_ZIP, _corrupt_zip(zipped)),
    ]


def synth_extras(seed: int) -> CorpusPart:
    """The DICOMDIR export of one extra patient and the junk files, under export/.

    The junk DICOMs (truncated, no pixels, unsupported syntax, the broken zip) belong to the
    same extra patient, so their PHI is listed too.

    Raises:
        ValueError: if seed is negative.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    rng = np.random.default_rng([seed, 0xE7, 0xA5])
    family = _EXTRA_FAMILY[seed % len(_EXTRA_FAMILY)]
    person = _person(rng, family, _EXTRA_GIVEN[seed % len(_EXTRA_GIVEN)], "", "XPID900001")
    phi = _Phi()
    _record_person(phi, person)
    studies = [_study(rng, "CT", (seed, "extra", n), 0.0) for n in range(2)]
    for st in studies:
        _record_study(phi, st)
    files = _dicomdir_export(person, studies[0], seed, phi) + _junk(person, studies[1], seed, phi)
    return CorpusPart(files=files, phi=dict(phi), labels=[])
