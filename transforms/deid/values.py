"""Reading element values as text in the right character set, and the patient's key."""

import functools
import re
from collections.abc import Iterable

from pydicom import config as pydicom_config
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

_PATIENT_ID = 0x00100020
_PATIENT_NAME = 0x00100010
_ACCESSION_NUMBER = 0x00080050
_PIXEL_DATA = 0x7FE00010
_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
_BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_STRING_VRS = frozenset("AE AS CS DA DS DT IS LO LT PN SH ST TM UC UI UR UT".split())
_LONG_NUMBER_RE = re.compile(r"\d{5,}")


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
