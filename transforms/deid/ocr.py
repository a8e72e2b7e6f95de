"""Offline OCR for burned-in text: frames to 8-bit, text boxes found, text read.

The detector and recognizer are PP-OCRv4 models that ``rapidocr-onnxruntime`` ships inside
its wheel and runs on onnxruntime; nothing is fetched at run time. ``load_ocr`` builds
them once per process (a Beam worker's ``DoFn.setup`` calls it; later calls return the
same objects), on the GPU where onnxruntime has a CUDA provider, else on the CPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of the frame, end-exclusive

# The detector sees text best when glyphs are 10-40 px tall. Small frames (ultrasound
# crops, thumbnails) are enlarged so that their short side reaches MIN_SIDE; large frames
# (2048² radiographs) are shrunk so that their long side stays within MAX_SIDE, which
# bounds the time per frame (the network's cost grows with the pixel count).
MIN_SIDE = 512
MAX_SIDE = 1280
_STRIDE = 32  # the network's input sides must be multiples of this


@dataclass
class Ocr:
    """The loaded PP-OCR detector and recognizer, and the provider they run on."""

    detector: Callable[..., Any]  # onnxruntime session wrapper
    postprocess: Callable[..., Any]  # DB post-processing: probability map → boxes
    recognizer: Callable[..., Any] | None  # rapidocr TextRecognizer, built on first use
    provider: str
    _rec_config: dict

    def detect(self, frame: np.ndarray) -> list[Box]:
        """Text boxes in an 8-bit frame (height x width x 3), in the frame's pixels."""
        import cv2

        h, w = frame.shape[:2]
        scale = max(1.0, MIN_SIDE / min(h, w))
        scale = min(scale, MAX_SIDE / max(h, w))
        rh = max(_STRIDE, round(h * scale / _STRIDE) * _STRIDE)
        rw = max(_STRIDE, round(w * scale / _STRIDE) * _STRIDE)
        resized = cv2.resize(frame, (rw, rh), interpolation=cv2.INTER_LINEAR)
        x = (resized.astype(np.float32) / 255.0 - 0.5) / 0.5
        x = x.transpose(2, 0, 1)[np.newaxis]
        pred = self.detector(x)[0]
        polys, _ = self.postprocess(pred, (h, w))  # mapped back to the frame's pixels
        boxes = []
        for poly in polys:
            xs, ys = poly[:, 0], poly[:, 1]
            x0, y0 = int(np.floor(xs.min())), int(np.floor(ys.min()))
            x1, y1 = int(np.ceil(xs.max())) + 1, int(np.ceil(ys.max())) + 1
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
            if x1 > x0 and y1 > y0:
                boxes.append((x0, y0, x1, y1))
        return boxes

    def recognize(self, frame: np.ndarray, boxes: list[Box]) -> list[tuple[str, float]]:
        """The text in each box of an 8-bit frame, with the recognizer's confidence."""
        if not boxes:
            return []
        if self.recognizer is None:
            from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer

            self.recognizer = TextRecognizer(self._rec_config)
        crops = [np.ascontiguousarray(frame[y0:y1, x0:x1]) for x0, y0, x1, y1 in boxes]
        results, _ = self.recognizer(crops)
        return [(str(text), float(score)) for text, score in results]


@functools.cache
def load_ocr(threads: int = 1) -> Ocr:
    """The OCR models, loaded once per process (on the GPU where onnxruntime offers CUDA).

    Args:
        threads: onnxruntime threads per model; 1 by default, because Beam runs one
            worker per core and each would otherwise spread over every core.

    Raises:
        RuntimeError: when rapidocr-onnxruntime or its model files are not installed.
    """
    try:
        import onnxruntime
        import rapidocr_onnxruntime
        import yaml
        from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess
        from rapidocr_onnxruntime.utils import OrtInferSession
    except ImportError as e:
        raise RuntimeError(f"the OCR package is not installed ({type(e).__name__})") from None
    root = Path(rapidocr_onnxruntime.__file__).parent
    config = yaml.safe_load((root / "config.yaml").read_text())
    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    sessions = {}
    for part in ("Det", "Rec"):
        cfg = dict(config[part])
        cfg["model_path"] = str(root / cfg["model_path"])
        if not Path(cfg["model_path"]).is_file():
            raise RuntimeError(f"OCR model file missing from the installed package ({part})")
        cfg.update(intra_op_num_threads=threads, inter_op_num_threads=1, use_cuda=cuda)
        sessions[part] = cfg
    det = sessions["Det"]
    post = DBPostProcess(
        thresh=det["thresh"],
        box_thresh=det["box_thresh"],
        max_candidates=det["max_candidates"],
        unclip_ratio=det["unclip_ratio"],
        use_dilation=det["use_dilation"],
        score_mode=det["score_mode"],
    )
    session = OrtInferSession(det)
    provider = session.session.get_providers()[0]
    return Ocr(session, post, None, provider, sessions["Rec"])


def frames_8bit(ds, arr: np.ndarray) -> np.ndarray:
    """Every frame as the detector wants it: uint8, height x width x 3, displayed polarity.

    Monochrome frames are windowed from their 0.5th percentile to their maximum (burned-in
    text is usually drawn at or near the brightest value), and MONOCHROME1 is inverted so
    that text drawn "white" on the display is bright here too. Colour frames (RGB, or YBR
    that pydicom already converted) are scaled to 8 bits when stored wider.
    """
    frames = arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[np.newaxis]
    return np.stack([frame_8bit(ds, frame) for frame in frames])


def frame_window(ds, frame: np.ndarray) -> tuple[float, float]:
    """The (low, high) stored values that ``frame_8bit`` maps to black and white."""
    f = frame.astype(np.float32)
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        return 0.0, max(255.0, float(f.max()))
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        return float(f.min()), float(np.percentile(f, 99.5))
    return float(np.percentile(f, 0.5)), float(f.max())


def frame_8bit(ds, frame: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """One frame as ``frames_8bit`` describes, in its own window or the one given (a
    redacted frame is checked in the window of the original, so that blanking the
    brightest text does not stretch noise into glyph-like texture)."""
    lo, hi = window or frame_window(ds, frame)
    g = np.clip((frame.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        return (g * 255.0 + 0.5).astype(np.uint8)[..., :3]
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        g = 1.0 - g
    return np.repeat((g * 255.0 + 0.5).astype(np.uint8)[..., np.newaxis], 3, axis=2)
