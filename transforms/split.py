"""Patient-level train/eval/test split, decided by a salted hash of the patient pseudonym.

The split is a pure function of the pseudonymous patient id and the config: no state, no
shuffle, no random generator. Every instance of a patient therefore lands in the same split
in every run and on every worker, so no patient ever leaks from train into eval or test.
Hashing the pseudonym (never the original id) keeps PHI out of this step entirely.
"""

import hashlib
import math
from dataclasses import dataclass, fields

SPLITS = ("train", "eval", "test")
UNLABELED = "unlabeled"
ALL_SPLITS = (*SPLITS, UNLABELED)  # the folders under tfrecords/

_SUM_TOLERANCE = 1e-9
_UNIT_BITS = 53  # a double's mantissa: integers below 2**53 divide into [0, 1) exactly


@dataclass(frozen=True)
class SplitConfig:
    """Fractions of patients per split (each >= 0, summing to 1) and the hash salt.

    Changing the salt reshuffles every patient; keep it fixed for as long as models trained
    on one split are compared with each other.
    """

    train: float = 0.8
    eval: float = 0.1
    test: float = 0.1
    salt: str = "dicomflow-split-v1"

    def __post_init__(self) -> None:
        for name in SPLITS:
            value = getattr(self, name)
            # bool is an int subclass, and `train: true` in YAML is a mistake, not 1.0.
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"split fraction {name} must be a number")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"split fraction {name} must be a finite number >= 0")
        total = math.fsum(self.fractions())
        if abs(total - 1.0) > _SUM_TOLERANCE:
            raise ValueError(f"split fractions must sum to 1, not {total:g}")
        if not isinstance(self.salt, str):
            raise ValueError("split salt must be a string")

    def fractions(self) -> tuple[float, ...]:
        """The fractions in ``SPLITS`` order."""
        return tuple(float(getattr(self, name)) for name in SPLITS)

    @classmethod
    def from_mapping(cls, data: dict | None) -> "SplitConfig":
        """Builds a config from a parsed YAML/JSON section; None means the defaults.

        Raises:
            ValueError: not a mapping, unknown keys (named: they are config keys, not data),
                or values that ``SplitConfig`` refuses.
        """
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ValueError("split config must be a mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ValueError(f"unknown split config keys: {', '.join(unknown)}")
        return cls(**data)


def unit_hash(patient_pseudonym: str, salt: str) -> float:
    """sha256(salt NUL pseudonym) → a number uniform in [0, 1), the same on every machine."""
    digest = hashlib.sha256(f"{salt}\0{patient_pseudonym}".encode()).digest()
    # The top 53 bits only: a 64-bit integer divided by 2**64 can round up to 1.0.
    return (int.from_bytes(digest[:8], "big") >> (64 - _UNIT_BITS)) / (1 << _UNIT_BITS)


def assign_split(patient_pseudonym: str, labeled: bool, config: SplitConfig) -> str:
    """The split for one instance: ``UNLABELED`` without a label, else one of ``SPLITS``.

    Args:
        patient_pseudonym: the de-identified patient id (never the original).
        labeled: whether the instance has a label.
        config: fractions and salt.
    """
    if not labeled:
        return UNLABELED
    u = unit_hash(patient_pseudonym, config.salt)
    # Splits with fraction 0 get no bucket at all, and the last non-empty split takes the
    # float rounding remainder, so a 0-fraction split can never be returned.
    chosen = [(name, frac) for name, frac in zip(SPLITS, config.fractions(), strict=True) if frac]
    bound = 0.0
    for name, fraction in chosen[:-1]:
        bound += fraction
        if u < bound:
            return name
    return chosen[-1][0]
