"""The de-identification configuration: which Annex E options apply, pixels, safe private."""

import re
from dataclasses import dataclass, field, fields

import yaml
from pydicom.datadict import dictionary_description, tag_for_keyword

from transforms.deid.profile import CID_7050


@dataclass(frozen=True)
class SafePrivate:
    """A private element known to carry no identity: creator string and element byte."""

    creator: str
    element: int  # the low byte of the element number, e.g. 0x08 for (0029,xx08)


# Annex E action letters a site may give an attribute: keep, remove, empty, dummy, clean,
# replace UIDs.
OVERRIDE_ACTIONS = ("K", "X", "Z", "D", "C", "U")
_OVERRIDE_LISTS = {"keep": "K", "remove": "X", "replace": "D"}


@dataclass(frozen=True)
class Override:
    """A site rule for one attribute: an Annex E action letter, by tag; ``trust_content``
    (keep only) skips the content check for it."""

    tag: int
    action: str
    trust_content: bool = False


def parse_tag(name: str) -> int:
    """A keyword (``StationName``) or a tag (``(0008,1010)``, ``0008,1010``, ``00081010``).

    Raises:
        ValueError: for a keyword the data dictionary does not know, or a malformed tag.
    """
    text = str(name).strip()
    match = re.fullmatch(r"\(?([0-9A-Fa-f]{4}),?\s*([0-9A-Fa-f]{4})\)?", text)
    if match:
        return int(match[1] + match[2], 16)
    tag = tag_for_keyword(text)
    if tag is None:
        raise ValueError(f"overrides: unknown keyword or tag {text!r}")
    return tag


def _overrides(data) -> tuple[Override, ...]:
    """``overrides:`` as ``keep:``/``remove:``/``replace:`` lists and ``tags:`` (keyword or
    tag → letter, or {action, trust_content})."""
    if not isinstance(data, dict):
        raise ValueError("overrides must be a mapping of keep, remove, replace and tags")
    unknown = sorted(set(data) - {*_OVERRIDE_LISTS, "tags"})
    if unknown:
        raise ValueError(f"unknown de-id config keys: overrides.{', overrides.'.join(unknown)}")
    out: dict[int, Override] = {}
    for key, letter in _OVERRIDE_LISTS.items():
        for name in data.get(key) or []:
            out[parse_tag(name)] = Override(parse_tag(name), letter)
    for name, rule in (data.get("tags") or {}).items():
        rule = rule if isinstance(rule, dict) else {"action": rule}
        extra = sorted(set(rule) - {"action", "trust_content"})
        if extra:
            raise ValueError(f"overrides.tags.{name}: unknown keys {', '.join(extra)}")
        action = str(rule.get("action", "")).upper()
        if action not in OVERRIDE_ACTIONS:
            raise ValueError(
                f"overrides.tags.{name}: action must be one of {', '.join(OVERRIDE_ACTIONS)}"
            )
        trust = bool(rule.get("trust_content", False))
        if trust and action != "K":
            raise ValueError(f"overrides.tags.{name}: trust_content applies to K only")
        out[parse_tag(name)] = Override(parse_tag(name), action, trust)
    return tuple(out[t] for t in sorted(out))


PIXEL_POLICIES = ("redact", "exclude", "mask", "keep")
REDACT_MODES = ("all_text", "identifying_text")


@dataclass(frozen=True)
class PixelPolicy:
    policy: str = "redact"  # redact | exclude | mask | keep
    # Always treated as risky: these modalities burn text into pixels as a rule.
    risky_modalities: tuple[str, ...] = ("US", "SC", "OT", "XC", "ES")
    # Risky only when BurnedInAnnotation is missing.
    missing_annotation_modalities: tuple[str, ...] = ("RF", "XA", "MG", "DX", "CR", "PX", "IO")
    # modality → boxes (x0, y0, x1, y1) as fractions of columns/rows, blanked on every frame.
    mask_regions: dict[str, tuple[tuple[float, float, float, float], ...]] = field(
        default_factory=dict
    )
    # redact: all_text blanks every region the OCR detector finds; identifying_text reads
    # each region and blanks only the patient's identifiers, dates and PHI-like text.
    redact: str = "all_text"
    # Blanked around each detected region, as a fraction of its height (at least 2 px).
    redact_margin: float = 0.3


@dataclass(frozen=True)
class DeidConfig:
    """The switchable parts of the profile. Defaults: modified (shifted) dates, nothing else
    retained, structured content and graphics removed rather than cleaned, and the allowlist
    safety net behind the table."""

    retain_long_full_dates: bool = False
    retain_long_modified_dates: bool = True
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_uids: bool = False
    retain_safe_private: bool = False
    clean_descriptors: bool = False
    clean_structured_content: bool = False
    clean_graphics: bool = False
    date_shift_days: tuple[int, int] = (-3650, -365)
    patient_name: str = "pseudonym"  # pseudonym | empty
    # allowlist: what the table does not name goes unless the keep-list vouches for it, and
    # every kept text is searched for the patient's own identifiers. table_only: the table.
    safety_net: str = "allowlist"
    safe_private: tuple[SafePrivate, ...] = ()
    pixels: PixelPolicy = field(default_factory=PixelPolicy)
    # The site's per-tag rules (Annex E letters), applied before the table.
    overrides: tuple[Override, ...] = ()

    def __post_init__(self):
        if self.retain_long_full_dates and self.retain_long_modified_dates:
            raise ValueError(
                "retain_long_full_dates and retain_long_modified_dates exclude each other"
            )
        lo, hi = self.date_shift_days
        if lo > hi:
            raise ValueError("date_shift_days must be [low, high] with low <= high")
        if self.patient_name not in ("pseudonym", "empty"):
            raise ValueError("patient_name must be 'pseudonym' or 'empty'")
        if self.safety_net not in ("allowlist", "table_only"):
            raise ValueError("safety_net must be 'allowlist' or 'table_only'")
        if self.pixels.policy not in PIXEL_POLICIES:
            raise ValueError("pixels.policy must be redact, exclude, mask or keep")
        if self.pixels.redact not in REDACT_MODES:
            raise ValueError("pixels.redact must be all_text or identifying_text")
        if not 0 <= self.pixels.redact_margin <= 2:
            raise ValueError("pixels.redact_margin must be between 0 and 2 (box heights)")

    def enabled_options(self) -> list[str]:
        return [
            n for n in CID_7050 if isinstance(getattr(self, n, None), bool) and getattr(self, n)
        ]

    @classmethod
    def from_mapping(cls, data: dict | None) -> "DeidConfig":
        """Builds a config from parsed YAML; unknown keys are errors, not silently ignored."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown de-id config keys: {', '.join(unknown)}")
        if "date_shift_days" in data:
            data["date_shift_days"] = tuple(int(x) for x in data["date_shift_days"])
        if "safe_private" in data:
            data["safe_private"] = tuple(
                SafePrivate(str(e["creator"]), int(str(e["element"]), 0))
                for e in data["safe_private"]
            )
        if "overrides" in data:
            data["overrides"] = _overrides(data["overrides"] or {})
        if "pixels" in data:
            pixels = dict(data["pixels"] or {})
            unknown = sorted(set(pixels) - {f.name for f in fields(PixelPolicy)})
            if unknown:
                raise ValueError(f"unknown de-id config keys: pixels.{', pixels.'.join(unknown)}")
            for key in ("risky_modalities", "missing_annotation_modalities"):
                if key in pixels:
                    pixels[key] = tuple(str(m).upper() for m in pixels[key])
            if "redact_margin" in pixels:
                pixels["redact_margin"] = float(pixels["redact_margin"])
            if "mask_regions" in pixels:
                pixels["mask_regions"] = {
                    str(m).upper(): tuple(tuple(float(v) for v in box) for box in boxes)
                    for m, boxes in (pixels["mask_regions"] or {}).items()
                }
            data["pixels"] = PixelPolicy(**pixels)
        return cls(**data)

    @classmethod
    def from_yaml(cls, text: str) -> "DeidConfig":
        return cls.from_mapping(yaml.safe_load(text))

    def warnings(self) -> list[str]:
        """Lines to print when the config is read: overrides that skip the content check."""
        return [
            f"overrides: {_name(o.tag)} is kept with trust_content: its values are not "
            "checked for identifying content"
            for o in self.overrides
            if o.trust_content
        ]

    def describe(self) -> dict:
        """The config as recorded in manifests (no secrets live here)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "pixels":
                value = {
                    "policy": value.policy,
                    "redact": value.redact,
                    "redact_margin": value.redact_margin,
                    "risky_modalities": list(value.risky_modalities),
                    "missing_annotation_modalities": list(value.missing_annotation_modalities),
                    "mask_regions": {
                        k: [list(b) for b in v] for k, v in value.mask_regions.items()
                    },
                }
            elif f.name == "safe_private":
                value = [{"creator": s.creator, "element": s.element} for s in value]
            elif f.name == "overrides":
                value = [
                    {"tag": f"{o.tag:08X}", "action": o.action, "trust_content": o.trust_content}
                    for o in value
                ]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def _name(tag: int) -> str:
    try:
        return f"{dictionary_description(tag)} ({tag >> 16:04X},{tag & 0xFFFF:04X})"
    except KeyError:
        return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
