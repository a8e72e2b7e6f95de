"""Offline OCR for burned-in text: frames to 8-bit, text boxes found, text read.

The detector and recognizer are PP-OCRv4 models that ``rapidocr-onnxruntime`` ships inside
its wheel and runs on onnxruntime; nothing is fetched at run time. ``load_ocr`` builds
them once per process (a Beam worker's ``DoFn.setup`` calls it; later calls return the
same objects), on the GPU where onnxruntime has a CUDA provider, else on the CPU.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of the frame, end-exclusive

# The detector finds a line when its glyphs are at least DETECTOR_GLYPH px tall in its input
# (measured on DejaVu and PIL bitmap text over noise: 6 px found every line, 4-5 px half
# of them). The smallest text to find, MIN_TEXT_HEIGHT px in the frame, so sets the scale:
# frames are neither enlarged nor shrunk by default, whatever their side; a 7 px line on a
# 2048² radiograph is seen at 7 px, not shrunk to 4.
DETECTOR_GLYPH = 6
MIN_TEXT_HEIGHT = 6
MIN_SIDE = 512
# Text touching an edge is found whole only with background beyond it: frames are padded
# by this many pixels of their own border colour before detection.
PAD = 16
_STRIDE = 32  # the network's input sides must be multiples of this
# Faint text on a flat panel (a screen's uniform box, a sector's black surround): the
# detector misses 6-10 px lines that differ from the panel by 25-50 levels of 255 (12
# rendered 448² screens with such panels: 21 of 44 lines blanked whole, 44 of 44 once the
# detector's view stretched them; 2026-12-07). Pixels within PANEL_NEAR px of a flat
# area (3 x 3 of one value, as drawn panels are and noisy anatomy never is) that holds
# one value have their difference from it stretched: PANEL_GAIN times up to PANEL_KNEE
# levels, more gently beyond, so that the order of values is kept, where nothing within
# that reach differs from the panel by PANEL_FAINT levels or more (strong text is seen
# as it was).
PANEL_NEAR = 5
PANEL_GAIN = 4
PANEL_KNEE = 128
PANEL_FAINT = 64
# A line's box grows along its row where the line's ink colour continues (ink_continued):
# in windows as wide as the box is high, at least INK_HITS pixels of it, and INK_OVER
# times as many as its share of the frame would put there by chance.
INK_HITS = 3
INK_OVER = 8
# The ink: the first of the box's INK_CANDIDATES commonest non-flat colours that is more
# than INK_DENSER times as dense in the box's middle rows as in its outer rows.
INK_CANDIDATES = 4
INK_DENSER = 1
# Frames per detector call where the provider batches (CUDA); one at a time on a CPU,
# where a batch costs the same per frame and only holds more memory.
GPU_BATCH = 8


def providers(available: list[str]) -> list[str]:
    """The onnxruntime providers to run on: CUDA first where the installed onnxruntime
    offers it (onnxruntime-gpu in the GPU worker image), else the CPU alone."""
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options(threads: int):
    """onnxruntime settings for one OCR model on one worker.

    The memory arena stays on (rapidocr turns it off, which doubles the detector's time on
    frames above 1000²: every run allocates its activations anew); threads do not spin
    while idle, so that a worker's idle pool does not take CPU from the other workers."""
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = True
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def detector_scale(
    shape: tuple[int, ...] | None = None, min_text_height: float = MIN_TEXT_HEIGHT
) -> float:
    """How much a frame is resized for the detector: enough that text ``min_text_height``
    px tall reaches the detector's smallest reliable glyph, and, for a frame whose short
    side is under MIN_SIDE, enough to reach it (its boxes are then tighter, and a small
    frame costs little however it is scaled)."""
    scale = max(0.25, DETECTOR_GLYPH / min_text_height)
    if shape is not None:
        scale = max(scale, min(4.0, MIN_SIDE / max(1, min(shape[:2]))))
    return scale


@dataclass
class Ocr:
    """The loaded PP-OCR detector and recognizer, and the provider they run on."""

    detector: Callable[..., Any]  # onnxruntime InferenceSession.run bound to its input
    postprocess: Callable[..., Any]  # DB post-processing: probability map → boxes
    recognizer: Callable[..., Any] | None  # rapidocr TextRecognizer, built on first use
    provider: str
    _rec_config: dict
    _options: Any = None

    @property
    def batch(self) -> int:
        return GPU_BATCH if self.provider == "CUDAExecutionProvider" else 1

    def detect(self, frame: np.ndarray, scale: float | None = None) -> list[Box]:
        """Text boxes in an 8-bit frame (height x width x 3), in the frame's pixels."""
        return self.detect_many([frame], scale)[0]

    def detect_many(self, frames: list[np.ndarray], scale: float | None = None) -> list[list[Box]]:
        """``detect`` for several frames, batched where the provider gains from it (frames
        of one shape go through the network together on a GPU)."""
        scale = detector_scale(frames[0].shape) if scale is None else scale
        inputs = [_network_input(f, scale) for f in frames]
        out: list[list[Box]] = [[] for _ in frames]
        order = sorted(range(len(frames)), key=lambda i: inputs[i][0].shape)
        for start in range(0, len(order), self.batch):
            group = [order[start]]
            for i in order[start + 1 : start + self.batch]:
                if inputs[i][0].shape == inputs[group[0]][0].shape:
                    group.append(i)
            batch = [inputs[i][0] for i in group]
            # one frame goes in as it is: a copy of a 2048² frame's input costs 50 MB
            pred = self.detector(batch[0] if len(batch) == 1 else np.concatenate(batch))[0]
            for k, i in enumerate(group):
                out[i] = _boxes(self.postprocess, pred[k : k + 1], inputs[i][1], frames[i])
            # a frame left out of a mixed-shape group is run on its own
            for i in order[start + 1 : start + self.batch]:
                if i not in group:
                    p = self.detector(inputs[i][0])[0]
                    out[i] = _boxes(self.postprocess, p, inputs[i][1], frames[i])
        return out

    def recognize(self, frame: np.ndarray, boxes: list[Box]) -> list[tuple[str, float]]:
        """The text in each box of an 8-bit frame, with the recognizer's confidence."""
        if not boxes:
            return []
        if self.recognizer is None:
            import onnxruntime
            from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer

            recognizer = TextRecognizer(self._rec_config)
            path = self._rec_config["model_path"]
            use = providers(onnxruntime.get_available_providers())
            recognizer.session.session = onnxruntime.InferenceSession(
                path, self._options, providers=use
            )
            self.recognizer = recognizer
        crops = [np.ascontiguousarray(frame[y0:y1, x0:x1]) for x0, y0, x1, y1 in boxes]
        results, _ = self.recognizer(crops)
        return [(str(text), float(score)) for text, score in results]


def _network_input(frame: np.ndarray, scale: float) -> tuple[np.ndarray, tuple[int, int]]:
    """The padded, resized, normalized frame (1 x 3 x H x W) and the padded frame's shape."""
    import cv2

    frame = panels_stretched(frame)
    border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]])
    colour = [int(v) for v in np.median(border, axis=0)]
    padded = cv2.copyMakeBorder(frame, PAD, PAD, PAD, PAD, cv2.BORDER_CONSTANT, value=colour)
    h, w = padded.shape[:2]
    rh = max(_STRIDE, round(h * scale / _STRIDE) * _STRIDE)
    rw = max(_STRIDE, round(w * scale / _STRIDE) * _STRIDE)
    resized = padded if (rh, rw) == (h, w) else cv2.resize(padded, (rw, rh))
    x = resized.astype(np.float32) * np.float32(2 / 255) - np.float32(1)
    return x.transpose(2, 0, 1)[np.newaxis], (h, w)


def _panel_curve() -> np.ndarray:
    d = np.arange(256, dtype=np.float64)
    knee = PANEL_KNEE / PANEL_GAIN
    curve = np.where(
        d < knee, d * PANEL_GAIN, PANEL_KNEE + (d - knee) * (255 - PANEL_KNEE) / (255 - knee)
    )
    return np.clip(np.round(curve), 0, 255).astype(np.uint8)


_PANEL_CURVE = _panel_curve()


def panels_stretched(frame: np.ndarray) -> np.ndarray:
    """An 8-bit frame (height x width x 3) as the detector sees it: content near a flat
    panel (PANEL_NEAR px from 3 x 3 pixels of one colour, and one such colour within
    that reach) moved away from the panel's colour along PANEL_GAIN's curve, each channel
    by its own difference; the rest of the frame as it was. Flat means flat in every
    channel: a Doppler blob's saturated red or empty blue is not a panel."""
    import cv2

    channels = list(cv2.split(frame))
    grey = not cv2.norm(channels[0], channels[1], cv2.NORM_INF) and not cv2.norm(
        channels[1], channels[2], cv2.NORM_INF
    )
    channels = channels[:1] if grey else channels
    square = np.ones((3, 3), np.uint8)
    flat: np.ndarray = np.full(frame.shape[:2], 255, np.uint8)  # masks: 0 / 255, as OpenCV
    for c in channels:
        same = cv2.compare(cv2.erode(c, square), cv2.dilate(c, square), cv2.CMP_EQ)
        flat = cv2.bitwise_and(flat, same)
    if not flat.any():
        return frame
    reach = np.ones((2 * PANEL_NEAR + 1, 2 * PANEL_NEAR + 1), np.uint8)
    one: np.ndarray = np.full(frame.shape[:2], 255, np.uint8)
    panels = []
    for c in channels:
        panel = cv2.dilate(cv2.bitwise_and(c, flat), reach)
        lowest = cv2.erode(cv2.bitwise_or(c, cv2.bitwise_not(flat)), reach)
        one = cv2.bitwise_and(one, cv2.compare(lowest, panel, cv2.CMP_EQ))
        panels.append(panel)
    # Faint content only: where a pixel within reach that is not flat differs from the
    # panel by PANEL_FAINT levels or more, the content is strong already (bright text on
    # a black surround), or the flat colour is a thick glyph's stroke on a background.
    diff = cv2.absdiff(channels[0], panels[0])
    for c, panel in zip(channels[1:], panels[1:], strict=True):
        diff = cv2.max(diff, cv2.absdiff(c, panel))
    content = cv2.bitwise_and(one, cv2.bitwise_not(flat))
    strong = cv2.dilate(cv2.bitwise_and(diff, content), reach)
    faint = (one > 0) & (strong < PANEL_FAINT)
    if not faint.any():
        return frame
    out = []
    for c, panel in zip(channels, panels, strict=True):
        up = cv2.LUT(cv2.subtract(c, panel), _PANEL_CURVE)
        down = cv2.LUT(cv2.subtract(panel, c), _PANEL_CURVE)
        out.append(np.where(faint, cv2.subtract(cv2.add(panel, up), down), c))
    return cv2.merge(out * 3 if grey else out)


def ink_continued(view: np.ndarray, box: Box) -> Box:
    """A line's box (from the detector, in an 8-bit frame) grown along its row for as
    long as the line's own ink continues: burned-in text is drawn in one colour, and the
    detector stops short where that colour meets a background as bright (the last
    glyphs of a line across a bone over textured anatomy).

    The ink is the commonest colour of the box's pixels that are not flat (3 x 3 of one
    colour: a panel, not a glyph's 1-2 px stroke) and that is denser in the box's middle
    rows than in its rows of padding above and below the glyphs (a background is not).
    Windows as wide as the box is high are taken beside it, one after another; a window
    continues the line when it holds at least INK_HITS such pixels of the ink and INK_OVER
    times as many as the ink's share of the whole frame would put there by chance. One
    window without may be a word's gap; the box ends at the last ink pixel of the last
    window that continued it."""
    x0, y0, x1, y1 = box
    h, w = view.shape[:2]
    if y1 - y0 < 3 or x1 <= x0:
        return box
    top, bottom = max(0, y0 - 1), min(h, y1 + 1)
    v = view[top:bottom].astype(np.int32)  # the line's rows: a colour as one number
    band = (v[..., 0] << 16) | (v[..., 1] << 8) | v[..., 2]
    flat = np.zeros(band.shape, bool)
    inner = band[1:-1, 1:-1]
    flat[1:-1, 1:-1] = np.all(
        [
            inner == band[1 + dy : band.shape[0] - 1 + dy, 1 + dx : w - 1 + dx]
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if dy or dx
        ],
        axis=0,
    )
    rows = slice(y0 - top, y1 - top)
    inside = band[rows, x0:x1]
    pixels = inside[~flat[rows, x0:x1]]
    if not len(pixels):
        return box
    values, counts = np.unique(pixels, return_counts=True)
    # The background is as common in the box's outer rows (the detector's padding above
    # and below the glyphs) as in its middle rows; the ink is not. Background that is not
    # flat (noise, or a dark border beside thin glyphs) can outnumber the ink.
    q = max(1, (y1 - y0) // 4)
    middle, outer = inside[q:-q], np.concatenate([inside[:q], inside[-q:]])
    ink = None
    for i in np.argsort(counts)[::-1][:INK_CANDIDATES]:
        if counts[i] < INK_HITS:
            break
        mid = np.count_nonzero(middle == values[i]) / max(middle.size, 1)
        if mid > INK_DENSER * np.count_nonzero(outer == values[i]) / max(outer.size, 1):
            ink = values[i]
            break
    if ink is None:
        return box
    hits = (band[rows] == ink) & ~flat[rows]
    # its share of the frame, at most: pixels of its first channel's value
    chance = float((view[..., 0] == ink >> 16).mean())
    step = y1 - y0
    need = max(INK_HITS, INK_OVER * chance * step * step)
    new0, new1 = x0, x1
    for direction in (1, -1):
        x, misses = (x1 if direction > 0 else x0), 0
        while misses < 2 and 0 < x < w:
            lo, hi = (x, min(w, x + step)) if direction > 0 else (max(0, x - step), x)
            cols = np.flatnonzero(hits[:, lo:hi].any(axis=0))
            if hits[:, lo:hi].sum() >= need:
                misses = 0
                if direction > 0:
                    new1 = lo + int(cols[-1]) + 1
                else:
                    new0 = lo + int(cols[0])
            else:
                misses += 1
            x = hi if direction > 0 else lo
    return (new0, y0, new1, y1)


def _boxes(postprocess, pred: np.ndarray, padded: tuple[int, int], frame) -> list[Box]:
    polys, _ = postprocess(pred, padded)  # mapped back to the padded frame's pixels
    h, w = frame.shape[:2]
    boxes = []
    for poly in polys:
        xs, ys = poly[:, 0] - PAD, poly[:, 1] - PAD
        x0, y0 = int(np.floor(xs.min())), int(np.floor(ys.min()))
        x1, y1 = int(np.ceil(xs.max())) + 1, int(np.ceil(ys.max())) + 1
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if x1 > x0 and y1 > y0:
            boxes.append((x0, y0, x1, y1))
    return boxes


def share_of_cores(cores: int, workers: int) -> int:
    """onnxruntime threads for one of ``workers`` that run at once on ``cores`` cores:
    its share, at least one (more threads than cores only make them wait for each other)."""
    return max(1, cores // max(1, workers))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container's cpuset
    limits), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


_loaded: list[Ocr] = []
_loading = threading.Lock()


def load_ocr(threads: int | None = None) -> Ocr:
    """The OCR models, loaded once per process (on the GPU where onnxruntime offers CUDA);
    every later call returns the same objects, whatever it asks for.

    Args:
        threads: onnxruntime threads per model for the first load; None: 1. A Beam
            worker passes its share of its machine's cores (``transforms.deid.ocr_threads``).

    Raises:
        RuntimeError: when rapidocr-onnxruntime or its model files are not installed.
    """
    with _loading:  # DoFns set up in several threads of one process load it once
        if not _loaded:
            _loaded.append(_load(threads or 1))
        return _loaded[0]


def _load(threads: int) -> Ocr:
    try:
        import onnxruntime
        import rapidocr_onnxruntime
        import yaml
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess
    except ImportError as e:
        raise RuntimeError(f"the OCR package is not installed ({type(e).__name__})") from None
    root = Path(rapidocr_onnxruntime.__file__).parent
    config = yaml.safe_load((root / "config.yaml").read_text())
    options = session_options(threads)
    use = providers(onnxruntime.get_available_providers())
    configs = {}
    for part in ("Det", "Rec"):
        cfg = dict(config[part])
        cfg["model_path"] = str(root / cfg["model_path"])
        if not Path(cfg["model_path"]).is_file():
            raise RuntimeError(f"OCR model file missing from the installed package ({part})")
        cfg.update(use_cuda="CUDAExecutionProvider" in use)
        configs[part] = cfg
    det = configs["Det"]
    # rapidocr's score of a region, over its bounding rectangle, is kept: over the region's
    # own outline it found thin lines that the rectangle's soft rows dragged under 0.5,
    # but let two staggered lines through as one tilted region, whose upright box blanked
    # 2.5 times the pixels outside the text (ink_continued completes such lines instead).
    post = DBPostProcess(
        thresh=det["thresh"],
        box_thresh=det["box_thresh"],
        max_candidates=det["max_candidates"],
        unclip_ratio=det["unclip_ratio"],
        use_dilation=det["use_dilation"],
        score_mode=det["score_mode"],
    )
    session = onnxruntime.InferenceSession(det["model_path"], options, providers=use)
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> list:
        return session.run(None, {name: x})

    return Ocr(run, post, None, session.get_providers()[0], configs["Rec"], options)


def frames_8bit(ds, arr: np.ndarray) -> np.ndarray:
    """Every frame as the detector wants it: uint8, height x width x 3, displayed polarity.

    Monochrome frames are windowed from their 0.5th percentile to their maximum (burned-in
    text is usually drawn at or near the brightest value), and MONOCHROME1 is inverted so
    that text drawn "white" on the display is bright here too. Colour frames (RGB, or YBR
    that pydicom already converted) are scaled to 8 bits when stored wider; PALETTE COLOR
    frames are shown through their palette.
    """
    frames = arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[np.newaxis]
    return np.stack([frame_8bit(ds, frame) for frame in frames])


def _photometric(ds) -> str:
    return str(ds.get("PhotometricInterpretation", "")).strip()


def _displayed(ds, frame: np.ndarray) -> np.ndarray:
    """The frame's values as displayed: a PALETTE COLOR frame through its lookup table."""
    if _photometric(ds) == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        return apply_color_lut(frame, ds)
    return frame


def frame_window(ds, frame: np.ndarray) -> tuple[float, float]:
    """The (low, high) stored values that ``frame_8bit`` maps to black and white."""
    if _photometric(ds) == "PALETTE COLOR":
        return 0.0, max(255.0, float(_displayed(ds, frame).max()))
    f = frame.astype(np.float32)
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        return 0.0, max(255.0, float(f.max()))
    if _photometric(ds) == "MONOCHROME1":
        return float(f.min()), float(np.percentile(f, 99.5))
    return float(np.percentile(f, 0.5)), float(f.max())


def frame_8bit(ds, frame: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """One frame as ``frames_8bit`` describes, in its own window or the one given (a
    redacted frame is checked in the window of the original, so that blanking the
    brightest text does not stretch noise into glyph-like texture)."""
    lo, hi = window or frame_window(ds, frame)
    shown = _displayed(ds, frame)
    g = np.clip((shown.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    if shown.ndim == 3:
        return (g * 255.0 + 0.5).astype(np.uint8)[..., :3]
    if _photometric(ds) == "MONOCHROME1":
        g = 1.0 - g
    return np.repeat((g * 255.0 + 0.5).astype(np.uint8)[..., np.newaxis], 3, axis=2)
