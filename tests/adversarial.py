"""An adversarial corpus: realistic headers that hide one fake patient's identity in every
kind of place a blocklist misses, and a scanner that looks for it in every output byte.

Each planted value is distinctive (no real word or technical term contains it) and is
recorded with its category, so a leak names what leaked and where it was planted.
"""

import contextlib
import gzip
import json
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

FAMILY, GIVEN, MIDDLE = "Quonsetta", "Brimlowe", "Ysolde"
ACCENTED = "Jörgensdóttir"  # a Latin-1 spelling, in an item with its own character set
CJK_FAMILY, CJK_GIVEN = "瀧澤", "蒼汰"  # two-character ideographic name parts
BIRTH_NAME = "Pellingwood"
PATIENT_ID, OTHER_ID, ACCESSION = "ZX88231Q", "OTH55123W", "ACX99417K"
BIRTH_DATE = "19610312"
PHYSICIAN = "Harrowgate^Tibbald"
PHONE, EMAIL, STREET = "+44 20 7946 0958", "q.brimlowe@example.org", "221B Veltmore Street"
STUDY_DATE, RANGE_END = "20190704", "20190811"


@dataclass(frozen=True)
class Planted:
    category: str
    value: str  # what must not appear anywhere in any output


PLANTED = (
    Planted("patient_name", FAMILY),
    Planted("patient_name", GIVEN),
    Planted("patient_name", MIDDLE),
    Planted("charset", ACCENTED),
    Planted("cjk_name", CJK_FAMILY),
    Planted("cjk_name", CJK_GIVEN),
    Planted("birth_name", BIRTH_NAME),
    Planted("patient_ids", PATIENT_ID),
    Planted("patient_ids", OTHER_ID),
    Planted("patient_ids", ACCESSION),
    Planted("birth_date", BIRTH_DATE),
    Planted("birth_date", "12.03.1961"),
    Planted("other_person", "Harrowgate"),
    Planted("other_person", "Tibbald"),
    Planted("unlisted_text", "Windrelt"),
    Planted("unlisted_text", "Calvanoor"),
    Planted("unlisted_text", "Moshavi"),
    Planted("retired_text", "Orrinfell"),
    Planted("unknown_public", "Gexholm"),
    Planted("unknown_public", "Frostvick"),
    Planted("url", "pacs.quonsetta-clinic.example"),
    Planted("code_meaning", "Ablethorpe"),
    Planted("concept_name", "Dunnerwick"),
    Planted("cs_free_text", "ZORVANT"),
    Planted("cs_free_text", "KELMSCOTT"),
    Planted("binary_text", "Thistlebrook"),
    Planted("binary_text", "Wenlow"),
    Planted("dates", STUDY_DATE),
    Planted("dates", RANGE_END),
    Planted("dates", "2018.09.17"),
    Planted("dates", "09.17"),
    Planted("dates", "Tishri 5779"),
    Planted("contact", PHONE),
    Planted("contact", "7946 0958"),
    Planted("contact", EMAIL),
    Planted("contact", "Veltmore"),
    Planted("free_text", "Gravenhurst"),
)


def _image(ds: Dataset, rng: np.random.Generator) -> None:
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = rng.integers(0, 4000, (16, 16), dtype=np.uint16).tobytes()
    ds.BurnedInAnnotation = "NO"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _raw(ds: Dataset, tag: int, vr: str, value) -> None:
    ds.add_new(tag, vr, value)


def instance(n: int, rng: np.random.Generator) -> Dataset:
    """One CT-like instance (16 x 16) with the identity planted everywhere."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.Modality = "CT" if n else "ZORVANT"  # the first instance: a Modality that is no term
    ds.PatientName = f"{FAMILY}^{GIVEN}^{MIDDLE}={CJK_FAMILY}^{CJK_GIVEN}"
    ds.PatientID, ds.AccessionNumber, ds.PatientBirthDate = PATIENT_ID, ACCESSION, BIRTH_DATE
    ds.PatientBirthName = BIRTH_NAME
    other = Dataset()
    other.PatientID = OTHER_ID
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.ReferringPhysicianName = PHYSICIAN
    ds.StudyDate, ds.StudyTime = STUDY_DATE, "101500"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "KELMSCOTT"]
    ds.BodyPartExamined = "KELMSCOTT"
    ds.Manufacturer = f"Acme for {FAMILY.upper()}"  # a kept attribute typed by hand
    ds.ManufacturerModelName = f"Model {PATIENT_ID}"
    ds.StudyDescription = f"{GIVEN} {PHONE} {EMAIL} {STREET} {CJK_GIVEN} Gravenhurst"
    # Text attributes the table does not list, top level and nested.
    ds.DocumentTitle = "Windrelt consult"
    ds.WindowCenterWidthExplanation = f"Calvanoor window for {FAMILY}"
    ds.ContactDisplayName = "Moshavi^Ren"
    ds.add_new(0x00080040, "US", 1)  # a retired number: harmless, kept
    ds.add_new(0x00204000, "LT", "Gravenhurst")  # ImageComments (table: X)
    ds.add_new(0x00081190, "UR", "https://pacs.quonsetta-clinic.example/wado")
    retired = Dataset()
    retired.add_new(0x00080010, "SH", "Orrinfell")  # RecognitionCode (retired)
    retired.PixelDataProviderURL = "https://pacs.quonsetta-clinic.example/px"
    retired.InstitutionalDepartmentTypeCodeSequence = Sequence(
        [_code("39607008", "SCT", "Ablethorpe lung")]
    )
    ds.ReferencedImageSequence = Sequence([retired])
    ds.ReferencedImageSequence[0].ReferencedSOPClassUID = ds.SOPClassUID
    ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID = generate_uid()
    ds.AnatomicRegionSequence = Sequence([_code("39607008", "SCT", f"Lung of {GIVEN}")])
    # Public tags nobody knows, of several VRs, one a sequence.
    _raw(ds, 0x0008FFF0, "LO", "Gexholm")
    _raw(ds, 0x0018FFF2, "UT", "Frostvick notes")
    hidden = Dataset()
    hidden.PatientName = "Gexholm^Frostvick"
    _raw(ds, 0x0020FFF4, "SQ", Sequence([hidden]))
    _raw(ds, 0x0028FFF6, "OB", b"Frostvick\x00")
    # Binary values that carry text.
    wave = Dataset()
    wave.WaveformData = b"Thistlebrook Wenlow\x00"
    wave.WaveformBitsAllocated, wave.WaveformSampleInterpretation = 8, "SB"
    wave.NumberOfWaveformChannels, wave.NumberOfWaveformSamples = 1, 20
    wave.SamplingFrequency = "100"
    ds.WaveformSequence = Sequence([wave])
    # Dates: a DT range, a dotted DA, a date in another calendar, a DA with trailing text.
    ds.AcquisitionDateTime = f"{STUDY_DATE}083000-{RANGE_END}"
    ds.add_new(0x00080023, "DA", "2018.09.17")  # ContentDate, dotted
    ds.add_new(0x00080022, "DA", f"{STUDY_DATE} Windrelt")  # AcquisitionDate, trailing text
    ds.add_new(0x00181014, "TM", "Tishri 5779")  # TimeOfSecondaryCapture? no: a TM garbage
    # SR content: concept names typed by hand, a TEXT item, an item with its own charset.
    text = Dataset()
    text.RelationshipType, text.ValueType = "CONTAINS", "TEXT"
    text.ConceptNameCodeSequence = Sequence([_code("121106", "DCM", "Dunnerwick comment")])
    text.TextValue = f"{FAMILY} seen by {PHYSICIAN}"
    person = Dataset()
    person.SpecificCharacterSet = "ISO_IR 100"
    person.RelationshipType, person.ValueType = "CONTAINS", "PNAME"
    person.ConceptNameCodeSequence = Sequence([_code("121008", "DCM", "Person Observer Name")])
    person.PersonName = f"{ACCENTED}^Elke"
    person.add_new(0x0040A160, "UT", f"{ACCENTED} Elke")  # TextValue in the wrong item
    ds.ContentSequence = Sequence([text, person])
    _image(ds, rng)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def write_corpus(directory: Path, count: int = 3, seed: int = 0) -> list[Path]:
    """``count`` instances under a folder named after the patient (as exports do)."""
    rng = np.random.default_rng(seed)
    folder = directory / f"{FAMILY}_{GIVEN}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        path = folder / f"{PATIENT_ID}_{n}.dcm"
        with pydicom.config.disable_value_validation():
            instance(n, rng).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------
# The scanner


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def byte_forms(value: str) -> set[bytes]:
    """A value as it could sit in bytes: UTF-8, Latin-1, UTF-16 (both orders) and
    double-encoded UTF-8, each in its own, upper and lower case."""
    out = set()
    for text in {value, value.upper(), value.lower()}:
        for codec in ("utf-8", "latin-1", "utf-16-le", "utf-16-be"):
            with contextlib.suppress(UnicodeEncodeError):
                out.add(text.encode(codec))
        out.add(text.encode("utf-8").decode("latin-1").encode("utf-8"))
    return out


def _dicom_texts(ds: Dataset) -> list[str]:
    """Every element value decoded, at every depth (bytes shown as Latin-1)."""
    out = []
    for elem in ds.iterall():
        value = elem.value
        if isinstance(value, bytes):
            out.append(value.decode("latin-1"))
        elif elem.VR != "SQ":
            out.append(str(value))
    return out


def _parquet_texts(path: Path) -> list[str]:
    table = pq.read_table(path)
    skip = {"source", "member"} if "errors" in path.parts else set()  # raw locations
    return [str(v) for name in table.column_names if name not in skip for v in table[name]]


def output_texts(root: Path, logs: str = "") -> dict[str, list[str]]:
    """Every output file under ``root`` as texts to search: raw bytes (Latin-1 view),
    decoded DICOM elements, inflated gzip/deflate, Parquet cells, and the logs."""
    found: dict[str, list[str]] = {"logs": [logs]}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        texts = []
        if path.suffix == ".parquet":
            texts += _parquet_texts(path)
        else:
            texts.append(data.decode("latin-1"))
        if path.suffix == ".gz":
            texts.append(gzip.decompress(data).decode("latin-1"))
        if path.suffix == ".dcm":
            ds = pydicom.dcmread(path)
            texts += _dicom_texts(ds)
            if ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99":
                texts.append(zlib.decompress(data[132:], -15).decode("latin-1"))
        if path.suffix == ".json":
            texts.append(json.dumps(json.loads(data), ensure_ascii=False))
        found[str(path.relative_to(root))] = texts
    return found


def leaks(found: dict[str, list[str]], planted=PLANTED) -> dict[str, list[str]]:
    """category → ["value in file", ...] for every planted value found anywhere."""
    out: dict[str, list[str]] = {}
    forms = {
        p: {f.decode("latin-1") for f in byte_forms(p.value)} | {_fold(p.value)} for p in planted
    }
    for where, texts in found.items():
        for text in texts:
            folded = _fold(text)
            for p in planted:
                if any(f in text for f in forms[p]) or _fold(p.value) in folded:
                    out.setdefault(p.category, []).append(f"{p.value} in {where}")
    return out


def counts_by_category(planted=PLANTED) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in planted:
        out[p.category] = out.get(p.category, 0) + 1
    return out
