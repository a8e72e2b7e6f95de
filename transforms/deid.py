"""De-identification: DICOM PS3.15 Annex E (Table E.1-1) with its options and keyed pseudonyms.

Pure functions on pydicom Datasets; ``Deidentify``/``DeidentifyFn`` (bottom) are the thin
Beam shell.

The table is data (``deid_profile.json``, generated from maintained packages by
``scripts/gen_deid_profile.py``), never typed here. What this module adds is the meaning
of each action, the options, and a few safety nets for what the table does not list:
every private tag goes (unless retain-safe-private keeps a listed one), every repeating
overlay/curve group goes, and unlisted person names, dates and instance UIDs are treated
as if listed.

Pseudonyms are HMAC-SHA256 under the secret key, so the same input gives the same UIDs,
patient IDs, accession numbers and per-patient date shift in every run and on every
worker, and nobody without the key can recompute them.
"""

import base64
import datetime
import functools
import hashlib
import hmac
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import apache_beam as beam
import numpy as np
import yaml
from apache_beam.metrics import Metrics
from pydicom import config as pydicom_config
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

from transforms.deadletter import (
    DEAD_LETTER,
    STAGE_DEIDENTIFY,
    STAGE_PARSE,
    DeadLetter,
    StageError,
    unexpected,
)
from transforms.dicom_io import METRICS_NAMESPACE, SourceObject, parse_dataset
from transforms.keys import KeySource

PROFILE_PATH = Path(__file__).with_name("deid_profile.json")

# DICOM's UID root for UUID-derived UIDs; 2.25.<128-bit integer> is at most 44 characters.
UID_ROOT = "2.25."
IMPLEMENTATION_CLASS_UID = "2.25.186034580618238893215227373463434178557"  # dicomflow's own
IMPLEMENTATION_VERSION = "DICOMFLOW_0_1"

# CID 7050 (De-identification Method): the profile and each option we apply.
CID_7050 = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel_data": ("113101", "Clean Pixel Data Option"),
    "clean_graphics": ("113103", "Clean Graphics Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_long_full_dates": (
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    "retain_long_modified_dates": (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}

_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
_BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_STRING_VRS = frozenset("AE AS CS DA DS DT IS LO LT PN SH ST TM UC UI UR UT".split())
_DUMMY = {
    "AE": "ANONYMOUS",
    "AS": "000Y",
    "CS": "ANONYMIZED",
    "DS": "0",
    "IS": "0",
    "PN": "ANONYMIZED",
    "UR": "",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "AT": 0,
    **{vr: "ANONYMIZED" for vr in _TEXT_VRS},
    **{vr: 0 for vr in ("FL", "FD", "SL", "SS", "UL", "US", "SV", "UV")},
}
_PATIENT_ID = 0x00100020
_PATIENT_NAME = 0x00100010
_ACCESSION_NUMBER = 0x00080050
_PIXEL_DATA = 0x7FE00010
_DATE_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})")
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# Unlisted UIDs are replaced unless they name a class, syntax or scheme rather than a thing.
_CLASS_UID_KEYWORDS = (
    "ClassUID",
    "TransferSyntaxUID",
    "CodingSchemeUID",
    "ContextUID",
    "MappingResourceUID",
    "ContextGroupExtensionCreatorUID",
)
# Nested attributes kept as they are: the parts of a code, which name concepts, not people.
_CODE_KEYWORDS = frozenset(
    """CodeValue CodingSchemeDesignator CodingSchemeVersion CodeMeaning LongCodeValue
    URNCodeValue MappingResource ContextIdentifier ContextGroupVersion
    ContextGroupLocalVersion ValueType RelationshipType ContinuityOfContent""".split()
)
_LONG_NUMBER_RE = re.compile(r"\d{5,}")


# ---------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Rule:
    """One row of Table E.1-1: the basic action and the option cells that override it."""

    tag: str  # 8 hex digits, "x" for a repeating-group nibble
    name: str
    action: str
    options: dict[str, str]


@dataclass(frozen=True)
class Profile:
    standard: str
    option_names: tuple[str, ...]
    rules: tuple[Rule, ...]

    @classmethod
    def load(cls, path: Path = PROFILE_PATH) -> "Profile":
        data = json.loads(Path(path).read_text())
        rules = tuple(
            Rule(r["tag"], r["name"], r["action"], dict(r.get("options") or {}))
            for r in data["rows"]
        )
        return cls(data["standard"], tuple(data["options"]), rules)


def _mask(tag: str) -> tuple[int, int]:
    """``"60xx3000"`` → (mask, value): a tag t matches when ``t & mask == value``."""
    mask = int("".join("0" if c == "x" else "f" for c in tag), 16)
    return mask, int(tag.replace("x", "0"), 16)


# ---------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class SafePrivate:
    """A private element known to carry no identity: creator string and element byte."""

    creator: str
    element: int  # the low byte of the element number, e.g. 0x08 for (0029,xx08)


@dataclass(frozen=True)
class PixelPolicy:
    policy: str = "exclude"  # exclude | mask | keep
    # Always treated as risky: these modalities burn text into pixels as a rule.
    risky_modalities: tuple[str, ...] = ("US", "SC", "OT", "XC", "ES")
    # Risky only when BurnedInAnnotation is missing.
    missing_annotation_modalities: tuple[str, ...] = ("RF", "XA", "MG", "DX", "CR", "PX", "IO")
    # modality → boxes (x0, y0, x1, y1) as fractions of columns/rows, blanked on every frame.
    mask_regions: dict[str, tuple[tuple[float, float, float, float], ...]] = field(
        default_factory=dict
    )


@dataclass(frozen=True)
class DeidConfig:
    """The switchable parts of the profile. Defaults: modified (shifted) dates, nothing else
    retained, structured content and graphics removed rather than cleaned."""

    retain_long_full_dates: bool = False
    retain_long_modified_dates: bool = True
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_uids: bool = False
    retain_safe_private: bool = False
    clean_descriptors: bool = False
    clean_structured_content: bool = False
    clean_graphics: bool = False
    date_shift_days: tuple[int, int] = (-3650, -365)
    patient_name: str = "pseudonym"  # pseudonym | empty
    safe_private: tuple[SafePrivate, ...] = ()
    pixels: PixelPolicy = field(default_factory=PixelPolicy)

    def __post_init__(self):
        if self.retain_long_full_dates and self.retain_long_modified_dates:
            raise ValueError(
                "retain_long_full_dates and retain_long_modified_dates exclude each other"
            )
        lo, hi = self.date_shift_days
        if lo > hi:
            raise ValueError("date_shift_days must be [low, high] with low <= high")
        if self.patient_name not in ("pseudonym", "empty"):
            raise ValueError("patient_name must be 'pseudonym' or 'empty'")
        if self.pixels.policy not in ("exclude", "mask", "keep"):
            raise ValueError("pixels.policy must be exclude, mask or keep")

    def enabled_options(self) -> list[str]:
        return [
            n for n in CID_7050 if isinstance(getattr(self, n, None), bool) and getattr(self, n)
        ]

    @classmethod
    def from_mapping(cls, data: dict | None) -> "DeidConfig":
        """Builds a config from parsed YAML; unknown keys are errors, not silently ignored."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown de-id config keys: {', '.join(unknown)}")
        if "date_shift_days" in data:
            data["date_shift_days"] = tuple(int(x) for x in data["date_shift_days"])
        if "safe_private" in data:
            data["safe_private"] = tuple(
                SafePrivate(str(e["creator"]), int(str(e["element"]), 0))
                for e in data["safe_private"]
            )
        if "pixels" in data:
            pixels = dict(data["pixels"] or {})
            unknown = sorted(set(pixels) - {f.name for f in fields(PixelPolicy)})
            if unknown:
                raise ValueError(f"unknown de-id config keys: pixels.{', pixels.'.join(unknown)}")
            for key in ("risky_modalities", "missing_annotation_modalities"):
                if key in pixels:
                    pixels[key] = tuple(str(m).upper() for m in pixels[key])
            if "mask_regions" in pixels:
                pixels["mask_regions"] = {
                    str(m).upper(): tuple(tuple(float(v) for v in box) for box in boxes)
                    for m, boxes in (pixels["mask_regions"] or {}).items()
                }
            data["pixels"] = PixelPolicy(**pixels)
        return cls(**data)

    @classmethod
    def from_yaml(cls, text: str) -> "DeidConfig":
        return cls.from_mapping(yaml.safe_load(text))

    def describe(self) -> dict:
        """The config as recorded in manifests (no secrets live here)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "pixels":
                value = {
                    "policy": value.policy,
                    "risky_modalities": list(value.risky_modalities),
                    "missing_annotation_modalities": list(value.missing_annotation_modalities),
                    "mask_regions": {
                        k: [list(b) for b in v] for k, v in value.mask_regions.items()
                    },
                }
            elif f.name == "safe_private":
                value = [{"creator": s.creator, "element": s.element} for s in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


# ---------------------------------------------------------------------------------------
# Pseudonyms


class Pseudonymizer:
    """Keyed, deterministic replacements. Holds the key; never prints or pickles it."""

    def __init__(self, key: bytes, date_shift_days: tuple[int, int]):
        self._key = key
        self._shift_range = date_shift_days

    def __reduce__(self):
        raise TypeError("a Pseudonymizer holds the key and must not be pickled")

    def _digest(self, label: str, value: str) -> bytes:
        return hmac.new(self._key, f"{label}\0{value}".encode(), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        return UID_ROOT + str(int.from_bytes(self._digest("uid", value)[:16], "big"))

    def patient_id(self, value: str) -> str:
        return "PAT" + base64.b32encode(self._digest("patient", value)[:10]).decode()[:13]

    def accession(self, value: str) -> str:
        return "ACC" + base64.b32encode(self._digest("accession", value)[:10]).decode()[:13]

    def date_shift(self, patient_id: str) -> int:
        """Days added to every date of this patient: the same in every run and worker."""
        lo, hi = self._shift_range
        span = hi - lo + 1
        return lo + int.from_bytes(self._digest("date-shift", patient_id)[:8], "big") % span


def shift_date(value: str, days: int) -> str | None:
    """Shifts a DA, a DA range (``A-B``) or the date part of a DT by ``days``.

    A DT given to the year or month only is shifted at that precision. Returns None for
    anything that is not a valid date (it is then removed, never kept).
    """
    text = value.strip()
    if "-" in text[:9] and len(text) in (9, 17) and text.count("-") == 1:  # a DA range
        parts = [shift_date(p, days) if p else "" for p in text.split("-")]
        return None if None in parts else "-".join(parts)
    match = _DATE_RE.match(text)
    try:
        if match:
            day = datetime.date(*(int(g) for g in match.groups()))
            return (day + datetime.timedelta(days=days)).strftime("%Y%m%d") + text[8:]
        if re.fullmatch(r"\d{6}", text[:6]) and not text[6:7].isdigit():  # YYYYMM
            months = int(text[:4]) * 12 + int(text[4:6]) - 1 + round(days / 30.44)
            if not 1 <= int(text[4:6]) <= 12:
                return None
            return f"{months // 12:04d}{months % 12 + 1:02d}" + text[6:]
        if re.fullmatch(r"\d{4}", text[:4]) and not text[4:5].isdigit():  # YYYY
            return f"{int(text[:4]) + round(days / 365.25):04d}" + text[4:]
    except (ValueError, OverflowError):  # e.g. the placeholder 00010101
        return None
    return None


def clean_text(text: str, tokens: Iterable[str]) -> str:
    """Clean Descriptors: removes the patient's own identifiers and any long number."""
    out = text
    for token in sorted({t for t in tokens if len(t) >= 3}, key=len, reverse=True):
        out = re.sub(re.escape(token), "", out, flags=re.IGNORECASE)
    out = _LONG_NUMBER_RE.sub("", out)
    return re.sub(r"\s{2,}", " ", out).strip(" ,;:-^")


# ---------------------------------------------------------------------------------------
# The engine


_DEFAULT_ENCODINGS = ("iso8859",)
_keyword = functools.cache(keyword_for_tag)


def _encodings(ds: Dataset) -> tuple[str, ...]:
    charset = _values(ds, 0x00080005, ("iso8859",))  # SpecificCharacterSet is ASCII
    return tuple(convert_encodings(charset or ["ISO_IR 6"]))


def _values(ds: Dataset, tag: int, encodings: Iterable[str] = ("iso8859",)) -> list[str]:
    """An element's values as text, from the raw bytes while pydicom has not converted them
    (conversion is most of the cost of a walk, and text is all we need), decoded in the
    dataset's character set and stripped as pydicom strips, so raw and converted elements
    give the same text, and so the same pseudonym."""
    elem = ds.get_item(tag)
    if elem is None:
        return []
    if isinstance(elem, RawDataElement):
        raw = (elem.value or b"").rstrip(b"\x00 ")
        if not raw:
            return []
        if encodings == _DEFAULT_ENCODINGS:
            text = raw.decode("latin-1")  # what pydicom does for the default repertoire
        else:
            text = decode_bytes(raw, list(encodings), {0x5C})
        return [v.strip() for v in text.split("\\")]
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, (list, MultiValue)):
        return [str(v).strip() for v in value]
    return [str(value).strip()]


def _text(ds: Dataset, tag: int, encodings: Iterable[str] = ("iso8859",)) -> str:
    return "\\".join(_values(ds, tag, encodings))


def patient_key(ds: Dataset, encodings: Iterable[str] = ("iso8859",)) -> str:
    """What a patient's pseudonym and date shift derive from: the PatientID, or, for a file
    without one, its study (so patients without IDs are not merged into one)."""
    patient = _text(ds, _PATIENT_ID, encodings)
    if patient:
        return patient
    study = _text(ds, 0x0020000D, encodings)
    return f"study:{study}" if study else ""


def _is_standard_uid(value: str) -> bool:
    """DICOM's own UIDs (classes, syntaxes, codes) stay; the same answer on every worker,
    whatever pydicom version it runs."""
    return value.startswith("1.2.840.10008.")


def _set(ds: Dataset, tag: int, vr: str, value) -> None:
    """Replaces an element without converting its old value first (None: empty)."""
    if value is None:
        value = b"" if vr in _BYTES_VRS else "" if vr in _STRING_VRS else None
    ds[tag] = DataElement(tag, vr, value, validation_mode=pydicom_config.IGNORE)


@dataclass
class _Context:
    """Per-dataset facts gathered before anything is changed."""

    date_shift: int
    tokens: tuple[str, ...]
    encodings: tuple[str, ...]  # SpecificCharacterSet, inherited by nested items
    depth: int = 0  # 0 for the dataset, n inside n sequences
    # The identifiers of the dataset or item being walked, read before anything changed.
    originals: dict[int, str] = field(default_factory=dict)


class Deidentifier:
    """Applies the profile, as configured, under one key. Build once per worker."""

    def __init__(self, profile: Profile, config: DeidConfig, key: bytes):
        self.profile = profile
        self.config = config
        self.pseudonyms = Pseudonymizer(key, config.date_shift_days)
        enabled = {n for n in profile.option_names if getattr(config, n, False)}
        self._exact: dict[int, str] = {}
        self._masked: list[tuple[int, int, str]] = []
        for rule in profile.rules:
            action = effective_action(rule, enabled)
            if "x" in rule.tag:
                mask, value = _mask(rule.tag)
                self._masked.append((mask, value, action))
            else:
                self._exact[int(rule.tag, 16)] = action
        self._safe_private = {(s.creator, s.element) for s in config.safe_private}

    def action_for(self, tag: int) -> str | None:
        action = self._exact.get(tag)
        if action is not None:
            return action
        for mask, value, masked_action in self._masked:
            if tag & mask == value:
                return masked_action
        return None

    # -- entry point ----------------------------------------------------------------------

    def deidentify(self, ds: Dataset, pixels: str = "clean") -> Dataset:
        """De-identifies ``ds`` in place and returns it.

        Raises:
            StageError: ``deid_failed`` naming the attribute (by tag) that could not be
                processed; the message carries no value.
        """
        ctx = self._context(ds)
        self._walk(ds, ctx)
        self._mark(ds, pixels)
        self._file_meta(ds)
        return ds

    def linkage(self, ds: Dataset) -> dict[str, str]:
        """Original → pseudonym for patient, study and accession (call before deidentify)."""
        encodings = _encodings(ds)
        patient = patient_key(ds, encodings)
        study = _text(ds, 0x0020000D, encodings)
        accession = _text(ds, _ACCESSION_NUMBER, encodings)
        return {
            "patient_id": patient,
            "patient_pseudonym": self.pseudonyms.patient_id(patient),
            "study_instance_uid": study,
            "study_pseudonym": study
            if self.config.retain_uids or not study
            else self.pseudonyms.uid(study),
            "accession_number": accession,
            "accession_pseudonym": self.pseudonyms.accession(accession) if accession else "",
        }

    # -- the walk -------------------------------------------------------------------------

    def _context(self, ds: Dataset) -> _Context:
        encodings = _encodings(ds)
        patient = patient_key(ds, encodings)
        tokens: list[str] = [
            _text(ds, _PATIENT_ID, encodings),
            _text(ds, _ACCESSION_NUMBER, encodings),
        ]
        name = _text(ds, _PATIENT_NAME, encodings)
        if name:
            tokens += [name, name.replace("^", " "), *re.split(r"[\^ ,=]+", name)]
        if "OtherPatientIDsSequence" in ds:
            for item in ds.OtherPatientIDsSequence:
                tokens.append(_text(item, _PATIENT_ID, encodings))
        tokens.append(_text(ds, 0x00100030, encodings))  # PatientBirthDate
        shift = 0
        if self.config.retain_long_modified_dates:
            shift = self.pseudonyms.date_shift(patient)
        return _Context(shift, tuple(t for t in tokens if t), encodings)

    def _walk(self, ds: Dataset, ctx: _Context, depth: int = 0) -> None:
        private_creators_kept: set[int] = set()
        patient = (
            patient_key(ds, ctx.encodings) if depth == 0 else _text(ds, _PATIENT_ID, ctx.encodings)
        )
        accession = _text(ds, _ACCESSION_NUMBER, ctx.encodings)
        ctx = replace(
            ctx, depth=depth, originals={_PATIENT_ID: patient, _ACCESSION_NUMBER: accession}
        )
        for tag in list(ds.keys()):
            t = int(tag)
            try:
                if t & 0xFFFF == 0:  # group lengths: retired, and wrong once we change things
                    del ds[tag]
                elif t >> 16 & 1:
                    # The dataset's own key object: pydicom deletes it without building a
                    # Tag or comparing in Python (most of a walk over many private tags).
                    self._private(ds, tag, ctx, private_creators_kept)
                elif 0x5000 <= t >> 16 <= 0x60FF and t >> 16 & 0xFF00 in (0x5000, 0x6000):
                    del ds[tag]  # curves and overlays: whole repeating groups go
                else:
                    action = self.action_for(t)
                    if action is None:
                        self._unlisted(ds, t, ctx)
                    else:
                        self._apply(ds, t, action, ctx)
            except StageError:
                raise
            except Exception as e:
                raise StageError(
                    "deid_failed", f"cannot de-identify {Tag(t)} ({type(e).__name__})"
                ) from None
        # Private creators without a kept element go too.
        for tag in list(ds.keys()):
            t = int(tag)
            if t >> 16 & 1 and 0x10 <= t & 0xFFFF <= 0xFF and t not in private_creators_kept:
                del ds[tag]

    def _vr(self, ds: Dataset, t: int) -> str:
        """The element's VR; for implicit or UN encoding, the dictionary's (pydicom converts
        UN values of known tags to that VR when they are read)."""
        vr = ds.get_item(t).VR
        if vr and vr != "UN":
            return vr
        try:
            return dictionary_VR(t)
        except KeyError:
            return "UN"

    def _apply(self, ds: Dataset, t: int, action: str, ctx: _Context) -> None:
        if t in (_PATIENT_ID, _PATIENT_NAME, _ACCESSION_NUMBER) and action != "X":
            self._identity(ds, t, ctx)
            return
        if action == "X":
            del ds[t]
            return
        vr = self._vr(ds, t)
        if action == "K":
            if vr == "SQ":
                self._items(ds, t, ctx)
            return
        if action == "C":
            self._clean(ds, t, vr, ctx)
            return
        if action == "Z":
            _set(ds, t, vr, [] if vr == "SQ" else None)
        elif action == "U":
            self._uids(ds, t, vr)
        elif action == "D":
            self._dummy(ds, t, vr, ctx)
        else:  # the table only holds the actions above once resolved
            raise StageError("deid_failed", f"unknown action {action!r} for {Tag(t)}")

    def _identity(self, ds: Dataset, t: int, ctx: _Context) -> None:
        vr = self._vr(ds, t)
        patient = ctx.originals.get(_PATIENT_ID, "")
        if t == _PATIENT_ID:
            _set(ds, t, vr, self.pseudonyms.patient_id(patient) if patient else None)
        elif t == _PATIENT_NAME:
            # Always from the original ID (read before it was replaced), never copied.
            named = self.config.patient_name == "pseudonym" and patient
            _set(ds, t, vr, self.pseudonyms.patient_id(patient) if named else None)
        else:
            value = ctx.originals.get(_ACCESSION_NUMBER, "")
            _set(ds, t, vr, self.pseudonyms.accession(value) if value else None)

    def _dummy(self, ds: Dataset, t: int, vr: str, ctx: _Context) -> None:
        if vr == "SQ":
            # A type 1 sequence must keep its items: they are de-identified by the same
            # table (names go, UIDs and dates are replaced) rather than dropped.
            self._items(ds, t, ctx)
        elif vr == "UI":
            self._uids(ds, t, vr)
        elif vr in ("DA", "DT") and self.config.retain_long_modified_dates:
            self._dates(ds, t, vr, ctx)
        elif vr in _BYTES_VRS:
            _set(ds, t, vr, b"")
        else:
            _set(ds, t, vr, _DUMMY.get(vr, ""))

    def _uids(self, ds: Dataset, t: int, vr: str) -> None:
        values = _values(ds, t)
        if values:
            new = [v if _is_standard_uid(v) else self.pseudonyms.uid(v) for v in values]
            _set(ds, t, vr, new if len(new) > 1 else new[0])

    def _dates(self, ds: Dataset, t: int, vr: str, ctx: _Context) -> None:
        values = _values(ds, t, ctx.encodings)
        if not values:
            return
        shifted = [shift_date(v, ctx.date_shift) for v in values]
        if any(s is None for s in shifted):
            del ds[t]  # an invalid date cannot be shifted; it is removed, never kept
            return
        _set(ds, t, vr, shifted if len(shifted) > 1 else shifted[0])

    def _clean(self, ds: Dataset, t: int, vr: str, ctx: _Context) -> None:
        if vr == "SQ":
            self._items(ds, t, ctx)
        elif vr in ("DA", "DT"):
            if self.config.retain_long_modified_dates:
                self._dates(ds, t, vr, ctx)
            elif not self.config.retain_long_full_dates:
                del ds[t]
        elif vr == "UI":
            self._uids(ds, t, vr)
        elif vr in _TEXT_VRS:
            values = [clean_text(v, ctx.tokens) for v in _values(ds, t, ctx.encodings)]
            _set(ds, t, vr, values if len(values) > 1 else (values[0] if values else None))
        elif vr == "PN" or vr in _BYTES_VRS:
            _set(ds, t, vr, None)  # names and opaque bytes cannot be cleaned
        # Codes, numbers and times carry no identity: kept.

    def _unlisted(self, ds: Dataset, t: int, ctx: _Context) -> None:
        """Attributes the table does not name are kept, with safety nets for what identifies."""
        if t == _PIXEL_DATA:
            return
        vr = self._vr(ds, t)
        if vr == "SQ":
            self._items(ds, t, ctx)
        elif vr == "UN":  # unknown to the dictionary and opaque: nothing can vouch for it
            del ds[t]
        elif vr == "PN":
            _set(ds, t, vr, None)
        elif vr in ("DA", "DT"):
            self._clean(ds, t, vr, ctx)
        elif vr == "UI" and not self.config.retain_uids:
            if not _keyword(t).endswith(_CLASS_UID_KEYWORDS):
                self._uids(ds, t, vr)
        elif vr in _TEXT_VRS and ctx.depth > 0 and _keyword(t) not in _CODE_KEYWORDS:
            # Free text inside sequences (SR TextValue, request comments, ...): the table
            # lists what sits at the top level; nested text is cleaned only when the
            # structured-content or descriptor option asks for it, and removed otherwise.
            if self.config.clean_structured_content or self.config.clean_descriptors:
                self._clean(ds, t, vr, ctx)
            else:
                del ds[t]

    def _items(self, ds: Dataset, t: int, ctx: _Context) -> None:
        for item in ds[t].value or []:
            self._walk(item, ctx, ctx.depth + 1)

    def _private(self, ds: Dataset, t: int, ctx: _Context, creators_kept: set[int]) -> None:
        element = t & 0xFFFF
        if 0x10 <= element <= 0xFF:  # a private creator: decided after its elements
            return
        if element < 0x1000:  # (gggg,0001-000F) and (gggg,0100-0FFF): not valid private tags
            del ds[t]
            return
        if self.config.retain_safe_private:
            group, block = t >> 16, element >> 8
            creator_tag = (group << 16) | block
            creator = ds.get(creator_tag)
            creator_value = str(creator.value).strip() if creator is not None else ""
            raw_vr = ds.get_item(t).VR
            if (creator_value, element & 0xFF) in self._safe_private and raw_vr not in (None, "UN"):
                # Kept only when explicitly typed: an implicit or UN private element could
                # be a sequence that nobody can walk.
                creators_kept.add(creator_tag)
                if raw_vr == "SQ":
                    self._items(ds, t, ctx)
                return
        del ds[t]

    # -- marks ----------------------------------------------------------------------------

    def _mark(self, ds: Dataset, pixels: str) -> None:
        """``pixels``: "clean" (no burned-in risk), "masked", or "kept" (risky, kept by
        request: then nobody may claim that the identity was removed)."""
        options = [n for n in self.config.enabled_options() if n in CID_7050]
        if pixels == "masked":
            options.insert(0, "clean_pixel_data")
        codes = []
        for name in ["basic", *options]:
            value, meaning = CID_7050[name]
            item = Dataset()
            _set(item, 0x00080100, "SH", value)  # CodeValue
            _set(item, 0x00080102, "SH", "DCM")  # CodingSchemeDesignator
            _set(item, 0x00080104, "LO", meaning)  # CodeMeaning
            codes.append(item)
        if self.config.retain_long_modified_dates:
            temporal = "MODIFIED"
        elif self.config.retain_long_full_dates:
            temporal = "UNMODIFIED"
        else:
            temporal = "REMOVED"
        _set(ds, 0x00120062, "CS", "NO" if pixels == "kept" else "YES")  # PatientIdentityRemoved
        _set(ds, 0x00120063, "LO", f"dicomflow; {self.profile.standard}"[:64])
        _set(ds, 0x00120064, "SQ", Sequence(codes))  # DeidentificationMethodCodeSequence
        _set(ds, 0x00280303, "CS", temporal)  # LongitudinalTemporalInformationModified

    def _file_meta(self, ds: Dataset) -> None:
        """A new file meta with only what Part 10 needs: nothing else of the source's stays
        (source AE titles, private information), and pydicom copies it cheaply on write."""
        old = getattr(ds, "file_meta", None) or FileMetaDataset()
        meta = FileMetaDataset()
        meta.FileMetaInformationVersion = b"\x00\x01"
        syntax = old.get("TransferSyntaxUID")
        if syntax:
            meta.TransferSyntaxUID = syntax
        sop_class = _text(ds, 0x00080016) or str(old.get("MediaStorageSOPClassUID", "") or "")
        if sop_class:
            meta.MediaStorageSOPClassUID = sop_class
        sop_instance = _text(ds, 0x00080018)
        if sop_instance:
            meta.MediaStorageSOPInstanceUID = sop_instance
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION
        ds.file_meta = meta


def effective_action(rule: Rule, enabled: set[str]) -> str:
    """The action for one row under the enabled options.

    An option cell overrides the basic action: keeping (K) wins over cleaning (C). Where the
    standard lets the IOD type decide (X/Z, X/D, Z/D, X/Z/D), we take the choice that is
    conformant for every type: Z keeps a type 2 attribute present, D gives a type 1 one a
    value. X/Z/U* (referenced image sequences) keeps the sequence and replaces its UIDs.
    """
    cells = {rule.options[o] for o in enabled if o in rule.options}
    for preferred in ("K", "C"):
        if preferred in cells:
            return preferred
    if cells:  # an option that removes (X under Retain UIDs for one row)
        return min(cells)
    return {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "K"}.get(
        rule.action, rule.action
    )


# ---------------------------------------------------------------------------------------
# Pixels


def burned_in_risk(ds: Dataset, policy: PixelPolicy) -> str | None:
    """Why this image may carry burned-in text (a PHI-free reason), or None."""
    if "PixelData" not in ds:
        return None
    annotation = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if annotation == "YES":
        return "BurnedInAnnotation is YES"
    if modality in policy.risky_modalities:
        return f"modality {modality} commonly carries burned-in text"
    if not annotation and modality in policy.missing_annotation_modalities:
        return f"modality {modality} without BurnedInAnnotation"
    return None


def mask_pixels(ds: Dataset, boxes: Iterable[tuple[float, float, float, float]]) -> None:
    """Blanks the boxes on every frame and stores the pixels uncompressed (valid encoding)."""
    arr = ds.pixel_array.copy()
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[np.newaxis]
    # Blank means black: the lowest value, or the highest where MONOCHROME1 inverts.
    if int(ds.get("PixelRepresentation", 0)) == 1:
        fill = np.iinfo(frames.dtype).min if frames.dtype.kind == "i" else frames.min()
    elif str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        fill = (1 << int(ds.get("BitsStored", ds.BitsAllocated))) - 1
    else:
        fill = 0
    for x0, y0, x1, y1 in boxes:
        r0, r1 = round(y0 * rows), round(y1 * rows)
        c0, c1 = round(x0 * cols), round(x1 * cols)
        frames[:, r0:r1, c0:c1, ...] = fill
    if "YBR" in str(ds.get("PhotometricInterpretation", "")):
        ds.PhotometricInterpretation = "RGB"  # pixel_array converted it
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        ds.PlanarConfiguration = 0
    ds.PixelData = frames.astype(frames.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OB" if int(ds.BitsAllocated) == 8 else "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


# ---------------------------------------------------------------------------------------
# Whole objects


@dataclass(frozen=True)
class DeidResult:
    """A de-identified instance: pseudonymous identifiers and its Part 10 bytes."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    modality: str
    data: bytes | None  # None when the caller did not ask for the encoded file


def deidentify_object(data: bytes, engine: Deidentifier) -> tuple[DeidResult, dict[str, str]]:
    """Bytes in, de-identified Part 10 bytes out, with the linkage row.

    Raises:
        StageError: from parsing (``truncated``, ``invalid_dicom``) or from
            ``deidentify_dataset``.
    """
    return deidentify_dataset(parse_dataset(data), engine)


def deidentify_dataset(
    ds: Dataset, engine: Deidentifier, encode: bool = True
) -> tuple[DeidResult, dict[str, str]]:
    """A parsed dataset (changed in place) → de-identified Part 10 bytes and the linkage row.

    ``encode=False`` skips writing the Part 10 bytes (``data`` is None): ingest uses the
    de-identified dataset in place and would throw the bytes away; encoding costs about
    as much as the de-identification itself.

    Raises:
        StageError: ``not_an_instance`` (a DICOMDIR), ``unsupported_transfer_syntax``,
            ``burned_in_annotation`` (policy exclude, or mask without a region for the
            modality), ``mask_failed``, ``deid_failed``, ``write_failed``.
    """
    if "SOPInstanceUID" not in ds or "DirectoryRecordSequence" in ds:
        # A DICOMDIR (or other media file) indexes instances; it is not one.
        raise StageError("not_an_instance", "no SOP instance (e.g. a DICOMDIR); not de-identified")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is not None and not syntax.is_transfer_syntax:
        # pydicom can neither decode nor re-encode it (JPEG XL, say): refused, named.
        message = f"transfer syntax {syntax} is not supported by this installation"
        raise StageError("unsupported_transfer_syntax", message)
    pixels = engine.config.pixels
    risk = burned_in_risk(ds, pixels)
    state = "kept" if risk else "clean"
    if risk and pixels.policy != "keep":
        modality = str(ds.get("Modality", "") or "").strip().upper()
        boxes = pixels.mask_regions.get(modality)
        if pixels.policy == "exclude":
            raise StageError("burned_in_annotation", f"{risk}; pixel policy is exclude")
        if not boxes:
            raise StageError(
                "burned_in_annotation", f"{risk}; no mask region configured for {modality}"
            )
        state = "masked"
        try:
            mask_pixels(ds, boxes)
        except Exception as e:
            raise StageError(
                "mask_failed", f"pixels cannot be masked ({type(e).__name__})"
            ) from None
    link = engine.linkage(ds)
    engine.deidentify(ds, state)
    data = None
    if encode:
        buf = io.BytesIO()
        try:
            ds.save_as(buf, enforce_file_format=True)
        except Exception as e:
            message = f"cannot encode the result ({type(e).__name__})"
            raise StageError("write_failed", message) from None
        data = buf.getvalue()
    result = DeidResult(
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        study_instance_uid=str(ds.get("StudyInstanceUID", "") or ""),
        patient_id=str(ds.get("PatientID", "") or ""),
        modality=str(ds.get("Modality", "") or ""),
        data=data,
    )
    return result, link


# ---------------------------------------------------------------------------------------
# Beam


LINKAGE = "linkage"


class Deidentify(beam.PTransform):
    """SourceObjects → DeidResults, with dead-letter and (optional) linkage outputs.

    The key is resolved on each worker from ``key_source``; it never travels in the graph.

    Returns:
        ``(results, dead_letters, linkage_rows)``; ``linkage_rows`` is None unless asked for.
    """

    def __init__(self, config: DeidConfig, key_source: KeySource, linkage: bool = False):
        super().__init__()
        self._config = config
        self._key_source = key_source
        self._linkage = linkage

    def expand(self, objects):
        outputs = objects | "Deidentify" >> beam.ParDo(
            DeidentifyFn(self._config, self._key_source, self._linkage)
        ).with_outputs(DEAD_LETTER, LINKAGE, main="results")
        return outputs.results, outputs[DEAD_LETTER], outputs[LINKAGE] if self._linkage else None


class DeidentifyFn(beam.DoFn):
    def __init__(self, config: DeidConfig, key_source: KeySource, linkage: bool):
        self._config = config
        self._key_source = key_source
        self._linkage = linkage

    def setup(self):
        # Built once per worker: the table, the resolved options and the key.
        self._engine = Deidentifier(Profile.load(), self._config, self._key_source.resolve())
        self._done = Metrics.counter(METRICS_NAMESPACE, "deidentified")
        self._failed = Metrics.counter(METRICS_NAMESPACE, "deid_dead_letters")

    def process(self, obj: SourceObject):
        stage = STAGE_PARSE
        try:
            ds = parse_dataset(obj.data)
            stage = STAGE_DEIDENTIFY
            result, link = deidentify_dataset(ds, self._engine)
        except StageError as e:
            error = e
        except Exception as e:  # one odd file must not stop the run
            error = unexpected(e)
        else:
            self._done.inc()
            yield (obj.source, obj.member, result)
            if self._linkage:
                yield beam.pvalue.TaggedOutput(LINKAGE, tuple(sorted(link.items())))
            return
        self._failed.inc()
        letter = DeadLetter(obj.source, obj.member, stage, error.error_type, error.message)
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
