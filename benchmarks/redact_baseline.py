"""The burned-in text redaction of 2026-12-06 (commit 60fc762), kept callable as the
baseline that ``redact_speed.py`` measures today's code against in the same run.

Frozen on purpose: up to three whole-frame detections per frame (detect, then two rounds
of blank-and-detect-again over the whole frame), frames resized to a 512 short side or a
1280 long side, onnxruntime sessions built by rapidocr (memory arena off), the whole frame
inpainted before each check. Not used by dicomflow itself.
"""

import functools
from pathlib import Path

import numpy as np

from transforms.deadletter import StageError
from transforms.deid.ocr import frame_8bit, frame_window
from transforms.deid.pixels import blank_value, store_frames

MIN_SIDE = 512
MAX_SIDE = 1280
ROUNDS = 2
_STRIDE = 32


@functools.cache
def _models():
    import rapidocr_onnxruntime
    import yaml
    from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess
    from rapidocr_onnxruntime.utils import OrtInferSession

    root = Path(rapidocr_onnxruntime.__file__).parent
    det = dict(yaml.safe_load((root / "config.yaml").read_text())["Det"])
    det["model_path"] = str(root / det["model_path"])
    det.update(intra_op_num_threads=1, inter_op_num_threads=1, use_cuda=False)
    post = DBPostProcess(
        thresh=det["thresh"],
        box_thresh=det["box_thresh"],
        max_candidates=det["max_candidates"],
        unclip_ratio=det["unclip_ratio"],
        use_dilation=det["use_dilation"],
        score_mode=det["score_mode"],
    )
    return OrtInferSession(det), post


def detect(frame: np.ndarray) -> list[tuple[int, int, int, int]]:
    import cv2

    session, post = _models()
    h, w = frame.shape[:2]
    scale = max(1.0, MIN_SIDE / min(h, w))
    scale = min(scale, MAX_SIDE / max(h, w))
    rh = max(_STRIDE, round(h * scale / _STRIDE) * _STRIDE)
    rw = max(_STRIDE, round(w * scale / _STRIDE) * _STRIDE)
    resized = cv2.resize(frame, (rw, rh), interpolation=cv2.INTER_LINEAR)
    x = (resized.astype(np.float32) / 255.0 - 0.5) / 0.5
    pred = session(x.transpose(2, 0, 1)[np.newaxis])[0]
    polys, _ = post(pred, (h, w))
    boxes = []
    for poly in polys:
        xs, ys = poly[:, 0], poly[:, 1]
        x0, y0 = int(np.floor(xs.min())), int(np.floor(ys.min()))
        x1, y1 = int(np.ceil(xs.max())) + 1, int(np.ceil(ys.max())) + 1
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if x1 > x0 and y1 > y0:
            boxes.append((x0, y0, x1, y1))
    return boxes


def _grow(box, margin, shape):
    x0, y0, x1, y1 = box
    pad = max(2, int(np.ceil(margin * (y1 - y0))))
    return (
        max(0, x0 - 2 * pad),
        max(0, y0 - pad),
        min(shape[1], x1 + 2 * pad),
        min(shape[0], y1 + pad),
    )


def _smoothed(view, mask):
    if not mask.any():
        return view
    import cv2

    return cv2.inpaint(view, mask.astype(np.uint8), 3, cv2.INPAINT_TELEA)


def redact_pixels(ds, margin: float = 0.3) -> int:
    """The all_text redaction as it was: blanks in place, returns the regions blanked.

    Raises:
        StageError: burned_in_text_remaining or redact_failed, as it did.
    """
    try:
        arr = ds.pixel_array.copy()
    except Exception as e:
        message = f"pixels cannot be decoded ({type(e).__name__})"
        raise StageError("redact_failed", message) from None
    frames = arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[np.newaxis]
    fill = blank_value(ds, frames.dtype, frames)
    regions = 0
    for i in range(len(frames)):
        window = frame_window(ds, frames[i])
        view = frame_8bit(ds, frames[i], window)
        mask = np.zeros(view.shape[:2], bool)
        boxes = detect(view)
        for _ in range(ROUNDS):
            if not boxes:
                break
            for box in boxes:
                x0, y0, x1, y1 = _grow(box, margin, view.shape[:2])
                mask[y0:y1, x0:x1] = True
            regions += len(boxes)
            frames[i][mask] = fill
            view = frame_8bit(ds, frames[i], window)
            boxes = detect(_smoothed(view, mask))
        if boxes:
            message = f"text still detected after redaction (frame {i + 1} of {len(frames)})"
            raise StageError("burned_in_text_remaining", message)
    if regions:
        store_frames(ds, frames)
    return regions
