"""The allowlist net behind the table walk: what Table E.1-1 does not name stays only when
the keep-list vouches for it, every kept text is searched for the patient's own identifiers,
and what is taken away leaves the object conformant (PS3.3 types from the keep-list data).

``AllowlistNet`` is mixed into ``Deidentifier`` (engine.py), which provides the walk
(``_vr``, ``_items``, ``_clean``, ``_uids``) and the per-worker state (``config``,
``_keep``, ``_meanings``, ``_net``, ``_cleaning``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydicom.datadict import get_entry
from pydicom.dataset import Dataset

from transforms.deid.net import (
    NET_BYTES_VRS,
    NET_TEXT_VRS,
    date_spellings,
    keyword,
    name_parts,
    valid_value,
)
from transforms.deid.profile import CID_7050
from transforms.deid.values import (
    _ACCESSION_NUMBER,
    _BYTES_VRS,
    _PATIENT_ID,
    _PIXEL_DATA,
    _TEXT_VRS,
    _encodings,
    _keyword,
    _set,
    _text,
    _values,
)

if TYPE_CHECKING:
    from transforms.deid.config import DeidConfig
    from transforms.deid.engine import _Context
    from transforms.deid.net import KeepList

_DUMMY = {
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

# Unlisted UIDs are replaced unless they name a class, syntax or scheme rather than a thing.
_CLASS_UID_KEYWORDS = (
    "ClassUID",
    "TransferSyntaxUID",
    "CodingSchemeUID",
    "ContextUID",
    "MappingResourceUID",
    "ContextGroupExtensionCreatorUID",
)
_MODALITY = 0x00080060
_CODE_MEANING = 0x00080104
_TEXT_VALUE = 0x0040A160
_ENCAPSULATED_DOCUMENT = 0x00420011
_CHARSET = 0x00080005
_NO_MEANING = "no standard meaning"
_DUMMIES = frozenset({"ANONYMIZED", "ANONYMOUS", "REMOVED", _NO_MEANING, "OT"})
# The patient's own identifiers in the original header, searched for in every kept text.
_OWN_NAMES = (0x00100010, 0x00101001, 0x00101005, 0x00101060)  # name, other, birth, mother
_OWN_IDS = (_PATIENT_ID, 0x00101000, _ACCESSION_NUMBER)  # (OtherPatientIDs retired)
_DCM_MEANINGS = {value: meaning for value, meaning in CID_7050.values()}


def _known(t: int) -> bool:
    try:
        get_entry(t)
    except KeyError:
        return False
    return True


def _items_of(ds: Dataset, t: int) -> list[Dataset]:
    elem = ds.get(t)
    return list(elem.value or []) if elem is not None and elem.VR == "SQ" else []


def _encodings_of(item: Dataset, inherited: tuple[str, ...]) -> tuple[str, ...]:
    return _encodings(item) if _CHARSET in item else inherited


class AllowlistNet:
    """The net's part of the walk (see the module docstring)."""

    if TYPE_CHECKING:  # provided by Deidentifier, which mixes this class in
        config: DeidConfig
        _keep: KeepList
        _meanings: dict[tuple[str, str], str]
        _cleaning: bool
        _net: bool

        def _vr(self, ds: Dataset, t: int) -> str: ...
        def _uids(self, ds: Dataset, t: int, vr: str) -> None: ...
        def _clean(self, ds: Dataset, t: int, vr: str, ctx: _Context) -> None: ...
        def _items(self, ds: Dataset, t: int, ctx: _Context) -> None: ...

    def _own_identifiers(self, ds: Dataset, encodings: tuple[str, ...]) -> list[str]:
        """Name components, IDs, accession and birth date (in every notation) of the patient,
        from the original header."""
        out: list[str] = []
        for tag in _OWN_NAMES:
            for name in _values(ds, tag, encodings):
                out += name_parts(name)
        for tag in _OWN_IDS:
            out += _values(ds, tag, encodings)
        for item in _items_of(ds, 0x00101002):  # OtherPatientIDsSequence
            out += _values(item, _PATIENT_ID, _encodings_of(item, encodings))
        for birth in _values(ds, 0x00100030, encodings):
            out += date_spellings(birth)
        return out

    def _all_names(self, ds: Dataset, encodings: tuple[str, ...]) -> list[str]:
        """Every person name anywhere in the dataset (for the cleaning options)."""
        out: list[str] = []
        for tag in list(ds.keys()):
            t = int(tag)
            if t >> 16 & 1:
                continue
            vr = self._vr(ds, t)
            if vr == "PN":
                for name in _values(ds, t, encodings):
                    out += name_parts(name)
            elif vr == "SQ":
                for item in ds[t].value or []:
                    out += self._all_names(item, _encodings_of(item, encodings))
        return out

    def _unlisted(self, ds: Dataset, t: int, ctx: _Context) -> None:
        """Attributes the table does not name. Under the allowlist net (the default) a
        text- or byte-capable one stays only when the keep-list vouches for it; values of
        CS, DS, IS, AS, TM and dates stay only when valid. ``table_only`` keeps the rest."""
        if t == _PIXEL_DATA:
            return
        vr = self._vr(ds, t)
        if not self._net:
            self._unlisted_table_only(ds, t, vr, ctx)
            return
        if not _known(t):  # a public tag the dictionary does not know: nobody vouches for it
            self._drop(ds, t, ctx)
        elif vr == "SQ":
            self._items(ds, t, ctx)
        elif t == _CODE_MEANING:
            self._code_meaning(ds, t)
        elif t == _TEXT_VALUE:
            self._text_value(ds, t, vr, ctx)
        elif vr in ("DA", "DT"):
            self._clean(ds, t, vr, ctx)
        elif vr == "UI":
            if not self.config.retain_uids and not _keyword(t).endswith(_CLASS_UID_KEYWORDS):
                self._uids(ds, t, vr)
        elif vr == "CS":
            self._code_string(ds, t, ctx)
        elif vr in ("DS", "IS", "AS", "TM") or (vr == "UR" and t == 0x00080120):
            values = _values(ds, t, ctx.encodings)  # URNCodeValue: a URN, or removed
            if not all(valid_value(vr, v) for v in values):
                self._drop(ds, t, ctx)
        elif vr in NET_TEXT_VRS or vr in NET_BYTES_VRS:
            if t not in self._keep.keep:
                self._drop(ds, t, ctx)
            elif vr in NET_TEXT_VRS:
                self._own_identifiers_in(ds, t, vr, ctx)
        # Binary numbers (US, FL, AT, ...) carry no text: kept.

    def _unlisted_table_only(self, ds: Dataset, t: int, vr: str, ctx: _Context) -> None:
        """``safety_net: table_only``: the table alone, with the old narrow nets."""
        if vr == "SQ":
            self._items(ds, t, ctx)
        elif vr == "UN":
            del ds[t]
        elif vr == "PN":
            _set(ds, t, vr, None)
        elif vr in ("DA", "DT"):
            self._clean(ds, t, vr, ctx)
        elif (
            vr == "UI"
            and not self.config.retain_uids
            and not _keyword(t).endswith(_CLASS_UID_KEYWORDS)
        ):
            self._uids(ds, t, vr)

    def _text_value(self, ds: Dataset, t: int, vr: str, ctx: _Context) -> None:
        """SR free text: cleaned under Clean Structured Content / Descriptors, else replaced;
        a TEXT content item keeps a placeholder (its TextValue is type 1C)."""
        if self._cleaning:
            self._clean(ds, t, vr, ctx)
        elif t in ds:
            del ds[t]
            ctx.counts[keyword(t)] += 1
        if t not in ds and _text(ds, 0x0040A040) == "TEXT":
            _set(ds, t, "UT", "REMOVED")

    def _drop(
        self, ds: Dataset, t: int, ctx: _Context, vr: str | None = None, counter: str = ""
    ) -> None:
        """Takes the value away. An attribute that PS3.3 makes type 1 somewhere gets a dummy
        (bytes: zeros of the same length), type 2 an empty value; others are removed."""
        kind = self._keep.types.get(t)
        vr = vr or self._vr(ds, t)
        if kind == "1" and vr != "SQ":
            if vr in _BYTES_VRS:
                old = ds.get_item(t).value or b""
                _set(ds, t, vr, b"\x00" * max(2, len(old) + len(old) % 2))
            else:
                _set(ds, t, vr, _DUMMY.get(vr) or "ANONYMIZED")
        elif kind == "2" and vr != "SQ":
            _set(ds, t, vr, None)
        else:
            del ds[t]
        ctx.counts[counter or keyword(t)] += 1

    def _code_string(self, ds: Dataset, t: int, ctx: _Context) -> None:
        """CS values: kept when on the keep-list, of CS syntax and (where the standard lists
        them) a defined term; an invalid Modality becomes OT."""
        values = _values(ds, t, ctx.encodings)
        terms = self._keep.terms.get(t)
        valid = [
            v for v in values if valid_value("CS", v) and (terms is None or not v or v in terms)
        ]
        if t == _MODALITY:
            if values != valid or len(values) > 1:
                _set(ds, t, "CS", "OT")
                ctx.counts["invalid_modality"] += 1
        elif t not in self._keep.keep or not valid:
            if values or t not in self._keep.keep:
                self._drop(ds, t, ctx)
        else:
            if valid != values:
                _set(ds, t, "CS", valid if len(valid) > 1 else valid[0])
                ctx.counts[keyword(t)] += 1
            self._own_identifiers_in(ds, t, "CS", ctx)

    def _code_meaning(self, ds: Dataset, t: int) -> None:
        """A code's meaning is the standard one for its scheme and value, never as typed."""
        scheme = _text(ds, 0x00080102)
        value = _text(ds, 0x00080100)
        meaning = self._meanings.get((scheme, value))
        if meaning is None and scheme == "DCM":
            meaning = _DCM_MEANINGS.get(value)
        _set(ds, t, "LO", meaning or _NO_MEANING)

    def _own_identifiers_in(self, ds: Dataset, t: int, vr: str, ctx: _Context) -> None:
        """The last net, applied to every text the walk keeps: a value holding the patient's
        own identifiers (from the original header) is taken away."""
        if ctx.scan is None or t not in ds:
            return
        values = _values(ds, t, ctx.encodings)
        terms = self._keep.terms.get(t)
        if terms and all(v in terms for v in values):
            return  # the standard's own terms, whoever shares a word with them
        if any(v not in _DUMMIES and ctx.scan.found(v) for v in values):
            self._drop(ds, t, ctx, vr, f"patient_identifier:{keyword(t)}")
