"""Steps that check values rather than attributes: the VR from the data dictionary, local
codes replaced by keyed pseudonyms, and the content check applied to every kept value
that can hold characters (text, code strings, numbers, bytes read as text)."""

from __future__ import annotations

import itertools
import re

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from transforms.deid.content import ContentCheck, standard_schemes
from transforms.deid.keeplist import KeepList, code_meanings, valid_value
from transforms.deid.pseudonyms import Pseudonymizer
from transforms.deid.streams import ICC_PROFILE, rebuild_icc
from transforms.deid.table import dictionary_vr, element_vr, keyword
from transforms.deid.values import _BYTES_VRS, _STRING_VRS, _element, _has, _set, _text, _values
from transforms.deid.walk import WalkState

TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN", "AE"})
NUMBER_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "SV": 8, "UV": 8}
NUMBER_VRS = frozenset(NUMBER_SIZES)
# Binary numbers compared with the patient's numeric identifiers: attributes of at most
# this many values. Longer arrays (lookup tables, waveforms, coordinates) are measurements
# in which any number of four or five digits occurs by chance.
MAX_NUMBERS = 16
# PS3.5 Table 6.2-1: the most characters a value of each VR may have.
MAX_LENGTH = {
    "AE": 16,
    "AS": 4,
    "CS": 16,
    "DA": 18,
    "DS": 16,
    "DT": 54,
    "IS": 12,
    "LO": 64,
    "LT": 10240,
    "PN": 3 * 64 + 2,
    "SH": 16,
    "ST": 1024,
    "TM": 28,
    "UI": 64,
}
_UI_RE = re.compile(r"^[0-9.]{1,64}$")
_DATE_CHARS = re.compile(r"^[0-9+\-.]+$")
IMAGE_TYPE = 0x00080008
# IODs whose ImageType value 3 is required (CT Image: AXIAL or LOCALIZER, PS3.3 C.8.2.1).
_VALUE_3_REQUIRED = frozenset({"1.2.840.10008.5.1.4.1.1.2"})
_PIXEL_STREAMS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # Pixel, Float, Double
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f]")


def parses_as(vr: str, value: str) -> bool:
    """Whether one value (as text) is a valid value of ``vr``: length and syntax."""
    limit = MAX_LENGTH.get(vr)
    if limit is not None and len(value) > limit:
        return False
    if _CONTROL.search(value):
        return False
    if vr == "UI":
        return not value or bool(_UI_RE.match(value))
    if vr in ("CS", "DS", "IS", "AS", "TM"):
        return not value or valid_value(vr, value)
    if vr in ("DA", "DT"):
        return not value or bool(_DATE_CHARS.match(value))
    return True


class DictionaryVR:
    """A public tag is read with its data dictionary VR, never the file's: a value written
    with another VR (a CS as LT, UT or OB; an LO as UT) is converted when it parses as the
    dictionary's VR, else removed (a dummy where type 1) and counted as ``vr:<keyword>``."""

    def __call__(self, ds: Dataset, t: int, state: WalkState) -> bool:
        file_vr = state.file_vr
        if not file_vr or file_vr == "UN":
            return False  # read with the dictionary's VR anyway (element_vr)
        expected = dictionary_vr(t)
        if expected is None or file_vr == expected or file_vr in expected.split(" or "):
            return False
        if expected in _STRING_VRS and (file_vr in _STRING_VRS or file_vr in _BYTES_VRS):
            values = _values(ds, t, state.encodings)
            if all(parses_as(expected, v) for v in values):
                _set(ds, t, expected, values if len(values) > 1 else values[0] if values else None)
                return False  # now of its own VR: the other steps take it from here
        vr = expected.rsplit(" or ", 1)[-1]
        if vr == "SQ" or file_vr == "SQ":
            del ds[t]
            state.counts[f"vr:{keyword(t)}"] += 1
        else:
            state.drop(ds, t, vr, f"vr:{keyword(t)}")
        return True


CODE_VALUE, SCHEME, SCHEME_VERSION, LONG_CODE, URN_CODE = (
    0x00080100,
    0x00080102,
    0x00080103,
    0x00080119,
    0x00080120,
)
_CODE_TAGS = frozenset({CODE_VALUE, SCHEME, SCHEME_VERSION, LONG_CODE, URN_CODE})
_CODE_RE = re.compile(r"^[^\s\\]{1,64}$")
_VERSION_RE = re.compile(r"^[\w.\-]{1,16}$")


class LocalCodes:
    """Codes of the standard's coding schemes stay (checked for the patient's identifiers);
    codes of any other scheme (local, private, typed by hand) are replaced by keyed
    pseudonyms, stable under one key so that codes still group: the value, the scheme
    designator, its version and the long and URN forms alike."""

    def __init__(self, pseudonyms: Pseudonymizer):
        self.pseudonyms = pseudonyms
        self.schemes = standard_schemes()
        self.meanings = code_meanings()

    def __call__(self, ds: Dataset, t: int, state: WalkState) -> bool:
        if t not in _CODE_TAGS:
            return False
        values = _values(ds, t, state.encodings)
        if not values:
            return True
        scheme = "\\".join(_values(ds, SCHEME, state.encodings))
        value = values[0] if len(values) == 1 else "\\".join(values)
        if scheme in self.schemes and self._standard(t, scheme, value, state):
            return True
        pseudonym = self._pseudonym(t, scheme, value)
        _set(ds, t, element_vr(ds, t), pseudonym)
        state.counts[f"code:{keyword(t)}"] += 1
        return True

    def _standard(self, t: int, scheme: str, value: str, state: WalkState) -> bool:
        """Whether a code of a standard scheme may stay as it is."""
        if state.own and (state.own.found(value) or state.own.number(value)):
            return False
        if t == SCHEME:
            return True
        if t == SCHEME_VERSION:
            return bool(_VERSION_RE.match(value))
        if t == URN_CODE:
            return valid_value("UR", value)
        return (scheme, value) in self.meanings or bool(_CODE_RE.match(value))

    def _pseudonym(self, t: int, scheme: str, value: str) -> str:
        digest = self.pseudonyms.token("code", f"{t:08x}\0{scheme}\0{value}")
        if t == SCHEME:
            return "99" + digest[:8]  # PS3.16 8.2: private designators begin with 99
        if t == SCHEME_VERSION:
            return "V" + digest[:8]
        if t == URN_CODE:
            return "urn:oid:" + self.pseudonyms.uid(f"code\0{scheme}\0{value}")
        if t == LONG_CODE:
            return "L" + digest  # 17 characters: a LongCodeValue is longer than 16
        return "L" + digest[:12]


class ContentStep:
    """The content check of one kept element, by what its VR can hold:

    - text (LO, SH, ST, LT, UT, UC, AE): each value checked word by word; failing words cut
      out, the value removed when nothing meaningful is left;
    - code strings: each value a defined term, or passing the check whole; ImageType keeps
      its required values;
    - numbers (IS, DS and binary): of their VR's syntax, and neither equal to nor holding
      the patient's numeric identifiers (such values become 0);
    - bytes (OB, OW, ... and raw binary numbers): printable runs read as text, and the
      attribute removed when one fails.

    A value that fails is removed or replaced and counted per keyword: ``content:`` for
    identifying content, ``patient_identifier:`` for the patient's own identifiers.
    """

    def __init__(self, content: ContentCheck, keep: KeepList, trusted: frozenset[int]):
        self.content = content
        self.keep = keep
        self.trusted = trusted  # site overrides with trust_content: true

    def __call__(self, ds: Dataset, t: int, vr: str, state: WalkState) -> None:
        if t in self.trusted or not _has(ds, t):
            return
        if vr in TEXT_VRS:
            self._text(ds, t, vr, state, tokenwise=True)
        elif vr == "UR":
            self._text(ds, t, vr, state, tokenwise=False)
        elif vr == "CS":
            self._code_string(ds, t, state)
        elif vr in ("IS", "DS"):
            self._number_strings(ds, t, vr, state)
        elif vr in ("AS", "TM"):
            if not all(valid_value(vr, v) for v in _values(ds, t, state.encodings)):
                state.drop(ds, t, vr, keyword(t))
        elif vr in NUMBER_VRS:
            self._binary_numbers(ds, t, vr, state)
        elif vr in _BYTES_VRS:
            self._bytes(ds, t, vr, state)

    def own_only(self, ds: Dataset, t: int, vr: str, state: WalkState) -> None:
        """For attributes kept by an option (retain device or institution identity...):
        the option vouches for the kind of content, the patient's identifiers still go."""
        if t in self.trusted or not _has(ds, t) or not state.own:
            return
        if vr in TEXT_VRS or vr in ("CS", "UR"):
            values = _values(ds, t, state.encodings)
            if any(state.own.found(v) for v in values):
                state.drop(ds, t, vr, f"patient_identifier:{keyword(t)}")
        elif vr in ("IS", "DS"):
            self._number_strings(ds, t, vr, state)

    # -- by VR ----------------------------------------------------------------------------

    def _text(self, ds: Dataset, t: int, vr: str, state: WalkState, tokenwise: bool) -> None:
        values = _values(ds, t, state.encodings)
        if not values:
            return
        out: list[str] = []
        reason = ""
        for value in values:
            if not parses_as(vr, value):
                reason = reason or "vr"
                continue
            verdict = self.content.check(value, state.own, tokenwise)
            if verdict.reason:
                reason = reason or verdict.reason
            if verdict.value:
                out.append(verdict.value)
        if not reason:
            return
        counter = _counter(reason, t)
        if not out:
            state.drop(ds, t, vr, counter)
            return
        _set(ds, t, vr, out if len(out) > 1 else out[0])
        state.counts[counter] += 1

    def _code_string(self, ds: Dataset, t: int, state: WalkState) -> None:
        values = _values(ds, t, state.encodings)
        if not values:
            return
        terms = self.keep.terms.get(t) or frozenset()
        kept: list[str | None] = []
        reason = ""
        for value in values:
            ok = not value or (valid_value("CS", value) and value in terms)
            if not ok and valid_value("CS", value):
                verdict = self.content.check(value, state.own, tokenwise=False)
                ok = verdict.value is not None
                if not ok:
                    reason = reason or verdict.reason
            elif not ok:
                reason = reason or "vr"
            if ok and value and state.own and state.own.found(value) and value not in terms:
                ok, reason = False, "patient_identifier"
            kept.append(value if ok else None)
        if not reason:
            return
        counter = _counter(reason, t)
        if t == IMAGE_TYPE:
            out = _image_type(kept, _text(ds, 0x00080016) in _VALUE_3_REQUIRED)
        else:
            out = [v for v in kept if v is not None]
        if not any(out):
            state.drop(ds, t, "CS", counter)
            return
        _set(ds, t, "CS", out if len(out) > 1 else out[0])
        state.counts[counter] += 1

    def _number_strings(self, ds: Dataset, t: int, vr: str, state: WalkState) -> None:
        values = _values(ds, t, state.encodings)
        if not all(valid_value(vr, v) for v in values):
            state.drop(ds, t, vr, keyword(t))
            return
        if not state.own or not state.own.numbers:
            return
        hits = [state.own.number(v) for v in values]
        if any(hits):
            new = ["0" if hit else v for v, hit in zip(values, hits, strict=True)]
            _set(ds, t, vr, new if len(new) > 1 else new[0])
            state.counts[f"patient_identifier:{keyword(t)}"] += 1

    def _binary_numbers(self, ds: Dataset, t: int, vr: str, state: WalkState) -> None:
        raw = _element(ds, t).value
        if isinstance(raw, bytes):
            if self._holds_text(raw, state):
                state.drop(ds, t, vr, f"content:{keyword(t)}")
                return
            if len(raw) > MAX_NUMBERS * NUMBER_SIZES[vr]:
                return  # an array (docs/deidentification.md says why it is not compared)
        if not state.own or not state.own.numbers:
            return
        value = ds[t].value
        values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
        if len(values) > MAX_NUMBERS:
            return
        hits = [_is_number(v) and state.own.number(str(int(v))) for v in values]
        if any(hits):
            new = [0 if hit else v for v, hit in zip(values, hits, strict=True)]
            _set(ds, t, vr, new if len(new) > 1 else new[0])
            state.counts[f"patient_identifier:{keyword(t)}"] += 1

    def _bytes(self, ds: Dataset, t: int, vr: str, state: WalkState) -> None:
        if t == ICC_PROFILE:
            rebuild_icc(ds, t, state)
            return
        if t in _PIXEL_STREAMS:
            return  # pixels, not text: rebuilt by the pixel-stream step
        raw = _element(ds, t).value
        if isinstance(raw, bytes) and self._holds_text(raw, state):
            state.drop(ds, t, vr, f"content:{keyword(t)}")

    def _holds_text(self, data: bytes, state: WalkState) -> bool:
        """Whether bytes carry readable text that fails the check (a word no vocabulary
        knows, contact details, the patient's identifiers). Ramps and repeated codes of
        lookup tables are not words."""
        small = len(data) <= 64
        for run in _PRINTABLE.findall(data):
            text = run.decode("ascii")
            if not small and len(text) < 6:
                continue
            if state.own and state.own.found(text):
                return True
            words = [w for w in _LETTERS.findall(text) if len(w) >= (4 if small else 5)]
            words = [w for w in words if not _monotone(w)]
            if not words:
                continue
            if self.content.check(text, None, tokenwise=False).value is None:
                return True
        return False


_PRINTABLE = re.compile(rb"[\x20-\x7e]{4,}")
_LETTERS = re.compile(r"[A-Za-z]+")


def _monotone(word: str) -> bool:
    """A ramp or repeated codes (``ABCD``, ``AABBCC``, ``zyx``): lookup-table bytes."""
    steps = {ord(b) - ord(a) for a, b in itertools.pairwise(word)}
    return steps <= {0, 1} or steps <= {0, -1}


def _is_number(value) -> bool:
    try:
        return float(value) == int(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


def _image_type(values: list[str | None], value_3_required: bool) -> list[str]:
    """ImageType never leaves with a required value empty: a failing value 1 or 2 becomes
    the cautious term (DERIVED, SECONDARY), a failing value followed by kept values (or a
    value 3 that the IOD requires) becomes OTHER; failing trailing values go."""
    out: list[str] = []
    last = max((i for i, v in enumerate(values) if v is not None), default=-1)
    for i, value in enumerate(values):
        if value is not None:
            out.append(value)
        elif i == 0:
            out.append("DERIVED")
        elif i == 1:
            out.append("SECONDARY")
        elif (i == 2 and value_3_required) or i < last:
            out.append("OTHER")
    return out


def _counter(reason: str, t: int) -> str:
    if reason == "patient_identifier":
        return f"patient_identifier:{keyword(t)}"
    if reason == "vr":
        return f"vr:{keyword(t)}"
    return f"content:{keyword(t)}"
