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
from pydicom.tag import BaseTag

from transforms.dicom_io.write import encode_value

_PATIENT_ID = 0x00100020
_PATIENT_NAME = 0x00100010
_ACCESSION_NUMBER = 0x00080050
_PIXEL_DATA = 0x7FE00010
_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
_BYTES_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_STRING_VRS = frozenset("AE AS CS DA DS DT IS LO LT PN SH ST TM UC UI UR UT".split())
_LONG_NUMBER_RE = re.compile(r"\d{5,}")
_EMAIL_RE = re.compile(r"[\w.+%-]+\s*(?:@|\(at\)|\[at\])\s*[\w-]+(?:\s*\.\s*[\w-]+)+", re.I)
_URL_RE = re.compile(r"(?:https?|ftp|file)://\S+|www\.\S+", re.I)
_PHONE_RE = re.compile(r"(?<![\w.])\+?\(?\d[\d\s()./-]{5,}\d(?![\w.])")
_MONTH = (
    r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-zäéû]*\.?"
    r"|(?:januar|februar|märz|mai|juni|juli|oktober|dezember|janvier|février|mars|avril"
    r"|juin|juillet|août|septembre|octobre|novembre|décembre)"
)
_DATE_RES = (
    re.compile(r"\d{1,4}\s*[./-]\s*\d{1,2}\s*[./-]\s*\d{1,4}"),
    re.compile(rf"\d{{1,2}}\.?\s*(?:{_MONTH})\s*,?\s*\d{{2,4}}", re.I),
    re.compile(rf"(?:{_MONTH})\s*\d{{1,2}}(?:st|nd|rd|th)?\s*,?\s*\d{{2,4}}", re.I),
    re.compile(r"\d{4}\s*年\s*\d{1,2}\s*月(?:\s*\d{1,2}\s*日)?"),
)
_STREET_WORDS = (
    r"street|str|st|road|rd|avenue|ave|av|boulevard|blvd|lane|ln|drive|dr|way|court|ct|place"
    r"|pl|square|sq|terrace|close|crescent|highway|hwy|parkway|pkwy|alley|row"
)
_STREET_RES = (
    re.compile(
        rf"\b\d{{1,5}}[a-z]?,?\s+(?:[^\W\d_][\w.'-]*\s+){{0,4}}(?:{_STREET_WORDS})\b\.?", re.I
    ),
    re.compile(
        r"[^\W\d_]*(?:stra(?:ss|ß)e|str\.|weg|gasse|platz|allee|ring|damm|ufer|steig)\s*\d{1,5}[a-z]?",
        re.I,
    ),
    re.compile(
        r"\b(?:rue|avenue|boulevard|chemin|place|via|viale|piazza|calle|avenida|plaza|rua)"
        r"\s+(?:[^\W\d_][\w'-]*\s+){0,4}[^\W\d_][\w'-]*(?:\s*,?\s*\d{1,5})?",
        re.I,
    ),
    re.compile(r"\b(?:p\.?\s?o\.?\s*box|postfach)\s*\d+", re.I),
)


@functools.lru_cache(maxsize=8192)
def _token_re(token: str) -> re.Pattern:
    """One identifier as a case-insensitive pattern, compiled once per patient rather than
    per instance (re's own cache holds 512 and a corpus has many patients)."""
    return re.compile(re.escape(token), re.IGNORECASE)


def clean_text(text: str, tokens: Iterable[str], scan=None) -> str:
    """Clean Descriptors / Clean Structured Content: removes the given identifiers (the
    patient's own, and every person name in the dataset, case- and accent-insensitively via
    ``scan``), e-mail addresses, URLs, phone numbers, street addresses, dates in any
    notation and long digit runs. Returns "" when nothing safe is left."""
    out = text
    for token in sorted({t for t in tokens if len(t) >= 2}, key=len, reverse=True):
        out = _token_re(token).sub(" ", out)
    if scan is not None:
        out = scan.remove(out)
    for pattern in (_EMAIL_RE, _URL_RE, *_STREET_RES, *_DATE_RES, _PHONE_RE, _LONG_NUMBER_RE):
        out = pattern.sub(" ", out)
    out = re.sub(r"\s{2,}", " ", out).strip(" ,;:-^/.")
    if scan is not None and scan.found(out):
        return ""
    return out if sum(c.isalnum() for c in out) >= 2 else ""


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
    elem = ds._dict.get(tag)  # type: ignore[call-overload]  # BaseTag keys: an int finds them
    if elem is None:
        return []
    if isinstance(elem, RawDataElement) and elem.value is None and elem.length:
        elem = ds.get_item(tag)  # a deferred read: pydicom reads and converts it
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


def _element(ds: Dataset, tag: int) -> DataElement | RawDataElement:
    """The element as stored, raw or converted, by a dictionary lookup: pydicom's
    ``get_item`` and ``in`` make a ``Tag`` of the int first, which was the walk's most
    frequent cost.

    Raises:
        KeyError: ``ds`` has no such element.
    """
    elem = ds._dict[tag]  # type: ignore[index]  # BaseTag keys: an int finds them
    if isinstance(elem, RawDataElement) and elem.value is None and elem.length:
        return ds.get_item(tag)  # a deferred read: pydicom reads it
    return elem


def _has(ds: Dataset, tag: int) -> bool:
    return tag in ds._dict


def _set(ds: Dataset, tag: int, vr: str, value) -> None:
    """Replaces an element without converting its old value first (None: empty).

    In a dataset read from a file, a plain value is stored encoded, as a raw element in
    the dataset's syntax and character set (what pydicom's writer would write for it, so
    the writer copies it and a reader converts it as if read): building a DataElement costs
    ten times as much, and encoding it again at the write as much once more.
    """
    if value is None:
        value = b"" if vr in _BYTES_VRS else "" if vr in _STRING_VRS else None
    key = BaseTag(tag)
    if vr == "SQ" or tag >> 16 & 1 or tag >> 16 == 0x7FE0:
        # pydicom links items and private creators, and forgets decoded pixels
        ds[tag] = DataElement(key, vr, value, validation_mode=pydicom_config.IGNORE)
        return
    implicit, little = ds._read_implicit, ds._read_little  # ds.original_encoding, cheaper
    if implicit is not None and little is not None and vr not in _BYTES_VRS:
        raw = encode_value(vr, value, ds._read_charset, little)  # ds.original_character_set
        if raw is not None:
            ds._dict[key] = RawDataElement(key, vr, len(raw), raw, 0, implicit, little)
            return
    ds._dict[key] = DataElement(key, vr, value, validation_mode=pydicom_config.IGNORE)
