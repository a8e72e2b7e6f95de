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
from transforms.deid.ocr import (
    Box,
    Ocr,
    detector_scale,
    frame_8bit,
    frame_window,
    ink_continued,
    load_ocr,
)
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
CONTEXT = 1.0
MIN_CONTEXT = 16
# The whole-frame check after verification sees the frame at this fraction of the
# detection scale (a quarter of the pixels): it looks for text that detection missed
# anywhere, at twice the smallest text size.
CHECK_SCALE = 0.5
# A box that is taller than a line of text (MAX_LINE px as the detector sees it), or one
# the detector finds after redaction away from any blanked line, is text only when the
# recognizer reads it (or a line-high strip of it) with at least this confidence
# (rapidocr's own threshold). The detector judges each region against the whole frame:
# on a frame without text, or once the text is gone, it calls the most text-like
# structure left "text" (a whole body, a Doppler blob, an ECG trace, a sector's edge),
# which the recognizer reads as nothing or as noise at 0.0-0.2.
TEXT_SCORE = 0.5
MAX_LINE = 64
# A box found again beside a blanked line, on the same row and at most this many times
# as tall, is the rest of that line (a glyph cut at its end) and is blanked unread.
LINE_GROWTH = 1.5
_SHRINK = 4  # blanked regions are filled in at 1/_SHRINK of the frame's size
# A frame whose detector input exceeds TILE_ABOVE pixels (about 1200², where the
# detector's cost per pixel starts to grow) is first detected only in the tiles where
# text may be (text_cells: CELL-px cells with CELL_HITS pixels standing out in edges
# that run many ways, COHERENCE below 1), unless they cover more than TILE_SHARE of it.
TILE_ABOVE = 1200 * 1200
CELL = 32
CELL_HITS = 12
COHERENCE = 0.8
TILE_SHARE = 0.6
BAND = 4
FLOOR = 3.0
# Pixels that differ from their surroundings by fewer 8-bit levels are not text's.
INK_CONTRAST = 8
# The least margin along a line, in line heights of the detected box (taller than the
# ink): a glyph's advance and half another, for the last glyph of small text over texture
# that the detector leaves out (0.7 left one uncovered on a 6 px line in the tests; 1.5,
# until 2026-12-07, blanked no more of the hard set on three seeds than 1.0 did).
ALONG = 1.0
# Size bands of a blanked region's height as detected (frame pixels, before the margin),
# for the manifest's audit counts: small print, ordinary annotation, titles, and larger.
REGION_BANDS = ((1, 10), (11, 20), (21, 48), (49, None))

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
    bands: tuple[str, ...] = ()  # the size bands (region_band) of the regions, each once


def region_band(height: int) -> str:
    """The size band of a blanked region by its height in pixels: ``1-10``, ``11-20``,
    ``21-48`` or ``49+``."""
    for lo, hi in REGION_BANDS:
        if hi is None or height <= hi:
            return f"{lo}-{hi}" if hi is not None else f"{lo}+"
    raise AssertionError("the last band is open")


def warm_ocr(config, threads: int | None = None) -> None:
    """Loads the OCR models once per worker (``DoFn.setup``) when the policy is redact, on
    ``threads`` onnxruntime threads (``load_ocr``).

    A failure here is not fatal: each risky instance then dead-letters ``redact_failed``.
    """
    if config.pixels.policy == "redact":
        with contextlib.suppress(RuntimeError):
            load_ocr(threads)


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
    # Along the line twice the margin, and at least ALONG line heights: the glyphs at a
    # line's ends are the likeliest miss (verification looks again beside each line).
    along = max(2 * pad, int(np.ceil(ALONG * (y1 - y0))))
    return (
        max(0, x0 - along),
        max(0, y0 - pad),
        min(shape[1], x1 + along),
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


def _cells(a: np.ndarray, cell: int) -> np.ndarray:
    """A 2-D array cut into cells: (rows/cell, cols/cell, cell²), zero-padded."""
    h, w = a.shape
    rows, cols = -(-h // cell), -(-w // cell)
    padded = np.zeros((rows * cell, cols * cell), a.dtype)
    padded[:h, :w] = a
    return padded.reshape(rows, cell, cols, cell).transpose(0, 2, 1, 3).reshape(rows, cols, -1)


def text_cells(view: np.ndarray) -> np.ndarray:
    """Where a frame may hold text: a boolean map of its CELL-px cells.

    A cell may hold text when at least CELL_HITS of its pixels stand out of the frame's
    fine structure (the 8-bit view less its blur at 2 px, any channel) by more than
    four times the noise and FLOOR times the frame's (the 75th percentile of its cells':
    an empty background clipped at black looks quieter than it is, and its specks would
    stand out), and those pixels' edges run in many directions, as glyphs' do, not one,
    as an edge of anatomy or of the collimator does. A cell's noise is the lowest of the
    cells around it (text raises its own). Each such cell brings its neighbours."""
    import cv2

    channels = [view[..., 0]]
    if not ((view[..., 0] == view[..., 1]).all() and (view[..., 1] == view[..., 2]).all()):
        channels = [view[..., c] for c in range(3)]
    high, gx, gy = None, None, None
    for c in channels:
        g = c.astype(np.float32)
        hp = np.abs(g - cv2.GaussianBlur(g, (0, 0), 2))
        if high is None or gx is None or gy is None:
            high, gx, gy = hp, cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)
        else:
            stronger = hp > high
            high = np.where(stronger, hp, high)
            gx = np.where(stronger, cv2.Sobel(g, cv2.CV_32F, 1, 0), gx)
            gy = np.where(stronger, cv2.Sobel(g, cv2.CV_32F, 0, 1), gy)
    assert high is not None and gx is not None and gy is not None
    cells = _cells(high, CELL)
    middle = cells.shape[2] // 2
    own = 1.4826 * np.partition(cells, middle, axis=2)[..., middle]
    noise = cv2.erode(own.astype(np.float32), np.ones((5, 5), np.uint8))
    floor = max(INK_CONTRAST, FLOOR * float(np.percentile(own, 75)))
    hits = cells > np.maximum(floor, 4 * noise)[..., np.newaxis]
    bx, by = _cells(gx, CELL) * hits, _cells(gy, CELL) * hits
    xx, yy, xy = (bx * bx).sum(2), (by * by).sum(2), (bx * by).sum(2)
    one_way = np.sqrt((xx - yy) ** 2 + 4 * xy**2) / np.maximum(xx + yy, 1e-6)
    found = (hits.sum(axis=2) >= CELL_HITS) & (one_way < COHERENCE)
    return cv2.dilate(found.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0


def tiles(view: np.ndarray) -> list[Box] | None:
    """The parts of a large frame to detect text in, or None when ``text_cells`` covers
    more than TILE_SHARE of it (the whole frame then costs less than its parts).

    Bands of BAND cell rows, each with a cell above and below (a line across a band's
    edge is seen whole in one of them), and in each band the runs of columns that hold
    such cells (gaps under two cells joined): rectangles that follow where text may be,
    not the bounding box of an outline that runs round the whole body."""
    found = text_cells(view)
    if found.mean() > TILE_SHARE:
        return None
    h, w = view.shape[:2]
    rows = found.shape[0]
    out: list[Box] = []
    for top in range(0, rows, BAND):
        lo, hi = max(0, top - 1), min(rows, top + BAND + 1)
        cols = np.flatnonzero(found[lo:hi].any(axis=0))
        if not len(cols):
            continue
        runs = np.split(cols, np.flatnonzero(np.diff(cols) > 2) + 1)
        for run in runs:
            x0, x1 = int(run[0]) * CELL, min(w, (int(run[-1]) + 1) * CELL)
            out.append((x0, lo * CELL, x1, min(h, hi * CELL)))
    return out


def _first_pass(ocr: Ocr, states: list[_Frame], scale: float) -> list[list[Box]]:
    """The first detection of each frame: whole, or on a CPU for a frame whose detector
    input exceeds TILE_ABOVE pixels, in the tiles where text may be (``tiles``)."""
    shape = states[0].view.shape[:2]
    if ocr.batch > 1 or shape[0] * shape[1] * scale**2 <= TILE_ABOVE:
        return ocr.detect_many([s.view for s in states], scale)
    out = []
    for state in states:
        parts = tiles(state.view)
        if parts is None:
            out.append(ocr.detect(state.view, scale))
            continue
        boxes = []
        for x0, y0, x1, y1 in parts:
            crop = np.ascontiguousarray(state.view[y0:y1, x0:x1])
            boxes += [(a + x0, b + y0, c + x0, d + y0) for a, b, c, d in ocr.detect(crop, scale)]
        out.append(boxes)
    return out


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
        self.blanked: list[tuple[Box, Box]] = []  # each box blanked, and as grown
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
            self.blanked.append((box, grown))
        self.stored[self.mask] = self.fill

    def line_like(self, box: Box) -> bool:
        """Whether a box is at most a line high, as the detector sees it."""
        return (box[3] - box[1]) * self.scale <= MAX_LINE

    def lines_in(self, view: np.ndarray, box: Box) -> list[Box]:
        """The lines in a box: the box itself when it is a line high; in a taller one
        (a block of lines, or structure called text for want of any) the line-high boxes
        that the detector finds when it sees that region alone."""
        if self.line_like(box):
            return [box]
        x0, y0, x1, y1 = box
        found = self.ocr.detect(np.ascontiguousarray(view[y0:y1, x0:x1]), self.scale)
        return [
            (b0 + x0, c0 + y0, b1 + x0, c1 + y0)
            for b0, c0, b1, c1 in found
            if (c1 - c0) * self.scale <= MAX_LINE
        ]

    def reads(self, view: np.ndarray, boxes: list[Box]) -> list[Box]:
        """The boxes that the recognizer reads as text with confidence."""
        readings = self.ocr.recognize(view, boxes)
        return [
            b for b, (t, c) in zip(boxes, readings, strict=True) if t.strip() and c >= TEXT_SCORE
        ]

    def first(self, boxes: list[Box]) -> list[Box]:
        """The first pass's boxes to blank: every line the detector finds (a taller box
        gives the lines found in it alone), each grown along its row where its ink
        continues (``ink_continued``)."""
        lines = [line for b in boxes for line in self.lines_in(self.view, b)]
        return [ink_continued(self.original, line) for line in lines]

    def found(self, windows: list[Box], scale: float) -> list[Box]:
        """Text found again in the windows of the redacted frame, in frame pixels: the
        rest of a blanked line, or a line that the recognizer reads."""
        out = []
        for window in windows:
            crop = _smooth(self.view, self.mask, window)
            unread = []
            for b0, c0, b1, c1 in self.ocr.detect(crop, scale):
                box = (b0 + window[0], c0 + window[1], b1 + window[0], c1 + window[1])
                if _covered(box, self.kept):
                    continue
                if self.continues_line(box):
                    out.append(ink_continued(self.original, box))
                else:
                    unread += self.lines_in(crop, (b0, c0, b1, c1))
            for s0, t0, s1, t1 in self.reads(crop, unread) if unread else []:
                out.append((s0 + window[0], t0 + window[1], s1 + window[0], t1 + window[1]))
        return out

    def continues_line(self, box: Box) -> bool:
        """Whether a box found after redaction is the rest of a blanked line: on its row
        (overlapping it by half its own height or more), beside it (within a line
        height), and at most LINE_GROWTH times as tall."""
        height = box[3] - box[1]
        for (x0, y0, x1, y1), _ in self.blanked:
            line = y1 - y0
            row = min(box[3], y1) - max(box[1], y0)
            beside = box[0] <= x1 + line and x0 - line <= box[2]
            if row >= height / 2 and beside and height <= LINE_GROWTH * max(line, 1):
                return True
        return False


def _redact_frame(frame: _Frame, first: list[Box], where: str) -> list[int]:
    """Blanks the detected boxes, verifies around them until nothing new is found, then
    checks the whole frame once; returns the height of each region blanked.

    Raises:
        StageError: ``burned_in_text_remaining`` when text is still found after ROUNDS.
    """
    h, w = frame.view.shape[:2]
    pending = frame.select(frame.first(first))
    for whole in (False, True):
        if whole:
            pending = frame.select(frame.found([(0, 0, w, h)], frame.scale * CHECK_SCALE))
        for _ in range(ROUNDS):
            if not pending:
                break
            frame.blank(pending)
            windows = _merged([_around(g, (h, w)) for _, g in frame.blanked[-len(pending) :]])
            pending = frame.select(frame.found(windows, frame.scale))
        if pending:
            message = f"text still detected after redaction ({where})"
            raise StageError("burned_in_text_remaining", message)
    return [box[3] - box[1] for box, _ in frame.blanked]


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
    scale = detector_scale(frames.shape[1:3])
    keys = [hashlib.blake2b(f.tobytes(), digest_size=16).digest() for f in frames]
    done: dict[bytes, tuple[np.ndarray, list[int]]] = {}
    todo = []
    for i, key in enumerate(keys):
        if key not in done:
            done[key] = (np.zeros(0, bool), [])
            todo.append((i, key))
    for start in range(0, len(todo), ocr.batch):
        chunk = todo[start : start + ocr.batch]
        states = [_Frame(ds, frames[i], fill, policy, tokens, ocr, scale) for i, _ in chunk]
        found = _first_pass(ocr, states, scale)
        for (i, key), state, boxes in zip(chunk, states, found, strict=True):
            where = f"frame {i + 1} of {len(frames)}"
            done[key] = (state.mask, _redact_frame(state, boxes, where))
    regions, area, bands = 0, 0, set[str]()
    for i, key in enumerate(keys):
        mask, heights = done[key]
        frames[i][mask] = fill
        regions, area = regions + len(heights), area + int(mask.sum())
        bands.update(region_band(h) for h in heights)
    if regions:
        store_frames(ds, frames)
    total = int(np.prod(frames.shape[:3]))
    fraction = area / total if total else 0.0
    return Redaction(policy.redact, regions, area, fraction, tuple(sorted(bands)))
