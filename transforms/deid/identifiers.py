"""The patient's own identifiers, gathered from the original header, and found again in any
text in every spelling: case, accents and transliteration (MÜLLER, MULLER, MUELLER),
separators and prefixes (``MRN-4471``, ``4471``), fragments of four or more characters,
one edit away, and dates in the notations people type them in."""

import datetime
import functools
import re
import unicodedata
from collections.abc import Iterable

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from transforms.deid.values import _encodings, _has, _values

# Letters that NFKD does not decompose, and German transliteration (ü → ue).
_ASCII = str.maketrans({"ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "\u0131": "i", "ħ": "h"})
_GERMAN = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})

# Precompiled: the patterns of the identifier forms and of the search.
_NAME_SEPARATORS = re.compile(r"[\^=,.\s]+")
_NAME_HALVES = re.compile(r"[-']")
_SEPARATORS = re.compile(r"[\W_]+")
_PREFIX = re.compile(r"^[^\W\d_]+")
_DIGITS4 = re.compile(r"\d{4,}")
_DIGITS5 = re.compile(r"\d{5,}")
_WORDS4 = re.compile(r"\w{4,}")

# Where the patient's identity is written in a header, at any depth of nesting: names
# (patient, other names, birth name, mother's birth name) and identifiers (patient IDs,
# accession, admission, visit, placer/filler order, requested procedure, study ID).
NAME_TAGS = (0x00100010, 0x00101001, 0x00101005, 0x00101060)
ID_TAGS = (
    0x00100020,  # PatientID
    0x00101000,  # OtherPatientIDs (retired)
    0x00080050,  # AccessionNumber
    0x00380010,  # AdmissionID
    0x00380008,  # VisitStatusID
    0x00401001,  # RequestedProcedureID
    0x00402016,  # PlacerOrderNumberImagingServiceRequest
    0x00402017,  # FillerOrderNumberImagingServiceRequest
    0x00400009,  # ScheduledProcedureStepID
    0x00400253,  # PerformedProcedureStepID
    0x00200010,  # StudyID
    0x00100021,  # IssuerOfPatientID (a site name as often as an issuer code)
)
DATE_TAGS = (0x00100030,)  # PatientBirthDate


def fold(text: str) -> str:
    """Case- and accent-free form for matching: ``Müller`` and ``MULLER`` fold alike."""
    if text.isascii():
        return text.lower()  # the common case, at a fraction of the cost
    decomposed = unicodedata.normalize("NFKD", text.casefold().translate(_ASCII))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def spellings(text: str) -> set[str]:
    """The folded spellings of one identifier: plain fold and German transliteration."""
    out = {fold(text)}
    if text.isascii():
        return out  # no umlaut to transliterate
    lower = text.casefold()
    if any(c in lower for c in "äöüß"):
        out.add(fold(lower.translate(_GERMAN)))
    return out


_MONTHS = "jan feb mar apr may jun jul aug sep oct nov dec".split()
_MONTH_NAMES = (
    "january february march april may june july august september october november december"
).split()


@functools.lru_cache(maxsize=4096)
def date_spellings(value: str) -> tuple[str, ...]:
    """A DA ``YYYYMMDD`` in the notations people type it in (two- and four-digit years,
    leading zeros or not, month numbers or names)."""
    try:
        d = datetime.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except (ValueError, IndexError):
        return (value,) if len(value) >= 6 else ()
    y, m, dd = f"{d.year:04d}", f"{d.month:02d}", f"{d.day:02d}"
    out = [y + m + dd, dd + m + y, m + dd + y, dd + m + y[2:], y[2:] + m + dd]
    for sep in "-./ ":
        for yy in (y, y[2:]):
            for mm, ddd in ((m, dd), (str(d.month), str(d.day))):
                out += [sep.join((ddd, mm, yy)), sep.join((mm, ddd, yy))]
        out += [sep.join((y, m, dd)), sep.join((y, str(d.month), str(d.day)))]
    for month in (_MONTHS[d.month - 1], _MONTH_NAMES[d.month - 1]):
        for day in (dd, str(d.day)):
            for yy in (y, y[2:]):
                out += [f"{day} {month} {yy}", f"{day}-{month}-{yy}", f"{month} {day}, {yy}"]
                out += [f"{month} {day} {yy}", f"{day}{month}{yy}", f"{day}.{month}.{yy}"]
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def _month_spellings(value: str) -> frozenset[str]:
    """The birth date's spellings with a month name, folded."""
    return frozenset(fold(s) for s in date_spellings(value) if any(c.isalpha() for c in s))


def name_parts(name: str) -> list[str]:
    """Components of a person name (every group: alphabetic, ideographic, phonetic) of two
    or more characters, each half of a hyphenated one, and the whole name in its usual
    orders."""
    parts = [p for p in _NAME_SEPARATORS.split(name) if len(p) >= 2]
    halves = [h for p in parts if "-" in p or "'" in p for h in _NAME_HALVES.split(p)]
    parts += [h for h in halves if len(h) >= 2]
    for group in (g for g in name.split("=") if g):
        components = [c.strip() for c in group.split("^") if c.strip()]
        if len(components) >= 2:
            parts += [" ".join(components), " ".join(reversed(components[:2]))]
    return parts


def id_parts(value: str) -> list[str]:
    """An identifier and what people write of it: without separators, without its alphabetic
    prefix, without leading zeros, and its runs of four or more digits."""
    value = value.strip()
    out = [value]
    squashed = _SEPARATORS.sub("", value)
    out.append(squashed)
    core = squashed.lstrip("0123456789") and _PREFIX.sub("", squashed)
    if core and core != squashed:
        out.append(core)
    out += _DIGITS4.findall(value)
    out += [d.lstrip("0") for d in _DIGITS4.findall(value) if len(d.lstrip("0")) >= 4]
    out += [s for s in _SEPARATORS.split(value) if len(s) >= 4]
    return [o for o in out if len(o) >= 2]


def id_fragments(value: str) -> set[str]:
    """Fragments of four digits or more of an identifier's digit runs (``8823`` of
    ``MRN 88231``): found as whole digit runs beside letters (``QB-8823``), never in
    numbers, where four digits are too common to mean anything."""
    out: set[str] = set()
    for run in _DIGITS5.findall(value):
        out |= {run[i : i + k] for k in range(4, len(run)) for i in range(len(run) - k + 1)}
    return out


def _deletions(word: str) -> set[str]:
    return {word[:i] + word[i + 1 :] for i in range(len(word))}


@functools.lru_cache(maxsize=256)
def _cached(names: tuple[str, ...], ids: tuple[str, ...], dates: tuple[str, ...]):
    """The instances of a series share one object: built once, not per instance."""
    return PatientIdentifiers(names, ids, dates)


def _numeric_spellings(value: str) -> list[str]:
    """A birth date in the numeric notations the regex looks for (the generic date detector
    of ``content`` removes dates in every other notation from checked text)."""
    try:
        d = datetime.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except (ValueError, IndexError):
        return [value] if len(value) >= 6 else []
    y, m, dd = f"{d.year:04d}", f"{d.month:02d}", f"{d.day:02d}"
    out = [y + m + dd, dd + m + y, m + dd + y, dd + m + y[2:], y[2:] + m + dd]
    for sep in "-./":
        out += [sep.join((y, m, dd)), sep.join((dd, m, y)), sep.join((m, dd, y))]
        out += [
            sep.join((str(d.day), str(d.month), y[2:])),
            sep.join((str(d.month), str(d.day), y[2:])),
        ]
    return out


def _neighbourhood(words: set[str]) -> frozenset[str]:
    """Words and their one-deletion variants: a word is one edit away from one of them when
    it, or one of its own deletions, is in this set (symmetric deletion)."""
    out = set(words)
    for word in words:
        out |= _deletions(word)
    return frozenset(out)


_WANTED = {
    **{t: "names" for t in NAME_TAGS},
    **{t: "ids" for t in ID_TAGS},
    **{t: "dates" for t in DATE_TAGS},
}


def _gather(ds: Dataset, encodings: tuple[str, ...], out: dict) -> None:
    """Values of the identifying tags in the dataset and in every item of every public
    sequence, at any depth (Other Patient IDs, request and order items, and any other
    where a copy was put), each item read in its own character set. Private sequences are
    not read: they are removed, or kept under retain safe private and content-checked. A
    sequence that pydicom cannot parse is passed over here; the walk dead-letters the
    object if it keeps it."""
    for t, kind in _WANTED.items():
        if _has(ds, t):
            out[kind] += _values(ds, t, encodings)
    for tag, elem in list(ds._dict.items()):
        t = int(tag)
        if t >> 16 & 1 or not (elem.VR == "SQ" or (elem.VR in (None, "UN") and _sequence(t))):
            continue
        try:
            items = ds[t].value or []
        except Exception:
            continue
        for item in items:
            if isinstance(item, Dataset):
                inner = _encodings(item) if _has(item, 0x00080005) else encodings
                _gather(item, inner, out)


@functools.cache
def _sequence(t: int) -> bool:
    """Whether the data dictionary makes a public tag a sequence."""
    try:
        return dictionary_VR(t) == "SQ"
    except KeyError:
        return False


# Whole words for the short tokens: letter runs and digit runs apart ("ab12": "ab", "12").
_WORD_RE = re.compile(r"[^\W\d_]+|\d+")
_HAS_MONTH = re.compile("|".join(_MONTHS))


@functools.lru_cache(maxsize=256)
def _pattern(tokens: tuple[str, ...]) -> re.Pattern | None:
    """One compiled alternation per set of identifiers, built only when something is to be
    cut out (compiling costs milliseconds; searching uses sets and substrings)."""
    alternatives = set()
    for token in tokens:
        for folded in spellings(token.strip()):
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


class PatientIdentifiers:
    """The patient's own identifiers, and the ways to find them again.

    ``names``: name components, folded; ``ids``: identifiers in their written forms;
    ``numbers``: digit strings of four or more digits (IDs, their cores, the birth date)
    that a number must not equal or contain.
    """

    def __init__(self, names: Iterable[str] = (), ids: Iterable[str] = (), dates=()):
        names = [n for n in names if n]
        ids = [i for i in ids if i]
        tokens: list[str] = []
        for name in names:
            tokens += name_parts(name)
        id_tokens: list[str] = []
        for value in ids:
            id_tokens += id_parts(value)
        date_tokens: list[str] = []
        for value in dates:
            date_tokens += _numeric_spellings(value)
        self._tokens = tuple(sorted(set(tokens + id_tokens + date_tokens)))
        self._fragments = frozenset(f for value in ids for f in id_fragments(value))
        self._seen: dict[str, bool] = {}
        # The birth date with a month name: looked for only where a month name appears.
        self._month_dates = frozenset(s for value in dates for s in _month_spellings(value))
        # Found as substrings: long or non-ASCII tokens and those with separators; found as
        # whole words (letters) or whole digit runs: short ones ("Li" is not in "CLIP").
        self._substrings: set[str] = set()
        self._words: set[str] = set()
        for token in self._tokens:
            for folded in spellings(token.strip()):
                if len(folded) < 2:
                    continue
                if folded.isdigit() or (folded.isascii() and folded.isalnum() and len(folded) <= 4):
                    self._words.add(folded)
                else:
                    self._substrings.add(folded)
        # Words of four or more letters found one edit away, and ID-like tokens likewise:
        # each with its one-deletion variants, so a lookup costs a word's length.
        words = {f for t in tokens if " " not in t for f in spellings(t) if len(f) >= 5}
        self._near_words = _neighbourhood(words)
        self._near_ids = _neighbourhood({fold(t) for t in id_tokens if len(t) >= 5})
        numbers = {d.lstrip("0") for t in id_tokens + date_tokens for d in _DIGITS4.findall(t)}
        self.numbers = frozenset(n for n in numbers if len(n) >= 4)
        self._number_sizes = sorted({len(n) for n in self.numbers})
        # The squashed forms (no separators) of IDs, found inside squashed text.
        self.squashed = frozenset(
            s for s in (_SEPARATORS.sub("", fold(i)) for i in ids) if len(s) >= 4
        )

    @classmethod
    def of(cls, ds: Dataset) -> "PatientIdentifiers":
        """Read from the original header (before anything is changed), at any depth."""
        found: dict[str, list[str]] = {"names": [], "ids": [], "dates": []}
        _gather(ds, _encodings(ds), found)
        return _cached(tuple(found["names"]), tuple(found["ids"]), tuple(found["dates"]))

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def found(self, text: str) -> bool:
        """Whether ``text`` holds any of the identifiers, in any spelling (remembered: the
        instances of a series share this object and most of their values)."""
        if not self._tokens:
            return False
        hit = self._seen.get(text)
        if hit is None:
            hit = self._seen[text] = self._search(text)
            if len(self._seen) > 4096:
                self._seen.clear()
        return hit

    def _search(self, text: str) -> bool:
        folded = fold(text)
        if any(s in folded for s in self._substrings):
            return True
        words = _WORD_RE.findall(folded)
        if self._words and not self._words.isdisjoint(words):
            return True
        fragment = self._fragments and not self._fragments.isdisjoint(words)
        if fragment and any(c.isalpha() for c in folded):  # "QB-8823", not a bare number
            return True
        months = self._month_dates and _HAS_MONTH.search(folded)
        if months and any(s in folded for s in self._month_dates):
            return True
        if self.squashed:
            squashed = _SEPARATORS.sub("", folded)
            if any(s in squashed for s in self.squashed):
                return True
        return any(self.near(w) for w in _WORDS4.findall(folded))

    def near(self, word: str) -> bool:
        """A word (folded) one edit away from a name part of five or more letters, or an
        ID-like token one edit away from an identifier."""
        if len(word) < 4:
            return False
        index = self._near_ids if any(c.isdigit() for c in word) else self._near_words
        if not index:
            return False
        return word in index or any(d in index for d in _deletions(word))

    def number(self, text: str) -> bool:
        """Whether a number (as written) equals or contains a numeric identifier."""
        if not self.numbers:
            return False
        digits = "".join(c for c in text if c.isdigit())
        if len(digits) < 4:
            return False
        if len(digits) > 24:  # not a number anyone types: look at it whole
            return any(n in digits for n in self.numbers)
        sizes = self._number_sizes
        return any(
            digits[i : i + k] in self.numbers for k in sizes for i in range(len(digits) - k + 1)
        )

    def remove(self, text: str) -> str:
        """``text`` with the identifiers cut out (every occurrence, any spelling)."""
        pattern = _pattern(self._tokens)
        if pattern is None:
            return text
        folded = fold(text)
        if len(folded) != len(text):  # folding changed lengths: nothing can be mapped
            return "" if pattern.search(folded) else text
        spans = [m.span() for m in pattern.finditer(folded)]
        for start, end in reversed(spans):
            text = text[:start] + text[end:]
        return text
