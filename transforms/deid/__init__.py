"""De-identification: DICOM PS3.15 Annex E (Table E.1-1) with its options and keyed pseudonyms.

The table is data (``deid_profile.json``, generated from maintained packages by
``scripts/gen_deid_profile.py``), never typed here. The package is split by concern:

- ``profile``: the table rows and the action in force under the enabled options;
- ``config``: the switchable parts (options, pixel policy, safe private elements);
- ``pseudonyms``: keyed HMAC-SHA256 pseudonyms and per-patient date shifts;
- ``values``: element values as text in the right character set, the patient's key;
- ``engine``: the walk that offers every element to the steps below, in order;
- ``walk``: what the steps share while a dataset is walked, and the step interface;
- ``overrides``: the site's per-tag rules (Annex E letters by keyword or tag);
- ``table``: the Annex E step (Table E.1-1 under the enabled options);
- ``keeplist``: the keep-list step (what the table does not name);
- ``checks``: dictionary VRs, local codes, and the content check of every kept value;
- ``content``: the vocabularies and the detector of identifying content;
- ``identifiers``: the patient's own identifiers, found in every spelling;
- ``streams``: the pixel-stream step (JPEG segments, trailing bytes, high bits, ICC);
- ``pixels``: burned-in text risk and pixel masking;
- ``ocr``: the offline OCR models (PP-OCR via rapidocr-onnxruntime), loaded once a worker;
- ``redact``: burned-in text found by OCR, blanked and checked again;
- ``objects``: a whole instance in, a de-identified result and linkage row out;
- ``beam``: the thin Beam shell (``Deidentify``/``DeidentifyFn``).

Pseudonyms are HMAC-SHA256 under the secret key, so the same input gives the same UIDs,
patient IDs, accession numbers and per-patient date shift in every run and on every
worker, and nobody without the key can recompute them.
"""

from transforms.deid.beam import (
    LINKAGE,
    Deidentified,
    Deidentify,
    DeidentifyFn,
    deid_header,
    ocr_threads,
)
from transforms.deid.checks import ContentStep, DictionaryVR, LocalCodes
from transforms.deid.config import DeidConfig, Override, PixelPolicy, SafePrivate
from transforms.deid.content import VOCABULARY_PATH, ContentCheck, Verdict
from transforms.deid.engine import IMPLEMENTATION_CLASS_UID, Deidentifier, PrivateElements
from transforms.deid.identifiers import PatientIdentifiers
from transforms.deid.keeplist import KEEPLIST_PATH, KeepList, KeepListStep
from transforms.deid.objects import (
    DeidResult,
    count_keys,
    deidentify_dataset,
    deidentify_object,
)
from transforms.deid.ocr import load_ocr
from transforms.deid.overrides import SiteOverrides
from transforms.deid.pixels import burned_in_risk, mask_pixels
from transforms.deid.profile import CID_7050, PROFILE_PATH, Profile, Rule, effective_action
from transforms.deid.pseudonyms import UID_ROOT, Pseudonymizer, shift_date
from transforms.deid.redact import Redaction, redact_pixels, warm_ocr
from transforms.deid.streams import PixelStreams
from transforms.deid.table import AnnexETable
from transforms.deid.values import clean_text, patient_key
from transforms.deid.walk import Step, WalkState

__all__ = [
    "CID_7050",
    "IMPLEMENTATION_CLASS_UID",
    "KEEPLIST_PATH",
    "LINKAGE",
    "PROFILE_PATH",
    "UID_ROOT",
    "VOCABULARY_PATH",
    "AnnexETable",
    "ContentCheck",
    "ContentStep",
    "DeidConfig",
    "DeidResult",
    "Deidentified",
    "Deidentifier",
    "Deidentify",
    "DeidentifyFn",
    "DictionaryVR",
    "KeepList",
    "KeepListStep",
    "LocalCodes",
    "Override",
    "PatientIdentifiers",
    "PixelPolicy",
    "PixelStreams",
    "PrivateElements",
    "Profile",
    "Pseudonymizer",
    "Redaction",
    "Rule",
    "SafePrivate",
    "SiteOverrides",
    "Step",
    "Verdict",
    "WalkState",
    "burned_in_risk",
    "clean_text",
    "count_keys",
    "deid_header",
    "deidentify_dataset",
    "deidentify_object",
    "effective_action",
    "load_ocr",
    "mask_pixels",
    "ocr_threads",
    "patient_key",
    "redact_pixels",
    "shift_date",
    "warm_ocr",
]
