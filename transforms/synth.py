"""Synthetic PACS export: DICOM studies with planted PHI, labels, archives and junk."""

from __future__ import annotations

import datetime
import functools
import gzip
import hashlib
import io
import os
import struct
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from pydicom import dcmread, dcmwrite, uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.fileset import FileSet
from pydicom.pixels.encoders import RLELosslessEncoder
from pydicom.sequence import Sequence


@dataclass(frozen=True)
class SynthFile:
    path: str  # relative POSIX path under the output root, no leading slash
    data: bytes


@dataclass
class CorpusPart:
    files: list[SynthFile]
    phi: dict[str, list[str]]  # category -> planted values, exactly as written
    labels: list[dict[str, str]]  # labels.csv rows: AccessionNumber, SOPInstanceUID, label


PRIVATE_CREATOR = "ACME_PACS 1.0"
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

TRANSFER_SYNTAXES = (
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.RLELossless,
    uid.JPEG2000Lossless,
    uid.JPEGLSLossless,
    uid.JPEGBaseline8Bit,
)
LOSSY_SYNTAXES = frozenset({uid.JPEGBaseline8Bit})
_ENCAPSULATED_BY_PYDICOM = (uid.RLELossless, uid.JPEG2000Lossless, uid.JPEGLSLossless)
_IMPLEMENTATION_UID = "2.25.258135491238468431209814397734911632961"


@dataclass(frozen=True)
class _Kind:
    modality: str
    sop_class: str
    bits_allocated: int
    photometric: str
    samples: int = 1
    multiframe: bool = False


KINDS = {
    "CT": _Kind("CT", uid.CTImageStorage, 16, "MONOCHROME2"),
    "CR": _Kind("CR", uid.ComputedRadiographyImageStorage, 16, "MONOCHROME1"),
    "DX": _Kind("DX", uid.DigitalXRayImageStorageForPresentation, 16, "MONOCHROME2"),
    "MR": _Kind("MR", uid.MRImageStorage, 16, "MONOCHROME2"),
    "US": _Kind("US", uid.UltrasoundImageStorage, 8, "MONOCHROME2"),
    "XA": _Kind("XA", uid.XRayAngiographicImageStorage, 8, "MONOCHROME2", multiframe=True),
    "SC": _Kind("OT", uid.SecondaryCaptureImageStorage, 8, "RGB", samples=3),
}
CYCLE = tuple(KINDS)  # any 7 consecutive patient indices cover every kind
_BODY_PART = {"CT": "CHEST", "CR": "CHEST", "DX": "HAND", "MR": "HEAD", "US": "ABDOMEN"}
_BODY_PART.update({"XA": "HEART", "SC": "CHEST"})

# Distinctive names (>= 5 letters) so that a leak scan for them has no false positives.
# 50 x 48 x 42 = 100,800 unique FAMILY^GIVEN^MIDDLE combinations.
# fmt: off
FAMILY = (
    "KOWALCZYK", "HALVORSEN", "OYELARAN", "VANTONGEREN", "MCFARLANE", "DRAGOMIR", "ESPINOZA",
    "FITZGERALD", "GRABOWSKI", "HOLLINGSWORTH", "IVANCHENKO", "JANSSENS", "KARLSSON", "LINDQVIST",
    "MARCHETTI", "NAKAMURA", "OKONKWO", "PETROVSKI", "QUINTERO", "RASMUSSEN", "SALAZAR",
    "TAKAHASHI", "VASQUEZ", "WOJCIECHOWSKI", "XANTHOPOULOS", "YAMAMOTO", "ZIMMERMANN", "ABERNATHY",
    "BALDACCI", "CASTELLANOS", "DELACROIX", "EKSTROM", "FONTAINE", "GALLAGHER", "HUTCHINSON",
    "IGLESIAS", "JABLONSKI", "KRISTIANSEN", "LEFEBVRE", "MONTGOMERY", "NORDSTROM", "OLIVEIRA",
    "PAPADOPOULOS", "RADCLIFFE", "SCHNEIDER", "THORNTON", "UNDERWOOD", "VILLANUEVA", "WHITFIELD",
    "ZAPATERO"
)
GIVEN = (
    "BRUNHILDE", "OSWALDO", "ANNELIESE", "BARTHOLOMEW", "CORDELIA", "DESMOND", "EVANGELINE",
    "FREDERICK", "GWENDOLYN", "HORATIO", "ISADORA", "JOAQUIN", "KATARINA", "LEOPOLD", "MARGUERITE",
    "NATHANIEL", "OTTILIE", "PERCIVAL", "QUENTIN", "ROSALIND", "SEBASTIAN", "THEODORA", "ULRICH",
    "VALENTINA", "WINIFRED", "XAVIER", "YOLANDA", "ZACHARIAH", "AUGUSTINE", "BEATRICE", "CASIMIR",
    "DOROTHEA", "EZEKIEL", "FLORENTINA", "GIDEON", "HENRIETTA", "IGNATIUS", "JOSEPHINE",
    "KONSTANTIN", "LUCRETIA", "MAXIMILIAN", "NICOLETTA", "ORLANDO", "PHILIPPA", "REGINALD",
    "SOLVEIG", "TOBIAS", "URSULA"
)
MIDDLE = (
    "AMBROSE", "BENEDICT", "CLEMENTINE", "DELPHINE", "EMMERICH", "FABIANA", "GERTRUDE",
    "HILDEGARD", "IMMANUEL", "JOCELYN", "KASIMIRA", "LEANDER", "MATHILDE", "NIKODEM", "OCTAVIA",
    "PASCALE", "ROSWITHA", "SIEGFRIED", "TIBERIUS", "VERONIQUE", "WILHELMINA", "ALOYSIUS",
    "BERNADETTE", "CORNELIUS", "DAMIANA", "ERASMUS", "FELICITAS", "GREGORIUS", "HYACINTH",
    "ISOLDE", "JERONIMO", "KUNIGUNDE", "LORELEI", "MELCHIOR", "NARCISSA", "ODALRIC", "PRUDENCE",
    "RAPHAELA", "SERAPHINA", "THADDEUS", "VALERIAN", "WENDELIN"
)
# fmt: on
_EXTRA_FAMILY = ("TREMAYNE", "ASHBURNHAM", "PENHALIGON", "STRATHEARN")
_EXTRA_GIVEN = ("AURELIO", "GUINEVERE", "LYSANDER", "MIRABELLE")
_DOCTORS = (
    "HARGREAVES^LEOPOLDINE^^DR.",
    "OYAMADA^FERDINAND^^DR.",
    "KRZYWICKA^HONORATA^^DR.",
    "BLACKWOOD^EUSTACE^^DR.",
    "VALLADARES^ESPERANZA^^DR.",
    "ROSENQUIST^TORBJORN^^DR.",
)
_OPERATORS = ("TECHNICIAN^MAREK", "LAUDRUP^SIGRID", "VOLKONSKAYA^ILARIA", "PEMBROKE^DUNSTAN")
_INSTITUTIONS = (
    ("ST. ELSPETH REGIONAL HOSPITAL", "41 Quarrybank Road, Elmsworth EW4 9QT"),
    ("MERIDIAN VALLEY MEDICAL CENTER", "1907 Tamarack Avenue, Brookhollow 55821"),
    ("ALDERGROVE UNIVERSITY CLINIC", "Aldergrove Platz 12, 80993 Kestenau"),
)
_STREETS = ("Larkspur Lane", "Wexcombe Drive", "Pimlott Crescent", "Odenfeld Strasse", "Rue Bastet")
_CITIES = ("Eastbourne", "Harrowgate", "Kestenau", "Lac-Vermeil", "Brookhollow")


def _item(**elements: object) -> Dataset:
    """A sequence item (or any dataset) from keyword=value pairs."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def _uid(*parts: object) -> str:
    """A 2.25 UID derived from the parts, identical on every machine."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


class _Phi(dict):
    def add(self, category: str, *values: str) -> None:
        bucket = self.setdefault(category, [])
        bucket.extend(str(v) for v in dict.fromkeys(values) if v and v not in bucket)


@dataclass(frozen=True)
class _Person:
    family: str
    given: str
    middle: str
    pid: str
    birth_date: str
    sex: str
    address: str
    phone: str
    other_id: str
    private_key: str
    uid: str

    @property
    def name(self) -> str:
        return "^".join(p for p in (self.family, self.given, self.middle) if p)

    @property
    def folder(self) -> str:
        return f"{self.name.replace('^', '_')}_{self.pid}"


@dataclass(frozen=True)
class _Study:
    kind: str
    uid: str
    accession: str
    date: str
    time: str
    institution: tuple[str, str]
    referring: str
    performing: str
    operator: str
    rp_id: str
    sps_id: str
    positive: bool


def _date(rng: np.random.Generator, first_year: int, years: int) -> str:
    day = datetime.date(first_year, 1, 1) + datetime.timedelta(int(rng.integers(0, 365 * years)))
    return day.strftime("%Y%m%d")


def _time(rng: np.random.Generator) -> str:
    return f"{rng.integers(7, 19):02d}{rng.integers(0, 60):02d}{rng.integers(0, 60):02d}"


def _person(rng: np.random.Generator, family: str, given: str, middle: str, pid: str) -> _Person:
    return _Person(
        family=family,
        given=given,
        middle=middle,
        pid=pid,
        birth_date=_date(rng, 1930, 75),
        sex=str(rng.choice(["F", "M", "O"], p=[0.5, 0.45, 0.05])),
        address=f"{rng.integers(2, 9999)} {rng.choice(_STREETS)}, {rng.choice(_CITIES)}",
        phone=f"+1-555-{rng.integers(100, 1000)}-{rng.integers(1000, 10000)}",
        other_id=f"MRN{rng.integers(10**7, 10**8)}",
        private_key=f"ACMEKEY-{rng.integers(10**8, 10**9)}",
        uid=_uid(pid, family, given, middle),
    )


@functools.cache
def _name_offset(seed: int) -> int:
    return int(hashlib.sha256(str(seed).encode()).hexdigest(), 16)


def _name_parts(index: int, seed: int) -> tuple[str, str, str]:
    """FAMILY, GIVEN, MIDDLE: a seed-rotated mixed-radix counter, unique for 100,800 indices."""
    n = (index + _name_offset(seed)) % (len(FAMILY) * len(GIVEN) * len(MIDDLE))
    family, n = FAMILY[n % len(FAMILY)], n // len(FAMILY)
    given, n = GIVEN[n % len(GIVEN)], n // len(GIVEN)
    return family, given, MIDDLE[n % len(MIDDLE)]


def _study(rng: np.random.Generator, kind: str, key: tuple, positive_rate: float) -> _Study:
    return _Study(
        kind=kind,
        uid=_uid(*key, "study"),
        accession=f"AC{rng.integers(10**10, 10**11)}",
        date=_date(rng, 2012, 12),
        time=_time(rng),
        institution=_INSTITUTIONS[rng.integers(len(_INSTITUTIONS))],
        referring=str(rng.choice(_DOCTORS)),
        performing=str(rng.choice(_DOCTORS)),
        operator=str(rng.choice(_OPERATORS)),
        rp_id=f"RP{rng.integers(10**6, 10**7)}",
        sps_id=f"SPS{rng.integers(10**6, 10**7)}",
        positive=bool(rng.random() < positive_rate),
    )


# ---------------------------------------------------------------- pixels


def _phantom(rng: np.random.Generator, rows: int, cols: int, lesion: bool) -> np.ndarray:
    """Body-like float image in [0, 1]; a positive adds a gaussian blob inside the body.

    The blob is drawn last so that the same rng state gives the same body either way.
    """
    yy = (np.arange(rows)[:, None] + 0.5) / rows - 0.5
    xx = (np.arange(cols)[None, :] + 0.5) / cols - 0.5
    cy, cx = rng.uniform(-0.04, 0.04, 2)
    ry, rx = rng.uniform(0.32, 0.46, 2)
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    texture = np.zeros((rows, cols))
    for _ in range(3):
        fy, fx, phase = rng.uniform(2, 9), rng.uniform(2, 9), rng.uniform(0, 2 * np.pi)
        texture += 0.03 * np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
    img = np.where(inside <= 1, 0.5 + texture, 0.02) + rng.normal(0, 0.015, (rows, cols))
    radius, angle = rng.uniform(0, 0.55), rng.uniform(0, 2 * np.pi)
    sigma, contrast = rng.uniform(0.03, 0.08), rng.uniform(0.25, 0.45)
    if lesion:
        by, bx = cy + radius * ry * np.sin(angle), cx + radius * rx * np.cos(angle)
        img += contrast * np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * sigma**2))
    return np.clip(img, 0.0, 1.0)


def _text_mask(shape: tuple[int, int], lines: list[str]) -> np.ndarray:
    """Where the default PIL font draws the lines at the top left."""
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(canvas).text((3, 3), "\n".join(lines), fill=255)
    return np.asarray(canvas) > 0


def _burn_in(arr: np.ndarray, lines: list[str]) -> np.ndarray:
    """Burned-in annotation, as ultrasound scanners write the demographics into the image."""
    out = arr.copy()
    out[_text_mask(arr.shape[:2], lines)] = 255
    return out


def _stored_pixels(
    kind: str, img: np.ndarray, rng: np.random.Generator, signed: bool
) -> np.ndarray:
    """Map the [0, 1] phantom to the stored values a scanner of this kind writes."""
    if kind == "CT":
        stored = np.clip(np.round(img * 2000 - 1000) + 1024, 0, 4095)
        if not signed:
            return stored.astype(np.uint16)
        rows, cols = img.shape
        yy, xx = np.ogrid[:rows, :cols]
        fov = ((yy - rows / 2) / (rows / 2)) ** 2 + ((xx - cols / 2) / (cols / 2)) ** 2 > 1
        return np.where(fov, -2000, stored).astype(np.int16)  # padding outside the FOV
    if kind == "CR":
        return np.round((1 - 0.9 * img) * 4095).astype(np.uint16)  # MONOCHROME1: dense = low
    if kind == "DX":
        return np.round(img * 16383).astype(np.uint16)
    if kind == "MR":
        rician = np.abs(rng.normal(0, 20, img.shape))  # magnitude images have positive noise
        return np.clip(np.round(img * 3000 + rician), 0, 4095).astype(np.uint16)
    if kind == "US":
        return np.round(img * 220 * rng.uniform(0.75, 1.0, img.shape)).astype(np.uint8)
    if kind == "XA":
        return _angio_frames(img, rng)
    colour = np.stack([img, img**2, np.sqrt(img) * 0.6], axis=-1)  # SC: a colour-mapped render
    return np.round(colour * 255).astype(np.uint8)


def _angio_frames(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A short cine run: a vessel fills with contrast over 4-8 frames."""
    rows, cols = img.shape
    yy, xx = np.mgrid[:rows, :cols]
    amp, freq, centre = rng.uniform(5, 15), rng.uniform(0.02, 0.08), rng.uniform(0.3, 0.7) * rows
    vessel = np.abs(yy - (centre + amp * np.sin(freq * xx))) < 3
    frames = []
    for f in range(int(rng.integers(4, 9))):
        frame = (1 - 0.7 * img) * 230 - vessel * (20 + 25 * f) + rng.normal(0, 3, img.shape)
        frames.append(np.clip(np.round(frame), 0, 255))
    return np.stack(frames).astype(np.uint8)


def _image_size(kind: str, rng: np.random.Generator) -> tuple[int, int]:
    rows = int(rng.integers(96 if kind == "US" else 48, 193))
    # Ultrasound needs room for the burned-in name in the default font.
    cols = int(rng.integers(176, 193)) if kind == "US" else int(rng.integers(48, 193))
    return rows, cols


# ---------------------------------------------------------------- DICOM modules


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    meta.ImplementationClassUID = _IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DICOMFLOW_SYNTH"
    return meta


def _patient_module(ds: Dataset, p: _Person, study_date: str) -> None:
    ds.PatientName = p.name
    ds.PatientID = p.pid
    ds.IssuerOfPatientID = "ACME_MRN"
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = p.sex
    ds.PatientAge = f"{(int(study_date[:4]) - int(p.birth_date[:4])):03d}Y"
    ds.PatientAddress = p.address
    ds.PatientTelephoneNumbers = p.phone
    other = _item(PatientID=p.other_id, IssuerOfPatientID="HOSP_B", TypeOfPatientID="TEXT")
    ds.OtherPatientIDsSequence = Sequence([other])
    patient_ref = "1.2.840.10008.3.1.2.1.1"  # Detached Patient Management SOP Class
    ref = _item(ReferencedSOPClassUID=patient_ref, ReferencedSOPInstanceUID=p.uid)
    ds.ReferencedPatientSequence = Sequence([ref])


def _study_module(ds: Dataset, st: _Study, p: _Person) -> None:
    ds.StudyInstanceUID = st.uid
    ds.StudyDate, ds.StudyTime = st.date, st.time
    ds.ReferringPhysicianName = st.referring
    ds.StudyID = st.accession[-5:]
    ds.AccessionNumber = st.accession
    ds.StudyDescription = f"{KINDS[st.kind].modality} {_BODY_PART[st.kind]} {p.name}"[:64]
    ds.InstitutionName, ds.InstitutionAddress = st.institution
    ds.Manufacturer = "ACME Imaging"
    ds.StationName = f"ACME-{st.kind}-07"
    ds.DeviceSerialNumber = "SN-0042-7781"


def _request_attributes(st: _Study, p: _Person) -> Sequence:
    # Worklist text ends up three sequences deep: a de-id pass must recurse to find it.
    concept = _item(CodeValue="121106", CodingSchemeDesignator="DCM", CodeMeaning="Comment")
    context = _item(
        ValueType="TEXT",
        ConceptNameCodeSequence=Sequence([concept]),
        TextValue=f"Scheduled for {p.name}, MRN {p.other_id}",
    )
    protocol = _item(
        CodeValue=f"P-{st.kind}",
        CodingSchemeDesignator="99ACME",
        CodeMeaning=f"{st.kind} routine",
        ProtocolContextSequence=Sequence([context]),
    )
    request = _item(
        RequestedProcedureID=st.rp_id,
        ScheduledProcedureStepID=st.sps_id,
        AccessionNumber=st.accession,
        RequestedProcedureDescription=f"{st.kind} {_BODY_PART[st.kind]}",
        ScheduledProtocolCodeSequence=Sequence([protocol]),
    )
    return Sequence([request])


def _series_module(ds: Dataset, st: _Study, p: _Person, series_no: int, series_time: str) -> None:
    ds.Modality = KINDS[st.kind].modality
    ds.SeriesInstanceUID = _uid(st.uid, "series", series_no)
    ds.SeriesNumber = series_no
    ds.SeriesDate, ds.SeriesTime = st.date, series_time
    ds.SeriesDescription = f"{_BODY_PART[st.kind]} S{series_no} {p.family}^{p.given}"
    ds.PerformingPhysicianName = st.performing
    ds.OperatorsName = st.operator
    ds.BodyPartExamined = _BODY_PART[st.kind]
    ds.RequestAttributesSequence = _request_attributes(st, p)
    ds.FrameOfReferenceUID = _uid(st.uid, "for", series_no)
    ds.PositionReferenceIndicator = ""


def _image_module(ds: Dataset, st: _Study, p: _Person, number: int, time: str) -> None:
    ds.InstanceNumber = number
    ds.ContentDate, ds.ContentTime = st.date, time
    ds.AcquisitionDate, ds.AcquisitionTime = st.date, time
    ds.AcquisitionDateTime = f"{st.date}{time}.000000"
    ds.InstanceCreationDate, ds.InstanceCreationTime = st.date, time
    ds.ImageComments = f"Follow-up for {p.family}, {p.given} ({p.pid})"
    ds.ImageType = ["ORIGINAL", "PRIMARY"] + (["AXIAL"] if st.kind in ("CT", "MR") else [])
    ds.BurnedInAnnotation = "YES" if st.kind == "US" else "NO"
    ds.LossyImageCompression = "00"
    if st.kind not in ("CT", "MR"):
        ds.PatientOrientation = ["L", "F"] if st.kind != "SC" else ""


def _modality_module(ds: Dataset, kind: str, rng: np.random.Generator, number: int) -> None:
    """The acquisition attributes each IOD requires."""
    if kind in ("CT", "MR"):
        ds.PatientPosition = "HFS"
        ds.PixelSpacing = ["0.7", "0.7"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-80, -80, f"{number * 5}"]
        ds.SliceThickness, ds.SliceLocation = "5", f"{number * 5}"
    if kind == "CT":
        ds.KVP, ds.AcquisitionNumber = "120", 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
    elif kind == "MR":
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "500", "15", 1
        ds.MagneticFieldStrength = "1.5"
    elif kind in ("CR", "DX"):
        ds.ViewPosition = str(rng.choice(["PA", "AP", "LL"]))
        ds.ImagerPixelSpacing = ["0.15", "0.15"]
        ds.KVP = "70"
    if kind == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
        ds.PresentationLUTShape, ds.DetectorType = "IDENTITY", "DIRECT"
    elif kind == "XA":
        ds.KVP, ds.RadiationSetting, ds.PositionerMotion = "80", "GR", "STATIC"
        ds.PixelIntensityRelationship = "LIN"
        ds.FrameTime = "66.7"
        ds.FrameIncrementPointer = 0x00181063  # (0018,1063) Frame Time
    elif kind == "SC":
        ds.ConversionType = "WSD"


def _pixel_module(ds: Dataset, kind: _Kind, arr: np.ndarray, bits_stored: int) -> None:
    ds.SamplesPerPixel = kind.samples
    ds.PhotometricInterpretation = kind.photometric
    if kind.samples > 1:
        ds.PlanarConfiguration = 0
    if kind.multiframe:
        ds.NumberOfFrames = arr.shape[0]
    ds.Rows, ds.Columns = arr.shape[-3:-1] if kind.samples > 1 else arr.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = kind.bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(arr.dtype.kind == "i")
    if arr.dtype.kind == "i":
        ds.PixelPaddingValue = -2000


def _overlay(ds: Dataset, mask: np.ndarray) -> None:
    """Group 6000 graphics overlay, bit-packed as PS3.5 8.1.2 says (LSB first)."""
    packed = np.packbits(mask.ravel(), bitorder="little").tobytes()
    ds.add_new(0x60000010, "US", mask.shape[0])
    ds.add_new(0x60000011, "US", mask.shape[1])
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    # OB, not OW: the packed bytes then need no swapping for the big-endian syntax.
    ds.add_new(0x60003000, "OB", packed + b"\0" * (len(packed) % 2))


def _private_tags(ds: Dataset, p: _Person) -> None:
    # PACS vendors copy demographics into their own tags, including inside private sequences.
    block = ds.private_block(0x0011, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", p.name)
    block.add_new(0x02, "LO", p.pid)
    block.add_new(0x03, "LO", p.private_key)
    item = Dataset()
    item.private_block(0x0011, PRIVATE_CREATOR, create=True).add_new(0x01, "LO", p.name)
    block.add_new(0x10, "SQ", Sequence([item]))


def _image_dataset(
    p: _Person, st: _Study, series_no: int, number: int, arr: np.ndarray, rng: np.random.Generator
) -> Dataset:
    """One complete image dataset (without Pixel Data) carrying every planted identifier."""
    kind = KINDS[st.kind]
    sop_uid = _uid(st.uid, "sop", series_no, number)
    series_time = f"{st.time[:2]}{(int(st.time[2:4]) + series_no * 7) % 60:02d}{st.time[4:]}"
    ds = Dataset()
    ds.file_meta = _file_meta(kind.sop_class, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = kind.sop_class, sop_uid
    _patient_module(ds, p, st.date)
    _study_module(ds, st, p)
    _series_module(ds, st, p, series_no, series_time)
    _image_module(ds, st, p, number, series_time)
    _modality_module(ds, st.kind, rng, number)
    bits_stored = {"CT": 16 if arr.dtype.kind == "i" else 12, "DX": 14}.get(st.kind, 12)
    _pixel_module(ds, kind, arr, 8 if kind.bits_allocated == 8 else bits_stored)
    if kind.bits_allocated == 16:
        _overlay(ds, _text_mask(arr.shape, [p.pid]))
    _private_tags(ds, p)
    return ds


# ---------------------------------------------------------------- encoding


def _jpeg_baseline(ds: Dataset, arr: np.ndarray) -> None:
    # pydicom has no JPEG encoder: PIL writes each frame, pydicom encapsulates them.
    frames = arr if ds.get("NumberOfFrames", 1) > 1 else arr[None]
    encoded = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=92, subsampling=1)  # 4:2:2
        encoded.append(buf.getvalue())
    if ds.SamplesPerPixel == 3:
        ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.LossyImageCompressionRatio = f"{arr.nbytes / sum(len(e) for e in encoded):.2f}"
    _set_encapsulated(ds, encoded)


def _set_encapsulated(ds: Dataset, fragments: list[bytes]) -> None:
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def _encode(ds: Dataset, arr: np.ndarray, ts: str) -> bytes:
    """Part 10 bytes of the dataset with the array as Pixel Data in the transfer syntax."""
    ds.file_meta.TransferSyntaxUID = ts
    if ts == uid.JPEGBaseline8Bit:
        _jpeg_baseline(ds, arr)
    elif ts in _ENCAPSULATED_BY_PYDICOM:
        ds.compress(ts, arr, encoding_plugin=_plugin(ts), generate_instance_uid=False)
    elif ts == uid.ExplicitVRBigEndian:
        # The writer copies OW bytes verbatim, so the words must be big-endian already.
        ds.PixelData = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    else:
        ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@functools.cache
def _plugin(ts: str) -> str:
    # Pinned, so that which RLE plugins happen to be installed does not change the bytes;
    # pylibjpeg-rle is much faster than pydicom's pure-Python RLE encoder.
    if ts != uid.RLELossless:
        return ""
    return "pylibjpeg" if "pylibjpeg" in RLELosslessEncoder.available_plugins else "pydicom"


def _fits(ts: str, kind: _Kind) -> bool:
    return ts != uid.JPEGBaseline8Bit or kind.bits_allocated == 8


@functools.cache
def _probe() -> tuple[str, ...]:
    person = _person(np.random.default_rng(0), "PROBE", "PROBE", "", "PROBE")
    works = []
    for ts in TRANSFER_SYNTAXES:
        kind = "US" if ts == uid.JPEGBaseline8Bit else "CT"
        arr = np.arange(32 * 48).reshape(32, 48) % 200
        arr = arr.astype(np.uint8 if kind == "US" else np.uint16)
        try:
            st = _study(np.random.default_rng(0), kind, (0,), 0.0)
            ds = _image_dataset(person, st, 1, 1, arr, np.random.default_rng(0))
            out = dcmread(io.BytesIO(_encode(ds, arr, ts))).pixel_array
        except Exception:  # a missing plugin or a broken codec: cannot write it here
            continue
        if ts in LOSSY_SYNTAXES or np.array_equal(out, arr):
            works.append(str(ts))
    return tuple(works)


def available_transfer_syntaxes() -> list[str]:
    """Transfer syntax UIDs this machine can write and read back (probed once)."""
    return list(_probe())


# ---------------------------------------------------------------- delivery


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
) -> list[SynthFile]:
    """Loose files in nested folders, or one zip / tar.gz per study, as PACS exports do."""
    study_dir = f"{st.date}_{st.accession}"
    mode = ("loose", "loose", "zip", "tar.gz")[(index + 3 * study_no) % 4]
    members = []
    for series_no, number, data in images:
        ext = ".dcm" if (series_no + number + index) % 2 else ""
        members.append((f"{study_dir}/S{series_no}/IMG{number}{ext}", data))
    if mode == "loose":
        return [SynthFile(f"export/{p.folder}/{name}", data) for name, data in members]
    nested = [(f"{p.folder}/{name}", data) for name, data in members]
    if mode == "zip":
        return [SynthFile(f"export/{p.folder}/{p.folder}_{study_dir}.zip", _zip(nested))]
    return [SynthFile(f"export/{p.folder}/{p.folder}_{study_dir}.tar.gz", _tar_gz(nested))]


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
    p: _Person, st: _Study, key: tuple[int, int, int], rng: np.random.Generator, counter: int
) -> tuple[list[tuple[int, int, bytes]], list[Dataset]]:
    """Encoded images (series, number, bytes) of one study, and their datasets."""
    kind = KINDS[st.kind]
    fits = [ts for ts in available_transfer_syntaxes() if _fits(ts, kind)]
    images, datasets = [], []
    for series_no in range(1, int(rng.integers(1, 3)) + 1):
        for number in range(1, int(rng.integers(1, 4)) + 1):
            img_rng = np.random.default_rng([*key, series_no, number])
            img = _phantom(img_rng, *_image_size(st.kind, img_rng), st.positive)
            arr = _stored_pixels(st.kind, img, img_rng, signed=bool(img_rng.integers(2)))
            if st.kind == "US":
                arr = _burn_in(arr, [p.name, p.pid])
            ds = _image_dataset(p, st, series_no, number, arr, img_rng)
            datasets.append(ds)
            # Rotating through the syntaxes spreads them over kinds, series and patients.
            ts = fits[(counter + len(datasets)) % len(fits)]
            images.append((series_no, number, _encode(ds, arr, ts)))
    return images, datasets


# ---------------------------------------------------------------- public API


def synth_patient(index: int, seed: int, positive_rate: float = 0.2) -> CorpusPart:
    """One patient's studies as an export delivers them, with the PHI planted and the labels.

    Args:
        index: patient number in the corpus (0-based); names are unique for 100,800 indices.
        seed: corpus seed; the same (index, seed) always gives byte-identical files.
        positive_rate: probability that a study is positive (every image has a lesion).

    Raises:
        ValueError: if index or seed is negative.
    """
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be >= 0, got index={index} seed={seed}")
    rng = np.random.default_rng([seed, index])
    person = _person(rng, *_name_parts(index, seed), f"PID{index:06d}")
    phi, labels, files = _Phi(), [], []
    _record_person(phi, person)
    counter = index * 3 - 1  # consecutive patients start 3 syntaxes apart
    for study_no in range(int(rng.integers(1, 4))):
        kind = CYCLE[(index + study_no) % len(CYCLE)]
        st = _study(rng, kind, (seed, index, study_no), positive_rate)
        _record_study(phi, st)
        images, datasets = _study_images(person, st, (seed, index, study_no), rng, counter)
        counter += len(datasets)
        for ds in datasets:
            _record_image(phi, ds)
            row = {"AccessionNumber": st.accession, "SOPInstanceUID": str(ds.SOPInstanceUID)}
            labels.append({**row, "label": str(int(st.positive))})
        files += _deliver(person, st, study_no, index, images)
    return CorpusPart(files=files, phi=dict(phi), labels=labels)


def _extra_image(p: _Person, st: _Study, number: int, rng: np.random.Generator) -> tuple:
    arr = _stored_pixels("CT", _phantom(rng, 48, 48, False), rng, signed=False)
    return _image_dataset(p, st, 1, number, arr, rng), arr


def _dicomdir_export(p: _Person, st: _Study, seed: int, phi: _Phi) -> list[SynthFile]:
    """A CD-ROM style export: DICOMDIR plus files, written by pydicom's FileSet."""
    fs = FileSet()
    fs.ID, fs.UID = "CDROM", _uid(seed, "extra", "fileset")  # FileSet would pick a random UID
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
    ds.file_meta.TransferSyntaxUID = UNSUPPORTED_TS
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
