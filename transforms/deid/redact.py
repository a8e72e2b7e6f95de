"""Burned-in text redaction: find text with OCR, blank it, check that none remains."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from transforms.deadletter import StageError
from transforms.deid.config import PixelPolicy
from transforms.deid.ocr import Box, Ocr, frame_8bit, frame_window, load_ocr
from transforms.deid.pixels import blank_value, store_frames

# identifying_text keeps a region only when it was read with at least this confidence
# and nothing in it looks like an identifier: text the recognizer is unsure of is blanked.
MIN_CONFIDENCE = 0.8
# Detect-and-blank rounds per frame before the final check.
ROUNDS = 2
# A region found again after redaction is allowed only where identifying_text kept text
# on purpose: at least this fraction of it must lie inside a kept region.
KEPT_OVERLAP = 0.5

_DATE = re.compile(r"\d{1,4}\s*[-/.]\s*\d{1,2}\s*[-/.]\s*\d{1,4}")
_TIME = re.compile(r"\d{1,2}\s*:\s*\d{2}")
_DIGITS = re.compile(r"\d{4,}")  # IDs, accession numbers, phone numbers, compact dates
_MIXED_ID = re.compile(r"\b(?=\w*\d)(?=\w*[A-Z])\w{5,}\b")  # PID000123, MRN12345
_NAME_FORM = re.compile(r"[A-Z]{2,}\s*[\^,]\s*[A-Z]{2,}")  # DOE^JOHN, DOE, JOHN


@dataclass(frozen=True)
class Redaction:
    """What redaction did to one instance: counts only, never the text it found."""

    mode: str
    regions: int  # regions blanked, over all frames
    area: int  # pixels blanked, over all frames
    fraction: float  # area / (rows x columns x frames)


def warm_ocr(config) -> None:
    """Loads the OCR models once per worker (``DoFn.setup``) when the policy is redact.

    A failure here is not fatal: each risky instance then dead-letters ``redact_failed``.
    """
    if config.pixels.policy == "redact":
        with contextlib.suppress(RuntimeError):
            load_ocr()


def _norm(text: str) -> str:
    return re.sub(r"[^0-9A-Z]", "", text.upper())


def identifiers(ds: Dataset) -> frozenset[str]:
    """The patient's own identifiers as normalized tokens (A-Z, 0-9), read before de-id."""
    values: list[str] = []
    for keyword in ("PatientName", "ReferringPhysicianName", "OperatorsName"):
        value = ds.get(keyword, None)
        for name in value if isinstance(value, MultiValue) else [value] if value else []:
            values += re.split(r"[\^ ,]+", str(name))
    for keyword in ("PatientID", "AccessionNumber", "PatientBirthDate", "InstitutionName"):
        values.append(str(ds.get(keyword, "") or ""))
    for item in ds.get("OtherPatientIDsSequence", None) or []:
        values.append(str(item.get("PatientID", "") or ""))
    birth = str(ds.get("PatientBirthDate", "") or "")
    if len(birth) == 8:  # also as scanners print it: 19700131 → 31011970, 01311970
        values += [birth[6:] + birth[4:6] + birth[:4], birth[4:6] + birth[6:] + birth[:4]]
    return frozenset(t for t in (_norm(v) for v in values) if len(t) >= 3)


def is_identifying(text: str, confidence: float, tokens: frozenset[str]) -> bool:
    """Whether a recognized region must be blanked under ``identifying_text``.

    Blanked: text read with low confidence, text that contains one of the patient's
    identifiers, and text shaped like a date, a time, a number of four or more digits,
    an ID mixing letters and digits, or a DICOM-style name (``DOE^JOHN``, ``DOE, JOHN``).
    Kept: the rest, e.g. laterality markers ("L", "R"), "PORTABLE", "SUPINE", "AP".
    """
    if confidence < MIN_CONFIDENCE:
        return True
    upper = text.upper()
    norm = _norm(upper)
    if any(t in norm for t in tokens):
        return True
    patterns = (_DATE, _TIME, _DIGITS, _MIXED_ID, _NAME_FORM)
    return any(p.search(upper) for p in patterns)


def _grow(box: Box, margin: float, shape: tuple[int, int]) -> Box:
    x0, y0, x1, y1 = box
    pad = max(2, int(np.ceil(margin * (y1 - y0))))
    # Twice the margin along the line: a lone glyph at its end is the likeliest miss.
    return (
        max(0, x0 - 2 * pad),
        max(0, y0 - pad),
        min(shape[1], x1 + 2 * pad),
        min(shape[0], y1 + pad),
    )


def _covered(box: Box, kept: list[Box]) -> bool:
    x0, y0, x1, y1 = box
    area = max(1, (x1 - x0) * (y1 - y0))
    inside = 0
    for k0, l0, k1, l1 in kept:
        inside += max(0, min(x1, k1) - max(x0, k0)) * max(0, min(y1, l1) - max(y0, l0))
    return inside / area >= KEPT_OVERLAP


def _smoothed(view: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The redacted frame as the check sees it: blanked regions filled in from their
    surroundings, so that the steps of a black patch on a bright body are not mistaken
    for glyphs. Text left outside the patches stays sharp and is still found."""
    if not mask.any():
        return view
    import cv2

    return cv2.inpaint(view, mask.astype(np.uint8), 3, cv2.INPAINT_TELEA)


def _decoded(ds: Dataset) -> np.ndarray:
    try:
        return ds.pixel_array.copy()
    except Exception as e:
        message = f"pixels cannot be decoded ({type(e).__name__})"
        raise StageError("redact_failed", message) from None


def redact_pixels(ds: Dataset, policy: PixelPolicy, ocr: Ocr | None = None) -> Redaction:
    """Blanks burned-in text on every frame of ``ds`` (in place), then checks it again.

    Each frame gets up to ``ROUNDS`` rounds of detect-and-blank (text next to a blanked
    line can be found only once its neighbour is gone), then a final detection: any text
    left outside regions kept on purpose dead-letters the instance. Call before the header
    is de-identified: ``identifying_text`` matches text against the original identifiers.
    The pixels are stored uncompressed when anything was blanked.

    Raises:
        StageError: ``burned_in_text_remaining`` when the detector still finds text after
            redaction; ``redact_failed`` when the pixels cannot be decoded.
    """
    ocr = ocr or load_ocr()
    arr = _decoded(ds)
    frames = arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[np.newaxis]
    tokens = identifiers(ds) if policy.redact == "identifying_text" else frozenset()
    fill = blank_value(ds, frames.dtype, frames)
    regions, area = 0, 0
    for i in range(len(frames)):
        window = frame_window(ds, frames[i])
        view = frame_8bit(ds, frames[i], window)
        mask = np.zeros(view.shape[:2], bool)
        kept: list[Box] = []
        boxes = [b for b in ocr.detect(view) if not _covered(b, kept)]
        for _ in range(ROUNDS):
            if not boxes:
                break
            if policy.redact == "identifying_text":
                readings = ocr.recognize(view, boxes)
                pairs = zip(boxes, readings, strict=True)
                blank = [b for b, (t, c) in pairs if is_identifying(t, c, tokens)]
                kept += [b for b in boxes if b not in blank]
                boxes = blank
            for box in boxes:
                x0, y0, x1, y1 = _grow(box, policy.redact_margin, view.shape[:2])
                mask[y0:y1, x0:x1] = True
            regions += len(boxes)
            frames[i][mask] = fill
            view = frame_8bit(ds, frames[i], window)
            boxes = [b for b in ocr.detect(_smoothed(view, mask)) if not _covered(b, kept)]
        if boxes:
            message = f"text still detected after redaction (frame {i + 1} of {len(frames)})"
            raise StageError("burned_in_text_remaining", message)
        area += int(mask.sum())
    if regions:
        store_frames(ds, frames)
    total = int(np.prod(frames.shape[:3]))
    return Redaction(policy.redact, regions, area, area / total if total else 0.0)
