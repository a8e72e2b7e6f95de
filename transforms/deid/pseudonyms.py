"""Keyed pseudonyms (HMAC-SHA256 under the secret key) and date shifting."""

import base64
import datetime
import hashlib
import hmac
import re

UID_ROOT = "2.25."


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

    def token(self, label: str, value: str) -> str:
        """A keyed token of 16 upper-case letters and digits (local codes and the like)."""
        return base64.b32encode(self._digest(label, value)[:10]).decode()

    def date_shift(self, patient_id: str) -> int:
        """Days added to every date of this patient: the same in every run and worker."""
        lo, hi = self._shift_range
        span = hi - lo + 1
        return lo + int.from_bytes(self._digest("date-shift", patient_id)[:8], "big") % span


_DT_PART = (
    r"(?P<Y>\d{4})(?:(?P<M>\d{2})(?:(?P<D>\d{2})"
    r"(?P<time>(?:[01]\d|2[0-3])(?:[0-5]\d(?:(?:[0-5]\d|60)(?:\.\d{1,6})?)?)?)?)?)?"
    r"(?P<tz>[+-](?:0\d|1[0-4])[0-5]\d)?"
)
_DT_RE = re.compile(rf"^{_DT_PART}$")
_DA_RE = re.compile(r"^(?P<Y>\d{4})(?P<M>\d{2})(?P<D>\d{2})$")


def _shift_one(text: str, days: int, vr: str) -> str | None:
    match = (_DA_RE if vr == "DA" else _DT_RE).match(text)
    if not match:
        return None
    g = match.groupdict()
    year = int(g["Y"])
    try:
        if g.get("D"):
            day = datetime.date(year, int(g["M"]), int(g["D"])) + datetime.timedelta(days=days)
            out = f"{day.year:04d}{day.month:02d}{day.day:02d}"
        elif g.get("M"):
            if not 1 <= int(g["M"]) <= 12:
                return None
            months = year * 12 + int(g["M"]) - 1 + round(days / 30.44)
            out = f"{months // 12:04d}{months % 12 + 1:02d}"
        else:
            out = f"{year + round(days / 365.25):04d}"
    except (ValueError, OverflowError):  # e.g. the placeholder 00010101
        return None
    if not 1 <= int(out[:4]) <= 9999:
        return None
    return out + (g.get("time") or "") + (g.get("tz") or "")


def shift_date(value: str, days: int, vr: str = "DT") -> str | None:
    """Shifts a DA or DT value, or a range of them, by ``days``, in every form PS3.5 allows.

    A DA is ``YYYYMMDD``; a DT is ``YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX]``, shifted at its own
    precision (a year or month alone by whole years or months); times of day and offsets
    stay. A range ``A-B``, ``-B`` or ``A-`` is shifted at both ends. Anything else (dotted or
    dashed notations, trailing text, impossible dates) gives None: the caller removes it,
    never keeping or partly shifting it.
    """
    text = value.strip()
    if not text:
        return None
    single = _shift_one(text, days, vr)
    if single is not None or "-" not in text:
        return single
    # A range: try every split at a dash (a DT offset may hold one too) for two valid ends.
    for i, c in enumerate(text):
        if c != "-":
            continue
        left, right = text[:i], text[i + 1 :]
        a = _shift_one(left, days, vr) if left else ""
        b = _shift_one(right, days, vr) if right else ""
        if a is not None and b is not None and (left or right):
            return f"{a}-{b}"
    return None
