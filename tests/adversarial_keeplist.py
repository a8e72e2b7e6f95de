"""A second adversarial corpus: identifying text planted where the keep-list lets values
through, one case per leak class of issue 23, and one fake patient whose own identifiers
come back in other spellings. The scanner of ``adversarial.py`` searches every output byte.

Classes (``Planted.category``):

1. ``keeplist_text``: free text in keep-listed LO/SH attributes (names, phone, e-mail, URL,
   address, a third party's name in Manufacturer);
2. ``cs_free_text``: CS attributes without defined terms, at any depth;
3. ``wrong_vr``: values written with a VR other than the dictionary's (CS as LT and OB,
   LO as UT);
4. ``numbers``: IS, DS and binary numbers equal to or holding the patient's numeric ID;
5. ``binary_text``: keep-listed byte values carrying ASCII (US, FD, ICC profile text);
6. ``local_codes``: code values, schemes, versions, long and URN codes of a local scheme;
7. ``own_spellings``: the patient's identifiers without prefix, transliterated, one edit
   away, as halves of a hyphenated surname, as two-digit-year and month-name dates, and
   admission and placer order numbers;
8. ``pixel_stream``: JPEG COM and APP1 segments inside encapsulated frames, bytes after the
   last native frame, and overlay bits above BitsStored.
"""

import io
import struct
from pathlib import Path

import numpy as np
import pydicom
from adversarial import Planted
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

FAMILY, GIVEN = "Müllerstein-Vasquore", "Idrella"
PATIENT_ID, BIRTH_DATE = "MRN-004773190", "19420307"
ADMISSION, PLACER = "ADM77123", "PO-998231"

PLANTED = (
    Planted("keeplist_text", "Halvergast"),
    Planted("keeplist_text", "617-555-0143"),
    Planted("keeplist_text", "555-0143"),
    Planted("keeplist_text", "fenwright"),
    Planted("keeplist_text", "Oakhurst"),
    Planted("keeplist_text", "Penrose"),
    Planted("keeplist_text", "Brandlemoor"),
    Planted("keeplist_text", "Zelbrow"),
    Planted("keeplist_text", "Wexcombe"),
    Planted("keeplist_text", "tarnwick"),
    Planted("cs_free_text", "GRIMSHADE"),
    Planted("cs_free_text", "HOLLOWAYNE"),
    Planted("cs_free_text", "QUILLANDER"),
    Planted("wrong_vr", "Marlowick"),
    Planted("wrong_vr", "KESTRALIND"),
    Planted("wrong_vr", "Bellingrave"),
    Planted("numbers", "4773190"),
    Planted("binary_text", "Wendlock"),
    Planted("binary_text", "Yarrowfeld"),
    Planted("binary_text", "Cresswater"),
    Planted("local_codes", "HALDANE77"),
    Planted("local_codes", "ORCHARDV"),
    Planted("local_codes", "ORCH2019"),
    Planted("local_codes", "Pemberley"),
    Planted("local_codes", "orchardvale"),
    Planted("own_spellings", "Müllerstein"),
    Planted("own_spellings", "Muellerstein"),
    Planted("own_spellings", "Vasquore"),
    Planted("own_spellings", "Vasqore"),
    Planted("own_spellings", "Idrella"),
    Planted("own_spellings", "3/7/42"),
    Planted("own_spellings", "7-Mar-42"),
    Planted("own_spellings", ADMISSION),
    Planted("own_spellings", "998231"),
    Planted("pixel_stream", "Tollbridge"),
    Planted("pixel_stream", "Gantwhistle"),
)

# Where each plant sits: keep-listed attributes (the test checks that they are).
KEEPLISTED = (
    "ProcessingFunction",
    "ConfidentialityCode",
    "AlgorithmSource",
    "DataSetSource",
    "ReceiveCoilName",
    "TransmitCoilName",
    "ConvolutionKernel",
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "TransducerData",
    "FilterType",
    "SequenceName",
    "AlgorithmVersion",
    "ContentLabel",
    "TemplateIdentifier",
    "ICCProfile",
)


def icc_profile(text: str) -> bytes:
    """A minimal ICC v2 profile with a ``desc`` and a ``cprt`` tag holding ``text``."""
    desc = b"desc" + b"\x00" * 4 + struct.pack(">I", len(text) + 1) + text.encode() + b"\x00"
    desc += b"\x00" * (12 + 67)  # empty Unicode and ScriptCode parts
    cprt = b"text" + b"\x00" * 4 + f"Copyright {text}".encode() + b"\x00"
    tags = [(b"desc", desc), (b"cprt", cprt)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        data += b"\x00" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = struct.pack(">I", size) + b"none" + b"\x02\x10\x00\x00" + b"mntrRGB XYZ "
    header += b"\x00" * 12 + b"acsp" + b"\x00" * (128 - 40)
    return header + struct.pack(">I", len(tags)) + table + body


def _code(**attributes) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def _base(n: int) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.10"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.11"
    ds.Modality = "CT"
    ds.PatientName = f"{FAMILY}^{GIVEN}"
    ds.PatientID, ds.PatientBirthDate = PATIENT_ID, BIRTH_DATE
    ds.AccessionNumber = "ACC5531902"
    ds.AdmissionID = ADMISSION
    request = Dataset()
    request.PlacerOrderNumberImagingServiceRequest = PLACER
    ds.RequestAttributesSequence = Sequence([request])
    ds.StudyDate, ds.StudyTime = "20200105", "101500"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.BurnedInAnnotation = "NO"
    ds.InstanceNumber = str(n + 1)
    return ds


def _pixels(ds: Dataset, rng: np.random.Generator, trailing: bytes = b"") -> None:
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    pixels = rng.integers(0, 4000, (16, 16), dtype=np.uint16)
    pixels[4:8, 4:12] |= 0x8000  # an overlay burned into bit 15, above BitsStored
    ds.PixelData = pixels.tobytes() + trailing


def _jpeg(ds: Dataset, rng: np.random.Generator) -> None:
    """An 8-bit JPEG baseline frame with a COM and an EXIF (APP1) segment."""
    image = Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), "L")
    buf = io.BytesIO()
    exif = b"Exif\x00\x00Gantwhistle camera\x00"
    image.save(buf, "JPEG", quality=90, comment=b"Tollbridge comment", exif=exif)
    frame = buf.getvalue()
    assert b"Tollbridge" in frame and b"Gantwhistle" in frame
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"


def instance(n: int, rng: np.random.Generator) -> tuple[Dataset, str]:
    """The ``n``-th object: each carries a share of the plants. Returns it and its
    transfer syntax."""
    ds = _base(n)
    syntax = ExplicitVRLittleEndian
    if n == 0:  # 1. free text in keep-listed attributes; 4. numbers; 2. CS
        ds.ProcessingFunction = "Processed by Dr. Halvergast"
        ds.ConfidentialityCode = "call 617-555-0143"
        ds.AlgorithmSource = "ask j.fenwright@hospital.example"
        ds.DataSetSource = "Oakhurst Imaging, 14 Penrose Lane"
        ds.ReceiveCoilName = "Brandlemoor"
        ds.ConvolutionKernel = "B30f Zelbrow"
        ds.Manufacturer = "Wexcombe Medical"
        ds.ManufacturerModelName = "SOMATOM Definition AS+"
        ds.SoftwareVersions = "VB17A www.tarnwick.example"
        ds.ContentLabel = "GRIMSHADE"
        ds.AcquisitionNumber = "4773190"
        ds.SliceLocation = "-4773190.5"
        template = Dataset()
        template.MappingResource = "DCMR"
        template.TemplateIdentifier = "QUILLANDER"
        ds.ContentTemplateSequence = Sequence([template])
        _pixels(ds, rng)
    elif n == 1:  # 3. wrong VRs; 5. binary text; 6. local codes
        ds.add_new(0x00185101, "LT", "HOLLOWAYNE")  # ViewPosition (CS) written as LT
        ds.add_new(0x00181508, "LT", "Marlowick said so")  # PositionerType (CS) as LT
        ds.add_new(0x00181210, "OB", b"KESTRALIND")  # ConvolutionKernel (SH) as OB
        ds.add_new(0x00660031, "UT", "Bellingrave " * 8)  # AlgorithmVersion (LO) as UT
        ds.AcquisitionMatrix = list(struct.unpack("<4H", b"Wendlock"))  # 4 US of text
        mapping = Dataset()
        mapping.RealWorldValueFirstValueMapped = 0
        mapping.RealWorldValueLastValueMapped = 4095
        mapping.RealWorldValueLUTData = list(struct.unpack("<2d", b"Yarrowfeld notes"))
        ds.RealWorldValueMappingSequence = Sequence([mapping])
        ds.ICCProfile = icc_profile("Cresswater")
        ds.AnatomicRegionSequence = Sequence(
            [
                _code(
                    CodeValue="HALDANE77",
                    CodingSchemeDesignator="99ORCHARDV",
                    CodingSchemeVersion="ORCH2019",
                    CodeMeaning="Haldane region",
                ),
                _code(
                    LongCodeValue="Pemberley long local code",
                    CodingSchemeDesignator="99ORCHARDV",
                    CodeMeaning="Pemberley",
                ),
                _code(
                    URNCodeValue="urn:orchardvale:patient:4773190",
                    CodingSchemeDesignator="99ORCHARDV",
                    CodeMeaning="Orchardvale",
                ),
            ]
        )
        _pixels(ds, rng, trailing=b"Tollbridge trailing bytes")
    else:  # 7. the patient's own identifiers in other spellings; 8. JPEG segments
        ds.ReceiveCoilName = "MUELLERSTEIN"
        ds.TransmitCoilName = "Vasqore"  # one letter missing
        ds.TransducerData = "Vasquore probe 7-Mar-42"
        ds.FilterType = "F 3/7/42"
        ds.SequenceName = "IDRELLA"
        ds.DataSetSource = f"{ADMISSION} order 998231"
        ds.AlgorithmVersion = "4773190"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "VASQUORE"]  # a CT: value 3 is required
        _jpeg(ds, rng)
        syntax = JPEGBaseline8Bit
    return ds, syntax


def write_corpus(directory: Path, count: int = 3, seed: int = 1) -> list[Path]:
    """``count`` objects (each plant class at least once when ``count`` >= 3)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        ds, syntax = instance(n % 3, rng)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = directory / f"object_{n}.dcm"
        with pydicom.config.disable_value_validation():
            ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def bits_above_stored(ds: Dataset) -> bool:
    """Whether any stored pixel has a bit set above BitsStored (unsigned data), read from
    the raw bytes where they are native, else from the decoded frames."""
    if "PixelData" not in ds or int(ds.get("PixelRepresentation", 0)):
        return False
    stored, allocated = int(ds.BitsStored), int(ds.BitsAllocated)
    if stored >= allocated:
        return False
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        arr = ds.pixel_array.astype(np.uint64)
    else:
        arr = np.frombuffer(ds.PixelData, dtype=f"<u{allocated // 8}").astype(np.uint64)
    return bool(np.any(arr >> stored))
