"""The generated PS3.15 Table E.1-1 data file (transforms/deid/deid_profile.json).

Reads the committed file only: no network, no regeneration (that is scripts/gen_deid_profile.py).
"""

import json
import re
from pathlib import Path

import pytest

import transforms

PROFILE_PATH = Path(transforms.__file__).parent / "deid" / "deid_profile.json"

# dicom-anonymizer 2.1.0 dicomfields_2026c holds 655 entries (D 93, Z 42, X 415, U 55, Z/D 6,
# X/Z 11, X/D 23, X/Z/D 8, X/Z/U* 2): 655 distinct tags, none repeated, none in two lists, so one
# row per tag row of the 655-row 2026c table. The "Private Attributes" row ((gggg,eeee) where
# gggg is odd) is a rule rather than a tag; the package's scraper skips it, so it is not here.
EXPECTED_ROWS = 655

ACTIONS = {"D", "Z", "X", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
OPTIONS = [
    "retain_safe_private",
    "retain_uids",
    "retain_device_identity",
    "retain_institution_identity",
    "retain_patient_characteristics",
    "retain_long_full_dates",
    "retain_long_modified_dates",
    "clean_descriptors",
    "clean_structured_content",
    "clean_graphics",
]


@pytest.fixture(scope="module")
def profile() -> dict:
    return json.loads(PROFILE_PATH.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def rows_by_tag(profile) -> dict[str, dict]:
    return {row["tag"]: row for row in profile["rows"]}


def test_header(profile):
    assert profile["standard"] == "DICOM PS3.15 2026c, Table E.1-1"
    assert profile["generated_by"] == "scripts/gen_deid_profile.py"
    assert profile["options"] == OPTIONS


def test_row_count(profile):
    assert len(profile["rows"]) == EXPECTED_ROWS


def test_tags_unique_well_formed_and_sorted(profile):
    tags = [row["tag"] for row in profile["rows"]]
    assert len(set(tags)) == len(tags)
    assert tags == sorted(tags)
    assert all(re.fullmatch(r"[0-9a-fx]{8}", tag) for tag in tags)


def test_actions_and_options_are_known(profile):
    declared = set(profile["options"])
    for row in profile["rows"]:
        assert row["action"] in ACTIONS, row
        assert set(row["options"]) <= declared, row
        assert all(row["options"].values()), row


@pytest.mark.parametrize(
    ("tag", "keyword", "action", "options"),
    [
        ("00100010", "PatientName", "Z", {}),
        # Z/D since the 2024b edition (2020 had Z); the package lists it under Z_D_TAGS.
        ("00100020", "PatientID", "Z/D", {}),
        ("0020000d", "StudyInstanceUID", "U", {"retain_uids": "K"}),
        ("00080018", "SOPInstanceUID", "U", {"retain_uids": "K"}),
        ("00080050", "AccessionNumber", "Z", {}),
        ("00100030", "PatientBirthDate", "Z", {}),
        ("00080080", "InstitutionName", "X/Z/D", {"retain_institution_identity": "K"}),
        (
            "00080020",
            "StudyDate",
            "Z",
            {"retain_long_full_dates": "K", "retain_long_modified_dates": "C"},
        ),
        ("60xx3000", None, "X", {"clean_graphics": "C"}),
        ("60xx4000", None, "X", {"clean_graphics": "C"}),
        ("50xxxxxx", None, "X", {"clean_graphics": "C"}),
    ],
)
def test_well_known_rows(rows_by_tag, tag, keyword, action, options):
    row = rows_by_tag[tag]
    assert row["keyword"] == keyword
    assert row["action"] == action
    assert row["options"] == options
