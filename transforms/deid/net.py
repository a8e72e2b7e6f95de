"""The allowlist behind Table E.1-1: the keep-list, value checks, code meanings and the last
net that searches every kept text for the patient's own identifiers."""

import datetime
import functools
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from pydicom.datadict import keyword_for_tag, tag_for_keyword

KEEPLIST_PATH = Path(__file__).with_name("deid_keeplist.json")

# VRs whose values can carry text or bytes: what the net removes unless kept.
NET_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN", "UR", "AE"})
NET_BYTES_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})

_CS_RE = re.compile(r"^[A-Z0-9 _]{0,16}$")
_DS_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_IS_RE = re.compile(r"^[+-]?\d{1,12}$")
_AS_RE = re.compile(r"^\d{3}[DWMY]$")
_TM = r"(?:[01]\d|2[0-3])(?:[0-5]\d(?:(?:[0-5]\d|60)(?:\.\d{1,6})?)?)?"
_TM_RE = re.compile(rf"^(?:{_TM}|{_TM}-(?:{_TM})?|-{_TM})$")
_URN_RE = re.compile(r"^urn:[a-z0-9][a-z0-9-]{0,31}:[a-z0-9.:-]+$", re.IGNORECASE)


@dataclass(frozen=True)
class KeepList:
    """Tags the net keeps (with their keyword) and the CS term lists, by tag."""

    keep: frozenset[int]
    terms: dict[int, frozenset[str]]
    types: dict[int, str]  # "1" or "2": the strictest PS3.3 type anywhere

    @classmethod
    def load(cls, path: Path = KEEPLIST_PATH) -> "KeepList":
        data = json.loads(Path(path).read_text())
        keep = frozenset(int(v["tag"], 16) for v in data["keep"].values())
        terms = {}
        for keyword, values in data["terms"].items():
            tag = tag_for_keyword(keyword)
            if tag is not None:
                terms[tag] = frozenset(values)
        types = {}
        for keyword, kind in data["types"].items():
            tag = tag_for_keyword(keyword)
            if tag is not None:
                types[tag] = kind
        return cls(keep, terms, types)


def valid_value(vr: str, value: str) -> bool:
    """Whether a value of a numeric-string, age or time VR has that VR's syntax."""
    if vr == "DS":
        return bool(_DS_RE.match(value))
    if vr == "IS":
        return bool(_IS_RE.match(value))
    if vr == "AS":
        return bool(_AS_RE.match(value))
    if vr == "TM":
        return bool(_TM_RE.match(value))
    if vr == "CS":
        return bool(_CS_RE.match(value))
    if vr == "UR":
        return bool(_URN_RE.match(value))
    return True


@functools.cache
def code_meanings() -> dict[tuple[str, str], str]:
    """(scheme, code value) → the standard meaning, from pydicom's SR code dictionaries."""
    from pydicom.sr._concepts_dict import concepts

    out: dict[tuple[str, str], str] = {}
    for scheme, names in concepts.items():
        for codes in names.values():
            for value, (meaning, _cids) in codes.items():  # type: ignore[attr-defined]  # pydicom types it as object
                out.setdefault((scheme, value), meaning[:64])
    return out


# ---------------------------------------------------------------------------------------
# The patient's own identifiers


def fold(text: str) -> str:
    """Case- and accent-free form for matching: ``Müller`` and ``MULLER`` fold alike."""
    if text.isascii():
        return text.lower()  # the common case, at a fraction of the cost
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


_MONTHS = "jan feb mar apr may jun jul aug sep oct nov dec".split()
_MONTH_NAMES = (
    "january february march april may june july august september october november december"
).split()


@functools.lru_cache(maxsize=4096)
def date_spellings(value: str) -> tuple[str, ...]:
    """A DA ``YYYYMMDD`` in the notations people type it in."""
    try:
        d = datetime.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except (ValueError, IndexError):
        return (value,) if len(value) >= 6 else ()
    y, m, dd = f"{d.year:04d}", f"{d.month:02d}", f"{d.day:02d}"
    out = [y + m + dd, dd + m + y, m + dd + y]
    for sep in "-./ ":
        out += [sep.join((y, m, dd)), sep.join((dd, m, y)), sep.join((m, dd, y))]
        out += [sep.join((str(d.day), str(d.month), y)), sep.join((str(d.month), str(d.day), y))]
        out += [sep.join((dd, m, y[2:])), sep.join((m, dd, y[2:]))]
    for month in (_MONTHS[d.month - 1], _MONTH_NAMES[d.month - 1]):
        for day in (dd, str(d.day)):
            out += [f"{day} {month} {y}", f"{day}-{month}-{y}", f"{month} {day}, {y}"]
            out += [f"{month} {day} {y}", f"{day}{month}{y}"]
    return tuple(out)


def name_parts(name: str) -> list[str]:
    """Components of a person name (every group: alphabetic, ideographic, phonetic) of two
    or more characters, and the whole name in its usual orders."""
    parts = [p for p in re.split(r"[\^=,.\s]+", name) if len(p) >= 2]
    groups = [g for g in name.split("=") if g]
    for group in groups:
        components = [c.strip() for c in group.split("^") if c.strip()]
        if len(components) >= 2:
            parts += [" ".join(components), " ".join(reversed(components[:2]))]
    return parts


@functools.lru_cache(maxsize=1024)
def _pattern(tokens: tuple[str, ...]) -> re.Pattern | None:
    """One compiled alternation per set of identifiers: a series' instances share it."""
    alternatives = set()
    for token in tokens:
        folded = fold(token.strip())
        if len(folded) < 2:
            continue
        escaped = re.escape(folded)
        if folded.isdigit():
            alternatives.add(rf"(?<!\d){escaped}(?!\d)")
        elif folded.isascii() and len(folded) <= 4:  # "Name" is not in "PNAME"
            alternatives.add(rf"(?<![a-z0-9]){escaped}(?![a-z0-9])")
        else:
            alternatives.add(escaped)
    ordered = sorted(alternatives, key=len, reverse=True)
    return re.compile("|".join(ordered)) if ordered else None


class IdentifierScan:
    """Finds the patient's own identifiers in a text, whatever case, accent or notation."""

    def __init__(self, tokens: list[str] | tuple[str, ...]):
        self._re = _pattern(tuple(tokens))

    def __bool__(self) -> bool:
        return self._re is not None

    def found(self, text: str) -> bool:
        return bool(self._re and self._re.search(fold(text)))

    def remove(self, text: str) -> str:
        if self._re is None:
            return text
        folded = fold(text)
        if len(folded) != len(text):  # decomposition changed lengths: nothing can be mapped
            return "" if self._re.search(folded) else text
        spans = [m.span() for m in self._re.finditer(folded)]
        for start, end in reversed(spans):
            text = text[:start] + text[end:]
        return text


def keyword(tag: int) -> str:
    """The keyword for a manifest counter; tags nobody names are counted together."""
    return keyword_for_tag(tag) or "unknown_public_tag"
