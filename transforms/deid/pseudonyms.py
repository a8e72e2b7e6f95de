"""Keyed pseudonyms (HMAC-SHA256 under the secret key) and date shifting."""

import base64
import datetime
import hashlib
import hmac
import re

UID_ROOT = "2.25."

_DATE_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})")

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
