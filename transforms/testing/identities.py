"""Fake people, studies and institutions with distinctive names, and the PHI they plant."""

from __future__ import annotations

import datetime
import functools
import hashlib
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

# Distinctive names (>= 5 letters) so that a leak scan for them has no false positives.
# 50 x 48 x 42 = 100,800 unique FAMILY^GIVEN^MIDDLE combinations.
# fmt: off
FAMILY = (
    "KOWALCZYK", "HALVORSEN", "OYELARAN", "VANTONGEREN", "MCFARLANE", "DRAGOMIR", "ESPINOZA",
    "FITZGERALD", "GRABOWSKI", "HOLLINGSWORTH", "IVANCHENKO", "JANSSENS", "KARLSSON", "LINDQVIST",
    "MARCHETTI", "NAKAMURA", "OKONKWO", "PETROVSKI", "QUINTERO", "RASMUSSEN", "SALAZAR",
    "TAKAHASHI", "VASQUEZ", "WOJCIECHOWSKI", "XANTHOPOULOS", "YAMAMOTO", "ZIMMERMANN", "ABERNATHY",
    "BALDACCI", "CASTELLANOS", "DELACROIX", "EKSTROM", "FONTAINE", "GALLAGHER", "HUTCHINSON",
    "IGLESIAS", "JABLONSKI", "KRISTIANSEN", "LEFEBVRE", "MONTGOMERY", "NORDSTROM", "OLIVEIRA",
    "PAPADOPOULOS", "RADCLIFFE", "SCHNEIDER", "THORNTON", "UNDERWOOD", "VILLANUEVA", "WHITFIELD",
    "ZAPATERO"
)
GIVEN = (
    "BRUNHILDE", "OSWALDO", "ANNELIESE", "BARTHOLOMEW", "CORDELIA", "DESMOND", "EVANGELINE",
    "FREDERICK", "GWENDOLYN", "HORATIO", "ISADORA", "JOAQUIN", "KATARINA", "LEOPOLD", "MARGUERITE",
    "NATHANIEL", "OTTILIE", "PERCIVAL", "QUENTIN", "ROSALIND", "SEBASTIAN", "THEODORA", "ULRICH",
    "VALENTINA", "WINIFRED", "XAVIER", "YOLANDA", "ZACHARIAH", "AUGUSTINE", "BEATRICE", "CASIMIR",
    "DOROTHEA", "EZEKIEL", "FLORENTINA", "GIDEON", "HENRIETTA", "IGNATIUS", "JOSEPHINE",
    "KONSTANTIN", "LUCRETIA", "MAXIMILIAN", "NICOLETTA", "ORLANDO", "PHILIPPA", "REGINALD",
    "SOLVEIG", "TOBIAS", "URSULA"
)
MIDDLE = (
    "AMBROSE", "BENEDICT", "CLEMENTINE", "DELPHINE", "EMMERICH", "FABIANA", "GERTRUDE",
    "HILDEGARD", "IMMANUEL", "JOCELYN", "KASIMIRA", "LEANDER", "MATHILDE", "NIKODEM", "OCTAVIA",
    "PASCALE", "ROSWITHA", "SIEGFRIED", "TIBERIUS", "VERONIQUE", "WILHELMINA", "ALOYSIUS",
    "BERNADETTE", "CORNELIUS", "DAMIANA", "ERASMUS", "FELICITAS", "GREGORIUS", "HYACINTH",
    "ISOLDE", "JERONIMO", "KUNIGUNDE", "LORELEI", "MELCHIOR", "NARCISSA", "ODALRIC", "PRUDENCE",
    "RAPHAELA", "SERAPHINA", "THADDEUS", "VALERIAN", "WENDELIN"
)
# fmt: on
_EXTRA_FAMILY = ("TREMAYNE", "ASHBURNHAM", "PENHALIGON", "STRATHEARN")
_EXTRA_GIVEN = ("AURELIO", "GUINEVERE", "LYSANDER", "MIRABELLE")
_DOCTORS = (
    "HARGREAVES^LEOPOLDINE^^DR.",
    "OYAMADA^FERDINAND^^DR.",
    "KRZYWICKA^HONORATA^^DR.",
    "BLACKWOOD^EUSTACE^^DR.",
    "VALLADARES^ESPERANZA^^DR.",
    "ROSENQUIST^TORBJORN^^DR.",
)
_OPERATORS = ("TECHNICIAN^MAREK", "LAUDRUP^SIGRID", "VOLKONSKAYA^ILARIA", "PEMBROKE^DUNSTAN")
_INSTITUTIONS = (
    ("ST. ELSPETH REGIONAL HOSPITAL", "41 Quarrybank Road, Elmsworth EW4 9QT"),
    ("MERIDIAN VALLEY MEDICAL CENTER", "1907 Tamarack Avenue, Brookhollow 55821"),
    ("ALDERGROVE UNIVERSITY CLINIC", "Aldergrove Platz 12, 80993 Kestenau"),
)
_STREETS = ("Larkspur Lane", "Wexcombe Drive", "Pimlott Crescent", "Odenfeld Strasse", "Rue Bastet")
_CITIES = ("Eastbourne", "Harrowgate", "Kestenau", "Lac-Vermeil", "Brookhollow")


def _item(**elements: object) -> Dataset:
    """A sequence item (or any dataset) from keyword=value pairs."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def _uid(*parts: object) -> str:
    """A 2.25 UID derived from the parts, identical on every machine."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


class _Phi(dict):
    def add(self, category: str, *values: str) -> None:
        bucket = self.setdefault(category, [])
        bucket.extend(str(v) for v in dict.fromkeys(values) if v and v not in bucket)


@dataclass(frozen=True)
class _Person:
    family: str
    given: str
    middle: str
    pid: str
    birth_date: str
    sex: str
    address: str
    phone: str
    other_id: str
    private_key: str
    uid: str

    @property
    def name(self) -> str:
        return "^".join(p for p in (self.family, self.given, self.middle) if p)

    @property
    def folder(self) -> str:
        return f"{self.name.replace('^', '_')}_{self.pid}"


@dataclass(frozen=True)
class _Study:
    kind: str
    uid: str
    accession: str
    date: str
    time: str
    institution: tuple[str, str]
    referring: str
    performing: str
    operator: str
    rp_id: str
    sps_id: str
    positive: bool


def _date(rng: np.random.Generator, first_year: int, years: int) -> str:
    day = datetime.date(first_year, 1, 1) + datetime.timedelta(int(rng.integers(0, 365 * years)))
    return day.strftime("%Y%m%d")


def _time(rng: np.random.Generator) -> str:
    return f"{rng.integers(7, 19):02d}{rng.integers(0, 60):02d}{rng.integers(0, 60):02d}"


def _person(rng: np.random.Generator, family: str, given: str, middle: str, pid: str) -> _Person:
    return _Person(
        family=family,
        given=given,
        middle=middle,
        pid=pid,
        birth_date=_date(rng, 1930, 75),
        sex=str(rng.choice(["F", "M", "O"], p=[0.5, 0.45, 0.05])),
        address=f"{rng.integers(2, 9999)} {rng.choice(_STREETS)}, {rng.choice(_CITIES)}",
        phone=f"+1-555-{rng.integers(100, 1000)}-{rng.integers(1000, 10000)}",
        other_id=f"MRN{rng.integers(10**7, 10**8)}",
        private_key=f"ACMEKEY-{rng.integers(10**8, 10**9)}",
        uid=_uid(pid, family, given, middle),
    )


@functools.cache
def _name_offset(seed: int) -> int:
    return int(hashlib.sha256(str(seed).encode()).hexdigest(), 16)


def _name_parts(index: int, seed: int) -> tuple[str, str, str]:
    """FAMILY, GIVEN, MIDDLE: a seed-rotated mixed-radix counter, unique for 100,800 indices."""
    n = (index + _name_offset(seed)) % (len(FAMILY) * len(GIVEN) * len(MIDDLE))
    family, n = FAMILY[n % len(FAMILY)], n // len(FAMILY)
    given, n = GIVEN[n % len(GIVEN)], n // len(GIVEN)
    return family, given, MIDDLE[n % len(MIDDLE)]


def _study(rng: np.random.Generator, kind: str, key: tuple, positive_rate: float) -> _Study:
    return _Study(
        kind=kind,
        uid=_uid(*key, "study"),
        accession=f"AC{rng.integers(10**10, 10**11)}",
        date=_date(rng, 2012, 12),
        time=_time(rng),
        institution=_INSTITUTIONS[rng.integers(len(_INSTITUTIONS))],
        referring=str(rng.choice(_DOCTORS)),
        performing=str(rng.choice(_DOCTORS)),
        operator=str(rng.choice(_OPERATORS)),
        rp_id=f"RP{rng.integers(10**6, 10**7)}",
        sps_id=f"SPS{rng.integers(10**6, 10**7)}",
        positive=bool(rng.random() < positive_rate),
    )


# ---------------------------------------------------------------- pixels
