"""Burned-in text redaction: find text with OCR, blank it, check that none remains."""

from __future__ import annotations

import contextlib
import hashlib
import re
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from transforms.deadletter import StageError
from transforms.deid.config import PixelPolicy
from transforms.deid.ocr import Box, Ocr, detector_scale, frame_8bit, frame_window, load_ocr
from transforms.deid.pixels import blank_value, store_frames

# identifying_text keeps a region only when it was read with at least this confidence
# and nothing in it looks like an identifier: text the recognizer is unsure of is blanked.
MIN_CONFIDENCE = 0.8
# Rounds of local verification (blank, detect again around what was blanked) per frame;
# text still found after them dead-letters the instance.
ROUNDS = 3
# A region found again after redaction is allowed only where identifying_text kept text
# on purpose: at least this fraction of it must lie inside a kept region.
KEPT_OVERLAP = 0.5
# Verification looks again around each blanked region, this many line heights on each
# side (at least MIN_CONTEXT px): a glyph left at a line's end or a line hidden by its
# neighbour lies there.
CONTEXT = 2.0
MIN_CONTEXT = 16
# The whole-frame check after verification sees the frame at this fraction of the
# detection scale (a quarter of the pixels): it looks for text that detection missed
# anywhere, at twice the smallest text size.
CHECK_SCALE = 0.5
# A box the detector finds after redaction, away from any blanked line, is text when the
# recognizer reads it with at least this confidence (rapidocr's own threshold). The
# detector's answer depends on the whole frame: once the text is gone it calls the most
# text-like structure left (a Doppler blob, an ECG trace, a sector's edge) "text", which
# the recognizer reads as nothing or as noise at 0.0-0.2.
TEXT_SCORE = 0.5
# A box next to a blanked line is the rest of that line when it is at most this many
# times the line's height (taller boxes are structure and must be read as text).
LINE_GROWTH = 2.0
_SHRINK = 4  # blanked regions are filled in at 1/_SHRINK of the frame's size

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


def _overlap(a: Box, b: Box) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def _covered(box: Box, kept: list[Box]) -> bool:
    x0, y0, x1, y1 = box
    area = max(1, (x1 - x0) * (y1 - y0))
    return sum(_overlap(box, k) for k in kept) / area >= KEPT_OVERLAP


def _around(box: Box, shape: tuple[int, int]) -> Box:
    """The verification window of a blanked region: CONTEXT line heights on each side."""
    x0, y0, x1, y1 = box
    pad = max(MIN_CONTEXT, int(CONTEXT * (y1 - y0)))
    return max(0, x0 - pad), max(0, y0 - pad), min(shape[1], x1 + pad), min(shape[0], y1 + pad)


def _merged(windows: list[Box]) -> list[Box]:
    """Overlapping windows joined, so that each pixel is looked at once per round."""
    out: list[Box] = []
    for w in sorted(windows):
        for k, o in enumerate(out):
            if w[0] <= o[2] and o[0] <= w[2] and w[1] <= o[3] and o[1] <= w[3]:  # touching
                out[k] = (min(w[0], o[0]), min(w[1], o[1]), max(w[2], o[2]), max(w[3], o[3]))
                break
        else:
            out.append(w)
    return out if len(out) == len(windows) else _merged(out)


def _smooth(view: np.ndarray, mask: np.ndarray, window: Box) -> np.ndarray:
    """A window of the redacted frame as verification sees it: blanked regions filled in
    from their surroundings, so that the steps of a black patch on a bright body are not
    mistaken for glyphs. Text left outside the patches stays sharp and is still found.

    The fill is inpainted at a quarter of the size and enlarged: it only has to be smooth,
    and inpainting costs as much as a detection at full size."""
    x0, y0, x1, y1 = window
    crop = view[y0:y1, x0:x1]
    hole = mask[y0:y1, x0:x1]
    if not hole.any():
        return crop
    import cv2

    h, w = hole.shape
    small = (max(1, w // _SHRINK), max(1, h // _SHRINK))
    tiny = cv2.resize(crop, small, interpolation=cv2.INTER_AREA)
    area = cv2.resize(hole.astype(np.float32), small, interpolation=cv2.INTER_AREA)
    tiny_hole = (area > 0).astype(np.uint8)
    filled = cv2.inpaint(tiny, tiny_hole, 3, cv2.INPAINT_TELEA)
    out = crop.copy()
    out[hole] = cv2.resize(filled, (w, h), interpolation=cv2.INTER_LINEAR)[hole]
    return out


def _decoded(ds: Dataset) -> np.ndarray:
    try:
        return ds.pixel_array.copy()
    except Exception as e:
        message = f"pixels cannot be decoded ({type(e).__name__})"
        raise StageError("redact_failed", message) from None


class _Frame:
    """One frame under redaction: its stored values, its 8-bit view, what was blanked."""

    def __init__(self, ds, stored, fill, policy, tokens, ocr, scale) -> None:
        self.stored, self.fill, self.policy, self.tokens = stored, fill, policy, tokens
        self.ocr, self.scale = ocr, scale
        window = frame_window(ds, stored)
        self.view = frame_8bit(ds, stored, window)
        self.original = self.view.copy()
        self.shown_fill = frame_8bit(ds, np.full((1, 1), fill, stored.dtype), window)[0, 0]
        self.mask = np.zeros(self.view.shape[:2], bool)
        self.blanked: list[tuple[Box, int]] = []  # grown region, height of its line
        self.kept: list[Box] = []

    def select(self, boxes: list[Box]) -> list[Box]:
        """The boxes to blank: all of them, or under identifying_text only those whose
        reading is identifying (the rest are kept, and not counted as text left)."""
        if self.policy.redact != "identifying_text" or not boxes:
            return boxes
        readings = self.ocr.recognize(self.original, boxes)
        pairs = list(zip(boxes, readings, strict=True))
        blank = [b for b, (t, c) in pairs if is_identifying(t, c, self.tokens)]
        self.kept += [b for b in boxes if b not in blank]
        return blank

    def blank(self, boxes: list[Box]) -> None:
        shape = self.view.shape[:2]
        for box in boxes:
            x0, y0, x1, y1 = grown = _grow(box, self.policy.redact_margin, shape)
            self.mask[y0:y1, x0:x1] = True
            self.view[y0:y1, x0:x1] = self.shown_fill
            self.blanked.append((grown, box[3] - box[1]))
        self.stored[self.mask] = self.fill

    def found(self, windows: list[Box], scale: float) -> list[Box]:
        """Text found again in the windows of the redacted frame, in frame pixels."""
        out = []
        for window in windows:
            crop = _smooth(self.view, self.mask, window)
            for b0, c0, b1, c1 in self.ocr.detect(crop, scale):
                box = (b0 + window[0], c0 + window[1], b1 + window[0], c1 + window[1])
                if not _covered(box, self.kept) and self._is_text_in(box, crop, window):
                    out.append(box)
        return out

    def _is_text_in(self, box: Box, crop: np.ndarray, window: Box) -> bool:
        """Whether a box found after redaction is text: the rest of a blanked line (next
        to it and about as tall) or a region that the recognizer reads with confidence."""
        local = (box[0] - window[0], box[1] - window[1], box[2] - window[0], box[3] - window[1])
        for (g0, h0, g1, h1), line in self.blanked:
            near = (g0 - line, h0 - line, g1 + line, h1 + line)
            if _overlap(box, near) and box[3] - box[1] <= LINE_GROWTH * max(line, 1):
                return True
        ((text, score),) = self.ocr.recognize(crop, [local])
        return bool(text.strip()) and score >= TEXT_SCORE


def _redact_frame(frame: _Frame, first: list[Box], where: str) -> int:
    """Blanks the detected boxes, verifies around them until nothing new is found, then
    checks the whole frame once; returns the number of regions blanked.

    Raises:
        StageError: ``burned_in_text_remaining`` when text is still found after ROUNDS.
    """
    h, w = frame.view.shape[:2]
    pending = frame.select(first)
    for whole in (False, True):
        if whole:
            pending = frame.select(frame.found([(0, 0, w, h)], frame.scale * CHECK_SCALE))
        for _ in range(ROUNDS):
            if not pending:
                break
            frame.blank(pending)
            windows = _merged([_around(g, (h, w)) for g, _ in frame.blanked[-len(pending) :]])
            pending = frame.select(frame.found(windows, frame.scale))
        if pending:
            message = f"text still detected after redaction ({where})"
            raise StageError("burned_in_text_remaining", message)
    return len(frame.blanked)


def redact_pixels(ds: Dataset, policy: PixelPolicy, ocr: Ocr | None = None) -> Redaction:
    """Blanks burned-in text on every frame of ``ds`` (in place), then checks it again.

    Each distinct frame is detected once at the scale that its smallest text needs (frames
    identical to one already done get the same regions). Every detected box is blanked;
    then the detector looks again around what was blanked, up to ``ROUNDS`` times (a glyph
    at a line's end or a line hidden by its neighbour shows only once the neighbour is
    gone), and once over the whole redacted frame at half scale. Any text still found
    outside regions kept on purpose dead-letters the instance. Call before the header
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
    scale = detector_scale()
    keys = [hashlib.blake2b(f.tobytes(), digest_size=16).digest() for f in frames]
    done: dict[bytes, tuple[np.ndarray, int]] = {}
    todo = []
    for i, key in enumerate(keys):
        if key not in done:
            done[key] = (np.zeros(0, bool), 0)
            todo.append((i, key))
    for start in range(0, len(todo), ocr.batch):
        chunk = todo[start : start + ocr.batch]
        states = [_Frame(ds, frames[i], fill, policy, tokens, ocr, scale) for i, _ in chunk]
        found = ocr.detect_many([s.view for s in states], scale)
        for (i, key), state, boxes in zip(chunk, states, found, strict=True):
            where = f"frame {i + 1} of {len(frames)}"
            done[key] = (state.mask, _redact_frame(state, boxes, where))
    regions, area = 0, 0
    for i, key in enumerate(keys):
        mask, n = done[key]
        frames[i][mask] = fill
        regions, area = regions + n, area + int(mask.sum())
    if regions:
        store_frames(ds, frames)
    total = int(np.prod(frames.shape[:3]))
    return Redaction(policy.redact, regions, area, area / total if total else 0.0)
