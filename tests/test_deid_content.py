"""The steps behind the keep-list: the content check (transforms/deid/content.py,
checks.py), the patient's identifiers in every spelling (identifiers.py), local codes,
dictionary VRs, site overrides and the pixel-stream rebuild (streams.py)."""

import io
import struct

import numpy as np
import pydicom
import pytest
from adversarial_keeplist import icc_profile
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from transforms import deid
from transforms.deid import streams
from transforms.deid.identifiers import PatientIdentifiers

KEY = b"c" * 32
PROFILE = deid.Profile.load()


@pytest.fixture(scope="module")
def check() -> deid.ContentCheck:
    return deid.ContentCheck.load()


def engine(key: bytes = KEY, **config) -> deid.Deidentifier:
    return deid.Deidentifier(PROFILE, deid.DeidConfig(**config), key)


def dataset(**attributes) -> Dataset:
    ds = Dataset()
    ds.PatientID = "MRN-0047731"
    ds.PatientName = "Müller-Okafor^Zaneta"
    ds.PatientBirthDate = "19420307"
    ds.AdmissionID = "ADM5521"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def run(ds: Dataset, **config):
    return ds, engine(**config).deidentify_counted(ds)


# --- the content check ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, kept",
    [
        ("B30f", "B30f"),
        ("GE MEDICAL SYSTEMS", "GE MEDICAL SYSTEMS"),
        ("SOMATOM Definition AS+", "SOMATOM Definition AS+"),
        ("HELICAL MODE", "HELICAL MODE"),
        ("t1_vibe_fs_tra_bh_dyn", "t1_vibe_fs_tra_bh_dyn"),
        ("Version 3.3.1", "Version 3.3.1"),
        ("B30f Zelbrow", "B30f"),  # token by token: the kernel stays, the word goes
        ("Processed by Dr. Halvergast", "Processed"),
        ("call +44 161 496 0733", None),
        ("q.b@example.org", None),
        ("see https://pacs.example/x", "see"),
        ("221B Veltmore Street", None),
        ("Oakhurst, 14 Penrose Lane", None),
        ("scan 3/7/42", "scan"),
        ("7-Mar-42", None),
        ("March 7th, 1942", None),
        ("ref 88231044", "ref"),
        ("John Smith", None),  # names of Faker's locales, real words or not
        ("QUILLANDER", None),  # a word no vocabulary knows
        ("Dr. Amy Lee", None),  # three-letter names, and whatever follows a title
        ("FFE SPI", "FFE SPI"),
    ],
)
def test_content_check_keeps_technical_text_and_cuts_identifying_text(check, value, kept):
    assert check.check(value, None).value == kept


def test_code_strings_are_judged_whole(check):
    assert check.check("CSA MPR", None, tokenwise=False).value == "CSA MPR"
    assert check.check("CSA GRIMSHADE", None, tokenwise=False).value is None


def test_vocabulary_is_data_with_sources(check):
    import json

    data = json.loads(deid.VOCABULARY_PATH.read_text())
    assert {"manufacturers", "products", "technical_words", "coding_schemes"} <= set(data)
    assert "siemens" in check.phrases and "kernel" in check.words
    assert "smith" in check.names and "smith" not in check.words


# --- the patient's identifiers in every spelling --------------------------------------------


def test_patient_identifiers_are_found_in_every_spelling():
    own = PatientIdentifiers.of(dataset())
    found = [
        "MUELLER",  # transliterated
        "muller",  # accents folded
        "Okafor",  # each half of a hyphenated surname
        "Okafr",  # one letter missing
        "Zanetta",  # one letter added
        "0047731",  # the MRN without its prefix
        "47731",  # and without leading zeros
        "MRN 0047731",  # another separator
        "3/7/42",  # two-digit year, no leading zeros
        "07.03.1942",
        "7 Mar 1942",  # month names
        "ADM5521",  # the admission number
        "ZB-4773",  # initials beside a fragment of the ID
    ]
    for text in found:
        assert own.found(text), text
    for text in ("MALLET SCAN", "B30f", "19420308", "CHEST", "0473"):
        assert not own.found(text), text
    assert own.number("47731") and own.number("-47731.5") and not own.number("512")


def test_identifiers_are_gathered_at_any_depth():
    ds = dataset()
    request = Dataset()
    request.PlacerOrderNumberImagingServiceRequest = "PO-998231"
    ds.RequestAttributesSequence = Sequence([request])
    assert PatientIdentifiers.of(ds).found("order 998231")


def test_identifiers_are_gathered_from_every_sequence_at_any_depth():
    """A copy of an identifier in an item that no module reserves for identification (a
    referenced study inside a source image item) is looked for too, and cut from kept text
    elsewhere."""
    ds = dataset()
    study = Dataset()
    study.AccessionNumber = "QX-2290417"
    study.PatientID = "ALT-5518803"
    source = Dataset()
    source.ReferencedStudySequence = Sequence([study])
    ds.SourceImageSequence = Sequence([source])
    own = PatientIdentifiers.of(ds)
    assert own.found("acc 2290417") and own.found("5518803")
    ds.ConvolutionKernel = "B30f QX2290417"
    ds.AcquisitionNumber = "5518803"
    ds, counts = run(ds)
    assert ds.ConvolutionKernel == "B30f"
    assert ds.AcquisitionNumber == 0
    assert counts["patient_identifier:AcquisitionNumber"] == 1


def test_numbers_holding_the_patients_id_are_replaced():
    ds = dataset(AcquisitionNumber="47731", SliceLocation="-47731.5", Rows=47731, Columns=16)
    ds, counts = run(ds)
    assert ds.AcquisitionNumber == 0 and float(ds.SliceLocation) == 0
    assert ds.Rows == 0 and ds.Columns == 16
    assert counts["patient_identifier:AcquisitionNumber"] == 1


def test_kept_text_is_cleaned_token_by_token_and_counted():
    ds = dataset(ConvolutionKernel="B30f Zelbrow", ProcessingFunction="Zaneta's scan")
    ds, counts = run(ds)
    assert ds.ConvolutionKernel == "B30f"
    assert "Zaneta" not in str(ds.get("ProcessingFunction", ""))
    assert counts["content:ConvolutionKernel"] == 1
    assert counts["patient_identifier:ProcessingFunction"] == 1


def test_byte_values_are_read_as_text():
    ds = dataset()
    ds.AcquisitionMatrix = list(struct.unpack("<4H", b"Wendlock"))
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 8]
    lut.add_new(0x00283006, "US", list(range(256)))  # LUTData: a ramp is not text
    ds.VOILUTSequence = Sequence([lut])
    raw = io.BytesIO()
    pydicom.dcmwrite(raw, ds, implicit_vr=False, little_endian=True)
    ds = pydicom.dcmread(io.BytesIO(raw.getvalue()), force=True)  # raw, as read from files
    ds, counts = run(ds)
    assert b"Wendlock" not in bytes(struct.pack("<4H", *ds.get("AcquisitionMatrix", [0] * 4)))
    assert counts["content:AcquisitionMatrix"] == 1
    assert list(ds.VOILUTSequence[0].LUTData) == list(range(256))


# --- VR from the dictionary -----------------------------------------------------------------


def test_values_written_with_another_vr_are_read_with_the_dictionarys():
    ds = dataset()
    ds.add_new(0x00185101, "LT", "AP")  # ViewPosition (CS) as LT: parses, converted
    ds.add_new(0x00181508, "LT", "said by someone")  # PositionerType: no CS
    ds.add_new(0x00660031, "UT", "x" * 80)  # AlgorithmVersion (LO): too long
    ds, counts = run(ds)
    assert ds["ViewPosition"].VR == "CS" and ds.ViewPosition == "AP"
    assert "PositionerType" not in ds or ds.PositionerType in ("", "ANONYMIZED")
    assert counts["vr:PositionerType"] == 1 and counts["vr:AlgorithmVersion"] == 1


# --- local codes ----------------------------------------------------------------------------


def _coded(scheme: str, value: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, "typed"
    return dataset(AnatomicRegionSequence=Sequence([item]))


def test_local_codes_become_keyed_pseudonyms_that_still_group():
    a, counts = run(_coded("99ORCHARD", "HALDANE77"))
    b, _ = run(_coded("99ORCHARD", "HALDANE77"))
    code_a, code_b = a.AnatomicRegionSequence[0], b.AnatomicRegionSequence[0]
    assert code_a.CodeValue == code_b.CodeValue != "HALDANE77"
    assert code_a.CodingSchemeDesignator.startswith("99") and "ORCHARD" not in str(a)
    assert counts["code:CodeValue"] == 1
    other = _coded("99ORCHARD", "HALDANE77")
    deid.Deidentifier(PROFILE, deid.DeidConfig(), b"o" * 32).deidentify(other)
    assert other.AnatomicRegionSequence[0].CodeValue != code_a.CodeValue  # another key


def test_standard_codes_stay():
    ds, counts = run(_coded("SCT", "39607008"))
    item = ds.AnatomicRegionSequence[0]
    assert (item.CodeValue, item.CodingSchemeDesignator) == ("39607008", "SCT")
    assert item.CodeMeaning == deid.keeplist.code_meanings()[("SCT", "39607008")]
    assert not [k for k in counts if k.startswith("code:")]


# --- site overrides -------------------------------------------------------------------------


def test_overrides_are_validated_recorded_and_still_checked():
    config = deid.DeidConfig.from_yaml(
        "overrides:\n"
        "  keep: [StationName]\n"
        "  remove: ['(0018,1210)']\n"
        "  tags:\n"
        "    ProtocolName: {action: K, trust_content: true}\n"
    )
    assert [o.action for o in config.overrides] == ["K", "K", "X"]
    assert config.describe()["overrides"][0] == {
        "tag": "00081010",
        "action": "K",
        "trust_content": False,
    }
    assert config.warnings() and "Protocol Name" in config.warnings()[0]
    ds = dataset(StationName="CT01 Zaneta", ProtocolName="Zelbrow routine")
    ds.ConvolutionKernel = "B30f"
    ds, counts = run(ds, overrides=config.overrides)
    assert ds.StationName == "CT01" and "ConvolutionKernel" not in ds
    assert ds.ProtocolName == "Zelbrow routine"  # trusted: kept as the site asked
    assert counts["override:StationName"] == 1
    for bad in ("overrides: {keep: [NoSuchKeyword]}", "overrides: {tags: {StationName: Q}}"):
        with pytest.raises(ValueError):
            deid.DeidConfig.from_yaml(bad)


# --- pixel streams --------------------------------------------------------------------------


def test_jpeg_comment_and_app_segments_go_and_the_pixels_stay():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), "L")
    buf = io.BytesIO()
    image.save(buf, "JPEG", comment=b"Tollbridge", exif=b"Exif\x00\x00Gantwhistle\x00")
    frame = buf.getvalue()
    stripped = streams.strip_jpeg(frame)
    assert b"Tollbridge" not in stripped and b"Gantwhistle" not in stripped
    assert streams.strip_jpeg(frame + b"Hexleigh after EOI") == stripped
    assert streams.strip_jpeg(stripped + b"\x00") == stripped + b"\x00"  # padding stays
    decoded = np.asarray(Image.open(io.BytesIO(stripped)))
    assert np.array_equal(decoded, np.asarray(Image.open(io.BytesIO(frame))))
    ds = dataset(Rows=16, Columns=16, BitsAllocated=8, BitsStored=8, HighBit=7)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.PixelData = encapsulate([frame])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds, counts = run(ds)
    assert counts["pixels:stream_segments"] == 1
    out = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert out[: len(stripped)] == stripped  # (an odd frame is padded to even length)


def test_jpeg2000_comments_go_losslessly():
    path = get_testdata_file("MR_small_jp2klossless.dcm")
    original = pydicom.dcmread(path)
    frame = next(generate_frames(original.PixelData, number_of_frames=1))
    assert b"\xff\x64" in frame[: frame.find(b"\xff\x90")]  # OpenJPEG's COM
    ds = pydicom.dcmread(path)
    ds, _ = run(ds)
    out = next(generate_frames(ds.PixelData, number_of_frames=1))
    assert b"\xff\x64" not in out[: out.find(b"\xff\x90")]
    assert np.array_equal(ds.pixel_array, original.pixel_array)


def test_native_pixels_are_cut_to_size_and_cleared_above_bits_stored():
    pixels = np.full((4, 4), 0x0ABC, dtype=np.uint16)
    pixels[0, 0] = 0xFABC  # an overlay bit pattern above BitsStored
    ds = dataset(Rows=4, Columns=4, BitsAllocated=16, BitsStored=12, HighBit=11)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.PixelData = pixels.tobytes() + b"Tollbridge!!"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds, counts = run(ds)
    out = np.frombuffer(ds.PixelData, dtype="<u2")
    assert len(ds.PixelData) == 32 and not np.any(out >> 12)
    assert out[0] == 0x0ABC and np.all(out[1:] == 0x0ABC)
    assert counts["pixels:trailing_bytes"] == 1 and counts["pixels:bits_above_stored"] == 1


@pytest.mark.parametrize(
    "keyword, dtype", [("FloatPixelData", "<f4"), ("DoubleFloatPixelData", "<f8")]
)
def test_float_pixels_are_cut_to_size_and_their_values_kept(keyword, dtype):
    pixels = np.linspace(-1.5, 47731.0, 9, dtype=dtype).reshape(3, 3)  # the MRN as a sample
    ds = dataset(Rows=3, Columns=3, SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2")
    ds.BitsAllocated = 32 if dtype == "<f4" else 64
    setattr(ds, keyword, pixels.tobytes() + b"Tollbridge!!")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds, counts = run(ds)
    data = getattr(ds, keyword)
    assert np.array_equal(np.frombuffer(data, dtype=dtype), pixels.ravel())
    assert counts["pixels:trailing_bytes"] == 1


def test_binary_numbers_up_to_sixteen_values_are_compared_longer_arrays_are_not():
    ds = dataset()
    ds.RealWorldValueLUTData = [float(v) for v in range(11)] + [47731.0]  # 96 bytes
    ds.add_new(0x00283006, "US", list(range(47720, 47740)))  # LUTData: a 20-value ramp
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "2.25.7"
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=False, little_endian=True)
    ds = pydicom.dcmread(io.BytesIO(buffer.getvalue()), force=True)  # raw, as read from files
    ds, counts = run(ds)
    assert list(ds.RealWorldValueLUTData) == [float(v) for v in range(11)] + [0.0]
    assert counts["patient_identifier:RealWorldValueLUTData"] == 1
    assert list(ds[0x00283006].value) == list(range(47720, 47740))


def test_icc_profiles_lose_their_text_and_still_parse():
    profile = icc_profile("Cresswater")
    cleaned = streams.clean_icc(profile)
    assert cleaned is not None and b"Cresswater" not in cleaned and len(cleaned) == len(profile)
    assert streams.clean_icc(b"not a profile") is None
    ds = dataset(ICCProfile=b"not a profile")
    ds, counts = run(ds)
    assert not any(ds.get("ICCProfile", b""))  # removed (zeros where type 1)
    assert counts["pixels:icc_profile_removed"] == 1


def test_ct_image_type_keeps_a_value_3():
    ds = dataset(ImageType=["ORIGINAL", "PRIMARY", "ZANETA"])
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds, _ = run(ds)
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "OTHER"]
