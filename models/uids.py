"""DICOM UID syntax, for the places that make a file name from a UID."""

import re

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(text: str) -> bool:
    """Dot-separated digits, 64 characters at most (PS3.5 9.1): safe as a file name."""
    return bool(_UID.match(text)) and len(text) <= 64
