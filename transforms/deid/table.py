"""The Annex E step: Table E.1-1 under the enabled options, applied to the attributes it
names (and to the 50xx/60xx repeating groups, which go whole)."""

from __future__ import annotations

import functools
from collections.abc import Callable

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from transforms.deadletter import StageError
from transforms.deid.config import DeidConfig
from transforms.deid.profile import Profile, _mask, effective_action
from transforms.deid.pseudonyms import Pseudonymizer, shift_date
from transforms.deid.values import (
    _ACCESSION_NUMBER,
    _BYTES_VRS,
    _PATIENT_ID,
    _PATIENT_NAME,
    _TEXT_VRS,
    _element,
    _has,
    _is_standard_uid,
    _set,
    _text,
    _values,
    clean_text,
)
from transforms.deid.walk import DUMMY, WalkState

ENCAPSULATED_DOCUMENT = 0x00420011

# Where a PS3.3 type 1 document must stay a document: the smallest valid one per type.
_MINIMAL_DOCUMENTS = {
    "application/pdf": (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
        b"trailer<</Root 1 0 R>>\n%%EOF\n"
    ),
    "text/xml": b'<?xml version="1.0"?><removed/>\n',
    "text/plain": b"REMOVED\n",
}


class AnnexETable:
    """Table E.1-1, as configured: ``action_for(tag)`` and the step that applies it.

    Its value operations (``replace_uids``, ``shift_dates``, ``clean``) are public: the
    keep-list step applies them to attributes the table does not name.
    """

    def __init__(self, profile: Profile, config: DeidConfig, pseudonyms: Pseudonymizer):
        self.profile = profile
        self.config = config
        self.pseudonyms = pseudonyms
        enabled = {n for n in profile.option_names if getattr(config, n, False)}
        self._exact: dict[int, str] = {}
        self._masked: list[tuple[int, int, str]] = []
        for rule in profile.rules:
            action = effective_action(rule, enabled)
            if "x" in rule.tag:
                mask, value = _mask(rule.tag)
                self._masked.append((mask, value, action))
            else:
                self._exact[int(rule.tag, 16)] = action
        # Set by the engine: the check of what an option's K keeps.
        self.check_kept: Callable[[Dataset, int, str, WalkState], None] | None = None

    def action_for(self, tag: int) -> str | None:
        action = self._exact.get(tag)
        if action is not None:
            return action
        for mask, value, masked_action in self._masked:
            if tag & mask == value:
                return masked_action
        return None

    def __call__(self, ds: Dataset, t: int, state: WalkState) -> bool:
        if 0x5000 <= t >> 16 <= 0x60FF and t >> 16 & 0xFF00 in (0x5000, 0x6000):
            del ds[t]  # curves and overlays: whole repeating groups go
            return True
        action = self.action_for(t)
        if action is None:
            return False
        self.apply(ds, t, action, state)
        return True

    def apply(self, ds: Dataset, t: int, action: str, state: WalkState) -> None:
        if t in (_PATIENT_ID, _PATIENT_NAME, _ACCESSION_NUMBER) and action != "X":
            self._identity(ds, t, state)
            return
        if action == "X":
            del ds[t]
            return
        vr = element_vr(ds, t)
        if action == "K":
            if vr == "SQ":
                state.items(ds, t)
            elif self.check_kept is not None:
                self.check_kept(ds, t, vr, state)  # kept by an option, still checked
            return
        if action == "C":
            self.clean(ds, t, vr, state)
            return
        if action == "Z":
            _set(ds, t, vr, [] if vr == "SQ" else None)
        elif action == "U":
            self.replace_uids(ds, t, vr)
        elif action == "D":
            self._dummy(ds, t, vr, state)
        else:  # the table only holds the actions above once resolved
            raise StageError("deid_failed", f"unknown action {action!r} for {Tag(t)}")

    def _identity(self, ds: Dataset, t: int, state: WalkState) -> None:
        vr = element_vr(ds, t)
        patient = state.originals.get(_PATIENT_ID, "")
        if t == _PATIENT_ID:
            _set(ds, t, vr, self.pseudonyms.patient_id(patient) if patient else None)
        elif t == _PATIENT_NAME:
            # Always from the original ID (read before it was replaced), never copied.
            named = self.config.patient_name == "pseudonym" and patient
            _set(ds, t, "PN", self.pseudonyms.patient_id(patient) if named else None)
        else:
            value = state.originals.get(_ACCESSION_NUMBER, "")
            _set(ds, t, "SH", self.pseudonyms.accession(value) if value else None)

    def _dummy(self, ds: Dataset, t: int, vr: str, state: WalkState) -> None:
        if vr == "SQ":
            # A type 1 sequence must keep its items: they are de-identified by the same
            # table (names go, UIDs and dates are replaced) rather than dropped.
            state.items(ds, t)
        elif vr == "UI":
            self.replace_uids(ds, t, vr)
        elif vr in ("DA", "DT") and self.config.retain_long_modified_dates:
            self.shift_dates(ds, t, vr, state)
        elif t == ENCAPSULATED_DOCUMENT:
            mime = _text(ds, 0x00420012).lower()  # MIMETypeOfEncapsulatedDocument
            document = _MINIMAL_DOCUMENTS.get(mime, _MINIMAL_DOCUMENTS["text/plain"])
            _set(ds, t, "OB", document)
            if _has(ds, 0x00420015):  # EncapsulatedDocumentLength: the length it now has
                _set(ds, 0x00420015, "UL", len(document))
        elif vr in _BYTES_VRS:
            _set(ds, t, vr, b"\x00\x00")  # a value, not an empty one (type 1 stays valid)
        else:
            _set(ds, t, vr, DUMMY.get(vr, ""))

    def replace_uids(self, ds: Dataset, t: int, vr: str) -> None:
        values = _values(ds, t)
        if values:
            new = [v if _is_standard_uid(v) else self.pseudonyms.uid(v) for v in values]
            _set(ds, t, vr, new if len(new) > 1 else new[0])

    def shift_dates(self, ds: Dataset, t: int, vr: str, state: WalkState) -> None:
        values = _values(ds, t, state.encodings)
        if not values:
            return
        shifted = [shift_date(v, state.date_shift, vr) for v in values]
        if any(s is None for s in shifted):
            # an invalid date cannot be shifted: never kept
            state.drop(ds, t, vr, keyword(t))
            return
        _set(ds, t, vr, shifted if len(shifted) > 1 else shifted[0])

    def clean(self, ds: Dataset, t: int, vr: str, state: WalkState) -> None:
        if vr == "SQ":
            state.items(ds, t)
        elif vr in ("DA", "DT"):
            if self.config.retain_long_modified_dates:
                self.shift_dates(ds, t, vr, state)
            elif not self.config.retain_long_full_dates:
                del ds[t]
        elif vr == "UI":
            self.replace_uids(ds, t, vr)
        elif vr in _TEXT_VRS:
            values = [
                clean_text(v, state.tokens, state.clean_scan)
                for v in _values(ds, t, state.encodings)
            ]
            values = [v for v in values if v]
            if not values:  # nothing safe is left: removed
                state.drop(ds, t, vr, keyword(t))
                return
            _set(ds, t, vr, values if len(values) > 1 else values[0])
        elif vr == "PN" or vr in _BYTES_VRS:
            _set(ds, t, vr, None)  # names and opaque bytes cannot be cleaned
        # Codes, numbers and times carry no identity: kept.


def element_vr(ds: Dataset, t: int) -> str:
    """The element's VR as the engine treats it: the dictionary's for public tags it knows
    (the file's explicit VR is not trusted: see ``checks.DictionaryVR``), else the file's;
    an undecided "OB or OW" (or "US or SS or OW") is read as its widest, the last."""
    vr = _element(ds, t).VR
    if not vr or vr == "UN":
        vr = dictionary_vr(t) or "UN"
    return vr.rsplit(" or ", 1)[-1] if " or " in vr else vr


@functools.cache
def dictionary_vr(t: int) -> str | None:
    """The data dictionary's VR for a tag (None when the dictionary does not know it)."""
    try:
        return dictionary_VR(t)
    except KeyError:
        return None


@functools.cache
def keyword(tag: int) -> str:
    """The keyword for a manifest counter; tags nobody names are counted together."""
    return keyword_for_tag(tag) or "unknown_public_tag"
