"""De-identification: DICOM PS3.15 Annex E (Table E.1-1) with its options and keyed pseudonyms.

The table is data (``deid_profile.json``, generated from maintained packages by
``scripts/gen_deid_profile.py``), never typed here. The package is split by concern:

- ``profile``: the table rows and the action in force under the enabled options;
- ``config``: the switchable parts (options, pixel policy, safe private elements);
- ``pseudonyms``: keyed HMAC-SHA256 pseudonyms and per-patient date shifts;
- ``values``: element values as text in the right character set, the patient's key;
- ``engine``: the walk that applies the table, and the safety nets behind it;
- ``pixels``: burned-in text risk and pixel masking;
- ``ocr``: the offline OCR models (PP-OCR via rapidocr-onnxruntime), loaded once a worker;
- ``redact``: burned-in text found by OCR, blanked and checked again;
- ``objects``: a whole instance in, a de-identified result and linkage row out;
- ``beam``: the thin Beam shell (``Deidentify``/``DeidentifyFn``).

Pseudonyms are HMAC-SHA256 under the secret key, so the same input gives the same UIDs,
patient IDs, accession numbers and per-patient date shift in every run and on every
worker, and nobody without the key can recompute them.
"""

from transforms.deid.beam import LINKAGE, Deidentified, Deidentify, DeidentifyFn
from transforms.deid.config import DeidConfig, PixelPolicy, SafePrivate
from transforms.deid.engine import IMPLEMENTATION_CLASS_UID, Deidentifier
from transforms.deid.net import KEEPLIST_PATH, KeepList
from transforms.deid.objects import (
    DeidResult,
    count_keys,
    deidentify_dataset,
    deidentify_object,
)
from transforms.deid.ocr import load_ocr
from transforms.deid.pixels import burned_in_risk, mask_pixels
from transforms.deid.profile import CID_7050, PROFILE_PATH, Profile, Rule, effective_action
from transforms.deid.pseudonyms import UID_ROOT, Pseudonymizer, shift_date
from transforms.deid.redact import Redaction, redact_pixels, warm_ocr
from transforms.deid.values import clean_text, patient_key

__all__ = [
    "CID_7050",
    "IMPLEMENTATION_CLASS_UID",
    "KEEPLIST_PATH",
    "LINKAGE",
    "PROFILE_PATH",
    "UID_ROOT",
    "DeidConfig",
    "DeidResult",
    "Deidentified",
    "Deidentifier",
    "Deidentify",
    "DeidentifyFn",
    "KeepList",
    "PixelPolicy",
    "Profile",
    "Pseudonymizer",
    "Redaction",
    "Rule",
    "SafePrivate",
    "burned_in_risk",
    "clean_text",
    "count_keys",
    "deidentify_dataset",
    "deidentify_object",
    "effective_action",
    "load_ocr",
    "mask_pixels",
    "patient_key",
    "redact_pixels",
    "shift_date",
    "warm_ocr",
]
