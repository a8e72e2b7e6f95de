"""PS3.15 Table E.1-1 as data: the rows, their option cells and the action in force."""

import json
from dataclasses import dataclass
from pathlib import Path

PROFILE_PATH = Path(__file__).with_name("deid_profile.json")

# CID 7050 (De-identification Method): the profile and each option we apply.
CID_7050 = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel_data": ("113101", "Clean Pixel Data Option"),
    "clean_graphics": ("113103", "Clean Graphics Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_long_full_dates": (
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    "retain_long_modified_dates": (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}

# ---------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Rule:
    """One row of Table E.1-1: the basic action and the option cells that override it."""

    tag: str  # 8 hex digits, "x" for a repeating-group nibble
    name: str
    action: str
    options: dict[str, str]


@dataclass(frozen=True)
class Profile:
    standard: str
    option_names: tuple[str, ...]
    rules: tuple[Rule, ...]

    @classmethod
    def load(cls, path: Path = PROFILE_PATH) -> "Profile":
        data = json.loads(Path(path).read_text())
        rules = tuple(
            Rule(r["tag"], r["name"], r["action"], dict(r.get("options") or {}))
            for r in data["rows"]
        )
        return cls(data["standard"], tuple(data["options"]), rules)


def _mask(tag: str) -> tuple[int, int]:
    """``"60xx3000"`` → (mask, value): a tag t matches when ``t & mask == value``."""
    mask = int("".join("0" if c == "x" else "f" for c in tag), 16)
    return mask, int(tag.replace("x", "0"), 16)


# ---------------------------------------------------------------------------------------


def effective_action(rule: Rule, enabled: set[str]) -> str:
    """The action for one row under the enabled options.

    An option cell overrides the basic action: keeping (K) wins over cleaning (C). Where the
    standard lets the IOD type decide (X/Z, X/D, Z/D, X/Z/D), we take the choice that is
    conformant for every type: Z keeps a type 2 attribute present, D gives a type 1 one a
    value. X/Z/U* (referenced image sequences) keeps the sequence and replaces its UIDs.
    """
    cells = {rule.options[o] for o in enabled if o in rule.options}
    for preferred in ("K", "C"):
        if preferred in cells:
            return preferred
    if cells:  # an option that removes (X under Retain UIDs for one row)
        return min(cells)
    return {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "K"}.get(
        rule.action, rule.action
    )
