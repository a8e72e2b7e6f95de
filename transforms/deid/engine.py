"""The de-identification engine: one walk over a dataset, at any depth, that offers each
element to a list of steps with public interfaces, then rebuilds the pixel stream and
marks the result.

Steps, in order (the first that handles an element decides):

1. ``overrides.SiteOverrides``: the site's per-tag keep/remove/replace rules;
2. ``PrivateElements``: private elements go unless retain safe private keeps them;
3. ``checks.DictionaryVR``: a public tag is read with its dictionary VR, never the file's;
4. ``table.AnnexETable``: Table E.1-1 under the enabled options;
5. ``checks.LocalCodes``: codes of non-standard schemes become keyed pseudonyms;
6. ``keeplist.KeepListStep``: what the table does not name, kept only when listed.

Whatever a step keeps passes ``checks.ContentStep`` first; after the walk,
``streams.PixelStreams`` rebuilds Pixel Data and byte streams.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID

from transforms.deadletter import StageError
from transforms.deid.checks import ContentStep, DictionaryVR, LocalCodes
from transforms.deid.config import DeidConfig
from transforms.deid.content import ContentCheck
from transforms.deid.identifiers import PatientIdentifiers, name_parts
from transforms.deid.keeplist import KeepList, KeepListStep
from transforms.deid.overrides import SiteOverrides
from transforms.deid.profile import CID_7050, Profile
from transforms.deid.pseudonyms import Pseudonymizer
from transforms.deid.streams import PixelStreams
from transforms.deid.table import AnnexETable, element_vr
from transforms.deid.values import (
    _ACCESSION_NUMBER,
    _PATIENT_ID,
    _PATIENT_NAME,
    _element,
    _encodings,
    _has,
    _set,
    _text,
    _values,
    patient_key,
)
from transforms.deid.walk import Step, WalkState

IMPLEMENTATION_CLASS_UID = "2.25.186034580618238893215227373463434178557"  # dicomflow's own
IMPLEMENTATION_VERSION = "DICOMFLOW_0_1"
_CHARSET = 0x00080005


class PrivateElements:
    """Private elements (odd groups) go, unless retain safe private keeps a listed,
    explicitly typed one (then its content is checked like any kept value)."""

    def __init__(self, config: DeidConfig, check: ContentStep):
        self.keep_safe = config.retain_safe_private
        self.safe = {(s.creator, s.element) for s in config.safe_private}
        self.check = check

    def __call__(self, ds: Dataset, t: int, state: WalkState) -> bool:
        if not t >> 16 & 1:
            return False
        element = t & 0xFFFF
        if 0x10 <= element <= 0xFF:  # a private creator: decided after its elements
            return True
        if element < 0x1000:  # (gggg,0001-000F) and (gggg,0100-0FFF): not valid private tags
            del ds[t]
            return True
        if self.keep_safe:
            creator_tag = (t >> 16 << 16) | element >> 8
            creator = ds.get(creator_tag)
            creator_value = str(creator.value).strip() if creator is not None else ""
            raw_vr = _element(ds, t).VR
            if (creator_value, element & 0xFF) in self.safe and raw_vr not in (None, "UN"):
                # Kept only when explicitly typed: an implicit or UN private element could
                # be a sequence that nobody can walk.
                state.kept_creators.add(creator_tag)
                if raw_vr == "SQ":
                    state.items(ds, t)
                else:
                    self.check(ds, t, raw_vr, state)
                return True
        del ds[t]
        return True


class Deidentifier:
    """Applies the profile, as configured, under one key. Build once per worker: the table,
    the keep-list, the vocabularies and detectors are built here, not per value."""

    def __init__(self, profile: Profile, config: DeidConfig, key: bytes):
        self.profile = profile
        self.config = config
        self.pseudonyms = Pseudonymizer(key, config.date_shift_days)
        self.keep = KeepList.load()
        self.net = config.safety_net == "allowlist"
        self.cleaning = config.clean_descriptors or config.clean_structured_content
        self.table = AnnexETable(profile, config, self.pseudonyms)
        self.overrides = SiteOverrides(config.overrides, self.table)
        self.content = ContentStep(ContentCheck.load(), self.keep, self.overrides.trusted)
        self.overrides.check = self.content
        if self.net:
            self.table.check_kept = self.content.own_only
        self.steps: list[Step] = [
            *([self.overrides] if config.overrides else []),
            PrivateElements(config, self.content),
            *([DictionaryVR()] if self.net else []),
            self.table,
            *([LocalCodes(self.pseudonyms)] if self.net else []),
            KeepListStep(self.keep, self.table, config, self.content),
        ]
        self.streams = PixelStreams()

    def action_for(self, tag: int) -> str | None:
        """Table E.1-1's action for a tag under the enabled options (None: not named)."""
        return self.table.action_for(tag)

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
        """As ``deidentify``; returns what was removed or changed, by counter name:
        ``<keyword>`` (the keep-list), ``content:``, ``patient_identifier:``, ``vr:``,
        ``code:``, ``override:`` and ``pixels:`` prefixed keywords, ``invalid_modality``."""
        state = self._state(ds)
        self._walk(ds, state)
        if self.net:
            self.streams.rebuild(ds, state)
        self._mark(ds, pixels)
        self._file_meta(ds)
        return state.counts

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

    def _state(self, ds: Dataset) -> WalkState:
        encodings = _encodings(ds)
        patient = patient_key(ds, encodings)
        tokens: list[str] = [
            _text(ds, _PATIENT_ID, encodings),
            _text(ds, _ACCESSION_NUMBER, encodings),
        ]
        name = _text(ds, _PATIENT_NAME, encodings)
        if name:
            tokens += [name, name.replace("^", " "), *re.split(r"[\^ ,=]+", name)]
        if _has(ds, 0x00101002):  # OtherPatientIDsSequence
            for item in ds.OtherPatientIDsSequence:
                tokens.append(_text(item, _PATIENT_ID, encodings))
        tokens.append(_text(ds, 0x00100030, encodings))  # PatientBirthDate
        shift = 0
        if self.config.retain_long_modified_dates:
            shift = self.pseudonyms.date_shift(patient)
        own = PatientIdentifiers.of(ds) if self.net or self.cleaning else PatientIdentifiers()
        state = WalkState(
            date_shift=shift,
            tokens=tuple(t for t in tokens if t),
            encodings=encodings,
            own=own,
            types=self.keep.types,
            walk=self._walk,
        )
        if self.cleaning:
            names = self._all_names(ds, encodings)
            state.clean_scan = PatientIdentifiers(
                names=[own_name for own_name in _values(ds, _PATIENT_NAME, encodings)] + names,
                ids=list(state.tokens),
                dates=_values(ds, 0x00100030, encodings),
            )
        return state

    def _all_names(self, ds: Dataset, encodings: tuple[str, ...]) -> list[str]:
        """Every person name anywhere in the dataset (for the cleaning options)."""
        out: list[str] = []
        for tag in list(ds.keys()):
            t = int(tag)
            if t >> 16 & 1:
                continue
            vr = element_vr(ds, t)
            if vr == "PN":
                for name in _values(ds, t, encodings):
                    out += name_parts(name)
            elif vr == "SQ":
                for item in ds[t].value or []:
                    inner = _encodings(item) if _CHARSET in item else encodings
                    out += self._all_names(item, inner)
        return out

    def _walk(self, ds: Dataset, state: WalkState, depth: int = 0) -> None:
        if depth and _has(ds, _CHARSET):  # an item with its own character set is read in it
            state = replace(state, encodings=_encodings(ds))
        patient = (
            patient_key(ds, state.encodings)
            if depth == 0
            else _text(ds, _PATIENT_ID, state.encodings)
        )
        accession = _text(ds, _ACCESSION_NUMBER, state.encodings)
        state = replace(
            state,
            depth=depth,
            originals={_PATIENT_ID: patient, _ACCESSION_NUMBER: accession},
            kept_creators=set(),
        )
        steps = self.steps
        creators: list[int] = []
        for tag, elem in list(ds._dict.items()):  # raw elements: nothing converted here
            t = int(tag)
            if t >> 16 & 1 and 0x10 <= t & 0xFFFF <= 0xFF:
                creators.append(t)
            try:
                if t & 0xFFFF == 0:  # group lengths: retired, and wrong once we change things
                    del ds[tag]
                    continue
                state.file_vr = elem.VR
                for step in steps:
                    if step(ds, t, state):
                        break
            except StageError:
                raise
            except Exception as e:
                raise StageError(
                    "deid_failed", f"cannot de-identify {Tag(t)} ({type(e).__name__})"
                ) from None
        # Private creators without a kept element go too.
        for t in creators:
            if t not in state.kept_creators and _has(ds, t):
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
        _set(meta, 0x00020001, "OB", b"\x00\x01")  # FileMetaInformationVersion
        syntax = old.get("TransferSyntaxUID")
        if syntax:
            _set(meta, 0x00020010, "UI", UID(syntax))  # TransferSyntaxUID
        sop_class = _text(ds, 0x00080016) or str(old.get("MediaStorageSOPClassUID", "") or "")
        if sop_class:
            _set(meta, 0x00020002, "UI", UID(sop_class))  # MediaStorageSOPClassUID
        sop_instance = _text(ds, 0x00080018)
        if sop_instance:
            _set(meta, 0x00020003, "UI", UID(sop_instance))  # MediaStorageSOPInstanceUID
        _set(meta, 0x00020012, "UI", UID(IMPLEMENTATION_CLASS_UID))
        _set(meta, 0x00020013, "SH", IMPLEMENTATION_VERSION)  # ImplementationVersionName
        ds.file_meta = meta
