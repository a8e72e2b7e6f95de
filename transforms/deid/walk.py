"""What the de-identification steps share while one dataset is walked, and the interface
each step implements.

The engine (``engine.Deidentifier``) walks every element of a dataset, at any depth, and
offers it to its steps in order (the site's overrides, private elements, the Annex E
table, the keep-list); the first step that handles an element decides its fate. Steps
that keep a value hand it to the content check (``checks.ContentStep``) first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from transforms.deid.identifiers import PatientIdentifiers
from transforms.deid.values import _BYTES_VRS, _TEXT_VRS, _element, _has, _set

# Dummies by VR: valid values that carry nothing.
DUMMY = {
    "AE": "ANONYMOUS",
    "AS": "000Y",
    "CS": "ANONYMIZED",
    "DS": "0",
    "IS": "0",
    "PN": "ANONYMIZED",
    "UR": "http://removed.invalid/",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "AT": 0,
    **{vr: "ANONYMIZED" for vr in _TEXT_VRS},
    **{vr: 0 for vr in ("FL", "FD", "SL", "SS", "UL", "US", "SV", "UV")},
}


@dataclass
class WalkState:
    """Per-dataset facts gathered before anything is changed, and what was done."""

    date_shift: int
    tokens: tuple[str, ...]  # the patient's identifiers as written (for Clean)
    encodings: tuple[str, ...]  # SpecificCharacterSet, inherited by nested items
    own: PatientIdentifiers  # the patient's own identifiers, in every spelling
    types: dict[int, str]  # "1" or "2": the strictest PS3.3 type of an attribute
    walk: Callable[[Dataset, WalkState, int], None]  # the engine's walk, for items
    clean_scan: PatientIdentifiers | None = None  # and every person name (Clean options)
    depth: int = 0  # 0 for the dataset, n inside n sequences
    # The identifiers of the dataset or item being walked, read before anything changed.
    originals: dict[int, str] = field(default_factory=dict)
    # What was removed or changed, by counter name (shared by every item of the dataset).
    counts: Counter = field(default_factory=Counter)
    # The VR the element being offered was read with (None: implicit), as the file says.
    file_vr: str | None = None
    # Private creators of the item being walked that a kept private element needs.
    kept_creators: set[int] = field(default_factory=set)

    def items(self, ds: Dataset, t: int) -> None:
        """Walks every item of the sequence ``t`` with the same steps."""
        elem = _element(ds, t)
        value = elem.value if isinstance(elem, DataElement) else ds[t].value  # raw: parsed
        for item in value or []:
            self.walk(item, self, self.depth + 1)

    def drop(self, ds: Dataset, t: int, vr: str, counter: str) -> None:
        """Takes the value away and counts it under ``counter``. An attribute that PS3.3
        makes type 1 somewhere gets a dummy (bytes: zeros of the same length), type 2 an
        empty value; others are removed."""
        kind = self.types.get(t)
        if kind == "1" and vr != "SQ":
            if vr in _BYTES_VRS:
                old = _element(ds, t).value or b""
                size = len(old) if isinstance(old, bytes) else 2
                _set(ds, t, vr, b"\x00" * max(2, size + size % 2))
            else:
                _set(ds, t, vr, DUMMY.get(vr, "ANONYMIZED"))
        elif kind == "2" and vr != "SQ":
            _set(ds, t, vr, None)
        elif _has(ds, t):
            del ds[t]
        self.counts[counter] += 1


class Step(Protocol):
    """One concern of de-identification: handles an element (returns True) or passes it
    on to the next step (False)."""

    def __call__(self, ds: Dataset, t: int, state: WalkState) -> bool: ...
