"""The table walk: applies the profile, as configured, to a Dataset in place."""

import re
from collections import Counter
from dataclasses import dataclass, field, replace

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID

from transforms.deadletter import (
    StageError,
)
from transforms.deid.allowlist import (
    _CHARSET,
    _DUMMY,
    _ENCAPSULATED_DOCUMENT,
    AllowlistNet,
)
from transforms.deid.config import DeidConfig
from transforms.deid.net import (
    NET_TEXT_VRS,
    IdentifierScan,
    KeepList,
    code_meanings,
)
from transforms.deid.profile import CID_7050, Profile, _mask, effective_action
from transforms.deid.pseudonyms import Pseudonymizer, shift_date
from transforms.deid.values import (
    _ACCESSION_NUMBER,
    _BYTES_VRS,
    _PATIENT_ID,
    _PATIENT_NAME,
    _TEXT_VRS,
    _encodings,
    _is_standard_uid,
    _set,
    _text,
    _values,
    clean_text,
    patient_key,
)

IMPLEMENTATION_CLASS_UID = "2.25.186034580618238893215227373463434178557"  # dicomflow's own
IMPLEMENTATION_VERSION = "DICOMFLOW_0_1"

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


@dataclass
class _Context:
    """Per-dataset facts gathered before anything is changed."""

    date_shift: int
    tokens: tuple[str, ...]
    encodings: tuple[str, ...]  # SpecificCharacterSet, inherited by nested items
    depth: int = 0  # 0 for the dataset, n inside n sequences
    # The identifiers of the dataset or item being walked, read before anything changed.
    originals: dict[int, str] = field(default_factory=dict)
    # What the allowlist net removed, by keyword (shared by every item of the dataset).
    counts: Counter = field(default_factory=Counter)
    scan: IdentifierScan | None = None  # the patient's own identifiers
    clean_scan: IdentifierScan | None = None  # and every person name (cleaning options)


class Deidentifier(AllowlistNet):
    """Applies the profile, as configured, under one key. Build once per worker."""

    def __init__(self, profile: Profile, config: DeidConfig, key: bytes):
        self.profile = profile
        self.config = config
        self.pseudonyms = Pseudonymizer(key, config.date_shift_days)
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
        self._safe_private = {(s.creator, s.element) for s in config.safe_private}
        self._net = config.safety_net == "allowlist"
        self._keep = KeepList.load()
        self._meanings = code_meanings() if self._net else {}
        self._cleaning = config.clean_descriptors or config.clean_structured_content

    def action_for(self, tag: int) -> str | None:
        action = self._exact.get(tag)
        if action is not None:
            return action
        for mask, value, masked_action in self._masked:
            if tag & mask == value:
                return masked_action
        return None

    # -- entry point ----------------------------------------------------------------------

    def deidentify(self, ds: Dataset, pixels: str = "clean") -> Dataset:
        """De-identifies ``ds`` in place and returns it.

        Raises:
            StageError: ``deid_failed`` naming the attribute (by tag) that could not be
                processed; the message carries no value.
        """
        self.deidentify_counted(ds, pixels)
        return ds

    def deidentify_counted(self, ds: Dataset, pixels: str = "clean") -> Counter:
        """As ``deidentify``; returns what the allowlist net removed, by keyword (and
        ``invalid_modality`` when Modality was replaced by OT)."""
        ctx = self._context(ds)
        self._walk(ds, ctx)
        self._mark(ds, pixels)
        self._file_meta(ds)
        return ctx.counts

    def linkage(self, ds: Dataset) -> dict[str, str]:
        """Original → pseudonym for patient, study and accession (call before deidentify)."""
        encodings = _encodings(ds)
        patient = patient_key(ds, encodings)
        study = _text(ds, 0x0020000D, encodings)
        accession = _text(ds, _ACCESSION_NUMBER, encodings)
        return {
            "patient_id": patient,
            "patient_pseudonym": self.pseudonyms.patient_id(patient),
            "study_instance_uid": study,
            "study_pseudonym": study
            if self.config.retain_uids or not study
            else self.pseudonyms.uid(study),
            "accession_number": accession,
            "accession_pseudonym": self.pseudonyms.accession(accession) if accession else "",
        }

    # -- the walk -------------------------------------------------------------------------

    def _context(self, ds: Dataset) -> _Context:
        encodings = _encodings(ds)
        patient = patient_key(ds, encodings)
        tokens: list[str] = [
            _text(ds, _PATIENT_ID, encodings),
            _text(ds, _ACCESSION_NUMBER, encodings),
        ]
        name = _text(ds, _PATIENT_NAME, encodings)
        if name:
            tokens += [name, name.replace("^", " "), *re.split(r"[\^ ,=]+", name)]
        if "OtherPatientIDsSequence" in ds:
            for item in ds.OtherPatientIDsSequence:
                tokens.append(_text(item, _PATIENT_ID, encodings))
        tokens.append(_text(ds, 0x00100030, encodings))  # PatientBirthDate
        shift = 0
        if self.config.retain_long_modified_dates:
            shift = self.pseudonyms.date_shift(patient)
        ctx = _Context(shift, tuple(t for t in tokens if t), encodings)
        if self._net or self._cleaning:
            own = self._own_identifiers(ds, encodings)
            ctx.scan = IdentifierScan(own)
            if self._cleaning:
                ctx.clean_scan = IdentifierScan(own + self._all_names(ds, encodings))
        return ctx

    def _walk(self, ds: Dataset, ctx: _Context, depth: int = 0) -> None:
        private_creators_kept: set[int] = set()
        if depth and _CHARSET in ds:  # an item with its own character set is read in it
            ctx = replace(ctx, encodings=_encodings(ds))
        patient = (
            patient_key(ds, ctx.encodings) if depth == 0 else _text(ds, _PATIENT_ID, ctx.encodings)
        )
        accession = _text(ds, _ACCESSION_NUMBER, ctx.encodings)
        ctx = replace(
            ctx,
            depth=depth,
            originals={_PATIENT_ID: patient, _ACCESSION_NUMBER: accession},
        )
        for tag in list(ds.keys()):
            t = int(tag)
            try:
                if t & 0xFFFF == 0:  # group lengths: retired, and wrong once we change things
                    del ds[tag]
                elif t >> 16 & 1:
                    # The dataset's own key object: pydicom deletes it without building a
                    # Tag or comparing in Python (most of a walk over many private tags).
                    self._private(ds, tag, ctx, private_creators_kept)
                elif 0x5000 <= t >> 16 <= 0x60FF and t >> 16 & 0xFF00 in (0x5000, 0x6000):
                    del ds[tag]  # curves and overlays: whole repeating groups go
                else:
                    action = self.action_for(t)
                    if action is None:
                        self._unlisted(ds, t, ctx)
                    else:
                        self._apply(ds, t, action, ctx)
            except StageError:
                raise
            except Exception as e:
                raise StageError(
                    "deid_failed", f"cannot de-identify {Tag(t)} ({type(e).__name__})"
                ) from None
        # Private creators without a kept element go too.
        for tag in list(ds.keys()):
            t = int(tag)
            if t >> 16 & 1 and 0x10 <= t & 0xFFFF <= 0xFF and t not in private_creators_kept:
                del ds[tag]

    def _vr(self, ds: Dataset, t: int) -> str:
        """The element's VR; for implicit or UN encoding, the dictionary's (pydicom converts
        UN values of known tags to that VR when they are read)."""
        vr = ds.get_item(t).VR
        if not vr or vr == "UN":
            try:
                vr = dictionary_VR(t)
            except KeyError:
                return "UN"
        # An undecided "OB or OW" (or "US or SS or OW"): its widest reading, the last.
        return vr.rsplit(" or ", 1)[-1] if " or " in vr else vr

    def _apply(self, ds: Dataset, t: int, action: str, ctx: _Context) -> None:
        if t in (_PATIENT_ID, _PATIENT_NAME, _ACCESSION_NUMBER) and action != "X":
            self._identity(ds, t, ctx)
            return
        if action == "X":
            del ds[t]
            return
        vr = self._vr(ds, t)
        if action == "K":
            if vr == "SQ":
                self._items(ds, t, ctx)
            elif self._net and (vr in NET_TEXT_VRS or vr == "CS"):
                self._own_identifiers_in(ds, t, vr, ctx)  # kept by an option, still searched
            return
        if action == "C":
            self._clean(ds, t, vr, ctx)
            return
        if action == "Z":
            _set(ds, t, vr, [] if vr == "SQ" else None)
        elif action == "U":
            self._uids(ds, t, vr)
        elif action == "D":
            self._dummy(ds, t, vr, ctx)
        else:  # the table only holds the actions above once resolved
            raise StageError("deid_failed", f"unknown action {action!r} for {Tag(t)}")

    def _identity(self, ds: Dataset, t: int, ctx: _Context) -> None:
        vr = self._vr(ds, t)
        patient = ctx.originals.get(_PATIENT_ID, "")
        if t == _PATIENT_ID:
            _set(ds, t, vr, self.pseudonyms.patient_id(patient) if patient else None)
        elif t == _PATIENT_NAME:
            # Always from the original ID (read before it was replaced), never copied.
            named = self.config.patient_name == "pseudonym" and patient
            _set(ds, t, vr, self.pseudonyms.patient_id(patient) if named else None)
        else:
            value = ctx.originals.get(_ACCESSION_NUMBER, "")
            _set(ds, t, vr, self.pseudonyms.accession(value) if value else None)

    def _dummy(self, ds: Dataset, t: int, vr: str, ctx: _Context) -> None:
        if vr == "SQ":
            # A type 1 sequence must keep its items: they are de-identified by the same
            # table (names go, UIDs and dates are replaced) rather than dropped.
            self._items(ds, t, ctx)
        elif vr == "UI":
            self._uids(ds, t, vr)
        elif vr in ("DA", "DT") and self.config.retain_long_modified_dates:
            self._dates(ds, t, vr, ctx)
        elif t == _ENCAPSULATED_DOCUMENT:
            mime = _text(ds, 0x00420012).lower()  # MIMETypeOfEncapsulatedDocument
            document = _MINIMAL_DOCUMENTS.get(mime, _MINIMAL_DOCUMENTS["text/plain"])
            _set(ds, t, "OB", document)
            if 0x00420015 in ds:  # EncapsulatedDocumentLength: the length it now has
                _set(ds, 0x00420015, "UL", len(document))
        elif vr in _BYTES_VRS:
            _set(ds, t, vr, b"\x00\x00")  # a value, not an empty one (type 1 stays valid)
        else:
            _set(ds, t, vr, _DUMMY.get(vr, ""))

    def _uids(self, ds: Dataset, t: int, vr: str) -> None:
        values = _values(ds, t)
        if values:
            new = [v if _is_standard_uid(v) else self.pseudonyms.uid(v) for v in values]
            _set(ds, t, vr, new if len(new) > 1 else new[0])

    def _dates(self, ds: Dataset, t: int, vr: str, ctx: _Context) -> None:
        values = _values(ds, t, ctx.encodings)
        if not values:
            return
        shifted = [shift_date(v, ctx.date_shift, vr) for v in values]
        if any(s is None for s in shifted):
            self._drop(ds, t, ctx, vr)  # an invalid date cannot be shifted: never kept
            return
        _set(ds, t, vr, shifted if len(shifted) > 1 else shifted[0])

    def _clean(self, ds: Dataset, t: int, vr: str, ctx: _Context) -> None:
        if vr == "SQ":
            self._items(ds, t, ctx)
        elif vr in ("DA", "DT"):
            if self.config.retain_long_modified_dates:
                self._dates(ds, t, vr, ctx)
            elif not self.config.retain_long_full_dates:
                del ds[t]
        elif vr == "UI":
            self._uids(ds, t, vr)
        elif vr in _TEXT_VRS:
            values = [
                clean_text(v, ctx.tokens, ctx.clean_scan) for v in _values(ds, t, ctx.encodings)
            ]
            values = [v for v in values if v]
            if not values:  # nothing safe is left: removed
                self._drop(ds, t, ctx, vr)
                return
            _set(ds, t, vr, values if len(values) > 1 else values[0])
        elif vr == "PN" or vr in _BYTES_VRS:
            _set(ds, t, vr, None)  # names and opaque bytes cannot be cleaned
        # Codes, numbers and times carry no identity: kept.

    def _items(self, ds: Dataset, t: int, ctx: _Context) -> None:
        for item in ds[t].value or []:
            self._walk(item, ctx, ctx.depth + 1)

    def _private(self, ds: Dataset, t: int, ctx: _Context, creators_kept: set[int]) -> None:
        element = t & 0xFFFF
        if 0x10 <= element <= 0xFF:  # a private creator: decided after its elements
            return
        if element < 0x1000:  # (gggg,0001-000F) and (gggg,0100-0FFF): not valid private tags
            del ds[t]
            return
        if self.config.retain_safe_private:
            group, block = t >> 16, element >> 8
            creator_tag = (group << 16) | block
            creator = ds.get(creator_tag)
            creator_value = str(creator.value).strip() if creator is not None else ""
            raw_vr = ds.get_item(t).VR
            if (creator_value, element & 0xFF) in self._safe_private and raw_vr not in (None, "UN"):
                # Kept only when explicitly typed: an implicit or UN private element could
                # be a sequence that nobody can walk.
                creators_kept.add(creator_tag)
                if raw_vr == "SQ":
                    self._items(ds, t, ctx)
                return
        del ds[t]

    # -- marks ----------------------------------------------------------------------------

    def _mark(self, ds: Dataset, pixels: str) -> None:
        """``pixels``: "clean" (no burned-in risk), "masked", or "kept" (risky, kept by
        request: then nobody may claim that the identity was removed)."""
        options = [n for n in self.config.enabled_options() if n in CID_7050]
        if pixels in ("masked", "redacted"):  # redacted: burned-in text blanked by OCR
            options.insert(0, "clean_pixel_data")
        codes = []
        for name in ["basic", *options]:
            value, meaning = CID_7050[name]
            item = Dataset()
            _set(item, 0x00080100, "SH", value)  # CodeValue
            _set(item, 0x00080102, "SH", "DCM")  # CodingSchemeDesignator
            _set(item, 0x00080104, "LO", meaning)  # CodeMeaning
            codes.append(item)
        if self.config.retain_long_modified_dates:
            temporal = "MODIFIED"
        elif self.config.retain_long_full_dates:
            temporal = "UNMODIFIED"
        else:
            temporal = "REMOVED"
        _set(ds, 0x00120062, "CS", "NO" if pixels == "kept" else "YES")  # PatientIdentityRemoved
        _set(ds, 0x00120063, "LO", f"dicomflow; {self.profile.standard}"[:64])
        _set(ds, 0x00120064, "SQ", Sequence(codes))  # DeidentificationMethodCodeSequence
        _set(ds, 0x00280303, "CS", temporal)  # LongitudinalTemporalInformationModified

    def _file_meta(self, ds: Dataset) -> None:
        """A new file meta with only what Part 10 needs: nothing else of the source's stays
        (source AE titles, private information), and pydicom copies it cheaply on write."""
        old = getattr(ds, "file_meta", None) or FileMetaDataset()
        meta = FileMetaDataset()
        meta.FileMetaInformationVersion = b"\x00\x01"
        syntax = old.get("TransferSyntaxUID")
        if syntax:
            meta.TransferSyntaxUID = syntax
        sop_class = _text(ds, 0x00080016) or str(old.get("MediaStorageSOPClassUID", "") or "")
        if sop_class:
            meta.MediaStorageSOPClassUID = UID(sop_class)
        sop_instance = _text(ds, 0x00080018)
        if sop_instance:
            meta.MediaStorageSOPInstanceUID = UID(sop_instance)
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION
        ds.file_meta = meta
