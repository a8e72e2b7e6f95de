"""Parsing a DICOM object completely, within limits, with every failure named."""

import io

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from transforms.deadletter import StageError
from transforms.dicom_io.limits import (
    TOO_DEEP,
    TOO_LARGE_DECODED,
    TOO_MANY_FRAMES,
    Deadline,
    Limits,
)
from transforms.dicom_io.objects import quiet_pydicom
from transforms.dicom_io.scan import check_structure

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def parse_dataset(data: bytes, limits: Limits | None = None) -> Dataset:
    """Parses a DICOM object completely (pixel data stays encoded), within ``limits``.

    The bytes are walked first (``scan.check_structure``), so pydicom only ever parses an
    object that is complete, shallow enough and within its inflate and time budget; then
    the declared image size is checked against the frame limits (``check_frames``).

    Raises:
        StageError: ``invalid_dicom`` when it does not parse, ``truncated`` when it ends
            anywhere inside an element, ``too_deep``, ``inflate_limit``, ``parse_timeout``,
            ``too_many_frames`` or ``too_large_decoded``.
    """
    quiet_pydicom()
    limits = Limits.of(limits)
    deadline = Deadline(limits.parse_seconds)
    check_structure(data, limits)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except RecursionError:
        raise StageError(TOO_DEEP, "sequences nested too deep to parse") from None
    except Exception as e:  # pydicom's own errors, OSError, EOFError, struct.error, ...
        message = f"not a parsable DICOM dataset ({type(e).__name__})"
        raise StageError("invalid_dicom", message) from None
    if len(ds) == 0:
        raise StageError("truncated", "object ends before its dataset begins")
    deadline.check()
    check_frames(ds, limits)
    return ds


def _count(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    """A non-negative integer attribute; ``default`` when absent or bogus (the pixel stage
    names a bogus value when it needs it)."""
    try:
        value = ds.get(keyword)
        if isinstance(value, MultiValue | list | tuple):
            value = value[0] if len(value) else None
        if value is None or value == "":
            return default
        number = int(value)
    except Exception:
        return default
    return number if number >= 0 else default


def frame_bytes(ds: Dataset) -> int:
    """Decoded bytes of one frame, from the header alone: Rows x Columns x Samples x Bits."""
    rows = _count(ds, "Rows", 0) or 0
    columns = _count(ds, "Columns", 0) or 0
    samples = _count(ds, "SamplesPerPixel", 1) or 1
    bits = _count(ds, "BitsAllocated", 8) or 8
    try:
        photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    except Exception:  # an unreadable value: the pixel stage names it if it needs it
        photometric = ""
    if photometric == "PALETTE COLOR":
        samples, bits = 3, max(bits, 16)  # expanded through the colour LUT
    return (rows * columns * samples * bits + 7) // 8


def frame_count(ds: Dataset) -> int:
    return max(1, _count(ds, "NumberOfFrames", 1) or 1)


def check_frames(ds: Dataset, limits: Limits) -> None:
    """Refuses an image whose declared frames could not be decoded within the limits.

    Raises:
        StageError: ``too_many_frames`` or ``too_large_decoded`` (one frame over
            ``max_frame_bytes``).
    """
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        return
    frames = frame_count(ds)
    if frames > limits.max_frames:
        raise StageError(TOO_MANY_FRAMES, f"{frames} frames, over the limit of {limits.max_frames}")
    size = frame_bytes(ds)
    if size > limits.max_frame_bytes:
        raise StageError(
            TOO_LARGE_DECODED,
            f"one frame decodes to {size} bytes, over the limit of {limits.max_frame_bytes}",
        )


def check_decoded(ds: Dataset, frames: int, limits: Limits) -> None:
    """Refuses decoding ``frames`` frames of ``ds`` at once past ``max_decoded_bytes``."""
    check_frames(ds, limits)
    total = frame_bytes(ds) * frames
    if total > limits.max_decoded_bytes:
        raise StageError(
            TOO_LARGE_DECODED,
            f"{frames} frames decode to {total} bytes, over the limit of "
            f"{limits.max_decoded_bytes}",
        )
