"""Which segments and ROIs are which class, by name (``ingest --mask-classes``).

Without it, a SEG's segment numbers and an RTSTRUCT's ROI numbers are the class values.
That fits objects one tool wrote for one task; a treatment planning system's structure sets
number their ROIs per patient (the GTV is ROI 3 in one, ROI 7 in the next) and hold others
no model should learn (BODY, couch, PTV margins). ``MaskClasses`` names the classes and,
for each, the segment labels or ROI names that are it: matched without regard to case or
spacing, ``*`` and ``?`` as in file names, the first class that matches winning. Where
classes overlap on an image, the later class (the higher value) wins, as the higher number
does without classes: a structure is listed before what lies inside it. Segments
and ROIs of no class are left out; an object none of whose segments or ROIs is of a class
is a dead letter ``mask_without_class``.

The text, ``liver=Liver,tumour=GTV|GTV*`` (or ``Liver,GTV``: each name its own class), is
the user's configuration: its class names are what the manifest, the model and the SEGs
score writes call the classes. The objects' own names are only compared, never written.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

MASK_WITHOUT_CLASS = "mask_without_class"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}")  # a class name as written out


def _fold(text: str) -> str:
    return " ".join(str(text).split()).casefold()


@dataclass(frozen=True)
class MaskClasses:
    """Class names (value = position + 1) and, per class, the object names that are it."""

    names: tuple[str, ...]
    patterns: tuple[tuple[str, ...], ...]

    @classmethod
    def parse(cls, text: str) -> MaskClasses:
        """``class=NAME|NAME,...`` or ``NAME,...``; raises ValueError saying what is wrong."""
        names: list[str] = []
        patterns: list[tuple[str, ...]] = []
        for entry in (e.strip() for e in str(text).split(",")):
            if not entry:
                raise ValueError("an empty class (two commas, or a comma at an end)")
            name, equals, matched = entry.partition("=")
            name = name.strip()
            if equals and not matched.strip():
                raise ValueError(f"class {name!r} has no name to match after '='")
            alternatives = tuple(_fold(m) for m in (matched or name).split("|"))
            if not _NAME.fullmatch(name):
                raise ValueError(
                    "a class name is 1-64 letters, digits, spaces or _.+- (starting with a "
                    "letter or digit)"
                )
            if any(not a for a in alternatives):
                raise ValueError(f"class {name!r} has an empty name to match")
            if _fold(name) in (_fold(n) for n in names):
                raise ValueError(f"class {name!r} is given twice")
            names.append(name)
            patterns.append(alternatives)
        if len(names) > 255:
            raise ValueError("more than 255 classes do not fit a uint8 label map")
        return cls(tuple(names), tuple(patterns))

    def value_of(self, label: str) -> int | None:
        """The class value (1-based) of a segment label or ROI name, or None."""
        folded = _fold(label)
        for value, alternatives in enumerate(self.patterns, start=1):
            if any(fnmatch.fnmatchcase(folded, a) for a in alternatives):
                return value
        return None

    def describe(self) -> dict[str, str]:
        """{"1": name, ...}: the manifest's ``masks.classes``."""
        return {str(v): n for v, n in enumerate(self.names, start=1)}


def renumbering(ds: Dataset, classes: MaskClasses, kind: str) -> dict[int, int]:
    """The object's own numbers (segment or ROI) → class values, for those of a class."""
    if kind == "seg":
        items, number, name = ds.get("SegmentSequence", []), "SegmentNumber", "SegmentLabel"
    else:
        items, number, name = ds.get("StructureSetROISequence", []), "ROINumber", "ROIName"
    out: dict[int, int] = {}
    for item in items:
        try:
            own = int(item.get(number))
        except (TypeError, ValueError):
            continue
        value = classes.value_of(str(item.get(name, "") or ""))
        if value is not None:
            out[own] = value
    return out
