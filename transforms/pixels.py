"""Pixel normalization for ingest: decode, modality LUT, VOI window, resize to a model input."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, get_decoder
from pydicom.uid import UID

from transforms.deadletter import StageError

FRAME_POLICIES = ("middle", "first", "all")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_COLOUR = frozenset({"RGB", "PALETTE COLOR"})  # after decode: YBR arrives as RGB
# Syntaxes newer than the installed pydicom's UID dictionary, named for the error message.
_NEWER_SYNTAXES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
    "1.2.840.10008.1.2.8.1": "Deflated Image Frame Compression",
}
# Enhanced (multi-frame) IODs keep rescale and window in functional groups, not at the top.
_FUNCTIONAL_GROUP = dict.fromkeys(
    ("RescaleSlope", "RescaleIntercept"), "PixelValueTransformationSequence"
) | dict.fromkeys(("WindowCenter", "WindowWidth", "VOILUTFunction"), "FrameVOILUTSequence")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601, as PIL's "L"
# Beyond these a rescale or window is damage, not physics: no modality's units need a slope
# over a million or a value over a billion (float32 keeps 7 digits there anyway).
MAX_RESCALE_SLOPE = 1e6
MAX_MODALITY_VALUE = 1e9


class PixelError(StageError):
    """A pixel failure with a stable ``error_type`` and a message that carries no PHI."""


@dataclass(frozen=True)
class PixelConfig:
    """How images become model inputs.

    ``windows``: MODALITY or MODALITY/BODYPART (upper-cased) -> (center, width), modality units.
    """

    size: int = 224
    channels: int = 1
    frame_policy: str = "middle"
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive integer, got {self.size!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        if self.frame_policy not in FRAME_POLICIES:
            raise ValueError(f"frame_policy must be one of {FRAME_POLICIES}")
        windows = {}
        for key, value in dict(self.windows).items():
            center, width = (float(v) for v in value)
            if not np.isfinite(center) or not np.isfinite(width) or width <= 0:
                raise ValueError(f"window {key!r} needs a finite center and a width > 0")
            windows[str(key).strip().upper()] = (center, width)
        object.__setattr__(self, "windows", windows)

    @classmethod
    def from_mapping(cls, data: dict | None) -> PixelConfig:
        """Config from a parsed JSON/YAML mapping; unknown keys raise ValueError naming them."""
        data = dict(data or {})
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown pixel config keys: {', '.join(map(str, unknown))}")
        return cls(**data)

    def describe(self) -> dict:
        """Plain JSON values, as manifests and ``model.json`` record them (and
        ``from_mapping`` reads them back)."""
        return {
            "size": self.size,
            "channels": self.channels,
            "frame_policy": self.frame_policy,
            "windows": {k: list(v) for k, v in self.windows.items()},
        }


@dataclass(frozen=True)
class Window:
    """A VOI transform in modality units; function "LUT" is the dataset's VOI LUT Sequence."""

    center: float
    width: float
    function: str = "LINEAR"  # LINEAR (center -/+ width/2 -> 0/1), SIGMOID or LUT


@dataclass(frozen=True)
class NormalizedImage:
    """One model input and where it came from."""

    pixels: np.ndarray  # float32, size x size x channels, values in [0, 1]
    frame: int
    rows: int
    columns: int
    window_center: float
    window_width: float
    photometric: str


def _undecodable(ts: UID, why: str) -> PixelError:
    name = _NEWER_SYNTAXES.get(str(ts)) or (ts.name if ts.name != str(ts) else "unknown")
    return PixelError("undecodable", f"cannot decode transfer syntax {ts} ({name}): {why}")


def _require_pixels(ds: Dataset) -> None:
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise PixelError("no_pixel_data", "dataset has no pixel data")


def _decode(ds: Dataset, index: int | None = None) -> tuple[np.ndarray, str]:
    """Frames x rows x cols [x samples] in native byte order, and the array's photometric."""
    _require_pixels(ds)
    ts = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")  # in memory: may be none
    if not ts:
        raise PixelError("undecodable", "cannot decode: no transfer syntax (file meta lacks it)")
    ts = UID(str(ts))
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:  # pydicom has no decoder for it at all (video, JPEG XL)
        raise _undecodable(ts, "no decoder exists") from None
    if not decoder.is_available:
        raise _undecodable(ts, "no decoder plugin installed")
    try:
        # Every installed plugin is tried in turn (pylibjpeg, gdcm, pillow, ...);
        # as_rgb converts YBR_FULL(_422) to RGB, J2K decoders undo YBR_RCT/ICT themselves.
        # (pydicom types each keyword argument as the whole DecodeOptions dict.)
        arr, meta = decoder.as_array(ds, index=index, as_rgb=True)  # type: ignore[arg-type]
    except Exception as e:
        # Never chain: decoder messages may quote dataset values.
        raise _undecodable(ts, f"decoding failed ({type(e).__name__})") from None
    photometric = str(meta.get("photometric_interpretation", "")).strip()
    if photometric.startswith("YBR"):
        raise PixelError("unsupported_photometric", f"no RGB conversion for {photometric}")
    samples = int(meta.get("samples_per_pixel", 1))
    if arr.ndim == (2 if samples == 1 else 3):
        arr = arr[None]
    return arr.astype(arr.dtype.newbyteorder("="), copy=False), photometric


def decode(ds: Dataset, index: int | None = None) -> np.ndarray:
    """Decoded pixels as frames x rows x cols [x samples], native byte order, colour as RGB.

    Args:
        ds: a dataset with pixel data.
        index: decode only this frame (the result still has a frame axis of length 1).

    Raises:
        PixelError: ``no_pixel_data``; ``undecodable`` naming the transfer syntax (UID, name).
    """
    return _decode(ds, index)[0]


def _attr(ds: Dataset, keyword: str, frame: int = 0) -> object:
    """A top-level value, else the frame's functional group value, else the shared one."""
    if keyword in ds:
        return ds[keyword].value
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    for items, i in ((per_frame, frame), (shared, 0)):
        inner = items[i].get(_FUNCTIONAL_GROUP[keyword]) if i < len(items) else None
        if inner and keyword in inner[0]:
            return inner[0][keyword].value
    return None


def _first(value: object) -> float | None:
    """First value of a possibly multi-valued DS/IS; None when absent or empty."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    return None if value is None or value == "" else float(value)  # type: ignore[arg-type]


def modality_lut(arr: np.ndarray, ds: Dataset, frame: int = 0) -> np.ndarray:
    """Stored values to modality units (HU for CT) as float32.

    A Modality LUT Sequence wins (pydicom applies it); else Rescale Slope/Intercept, from the
    top level or, for enhanced IODs, the functional groups of ``frame``.

    Raises:
        PixelError: ``invalid_rescale`` for a non-finite, zero or absurd slope or intercept,
            or values that overflow (a black or nan example otherwise).
    """
    if ds.get("ModalityLUTSequence"):
        return apply_modality_lut(arr, ds).astype(np.float32)
    slope = _first(_attr(ds, "RescaleSlope", frame))
    intercept = _first(_attr(ds, "RescaleIntercept", frame))
    for name, value, bound in (
        ("slope", slope, MAX_RESCALE_SLOPE),
        ("intercept", intercept, MAX_MODALITY_VALUE),
    ):
        if value is not None and not (np.isfinite(value) and abs(value) <= bound):
            raise PixelError("invalid_rescale", f"rescale {name} is not finite or out of range")
    if slope == 0:
        raise PixelError("invalid_rescale", "rescale slope is zero (every pixel the same)")
    out = arr.astype(np.float32)
    if slope is not None and slope != 1:
        out *= np.float32(slope)
    if intercept:
        out += np.float32(intercept)
    return out


def _preset(ds: Dataset, config: PixelConfig) -> tuple[float, float] | None:
    modality = str(ds.get("Modality", "") or "").strip().upper()
    body_part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    return config.windows.get(f"{modality}/{body_part}") or config.windows.get(modality)


def percentiles(values: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """``np.percentile(values, qs)`` (its linear method, the same numbers) from a partial
    sort: only the ranks the percentiles fall between are put in place (a quarter of the
    time on a 128 x 128 image)."""
    values = values.ravel()
    pos = np.asarray(qs, dtype=np.float64) / 100 * (values.size - 1)
    below = np.floor(pos).astype(np.intp)
    above = np.minimum(below + 1, values.size - 1)
    part = np.partition(values, np.unique(np.concatenate([below, above])))
    a, b = part[below], part[above]
    t = pos - below
    diff = b - a
    # numpy's _lerp: from the nearer end, so that t = 1 gives b exactly.
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def _robust_range(arr: np.ndarray) -> Window:
    """0.5/99.5 percentiles, or the full range when they collapse (sparse masks)."""
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return Window(0.0, 0.0)
    lo, hi = (float(v) for v in percentiles(finite, (0.5, 99.5)))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    return Window((lo + hi) / 2, hi - lo)


def choose_window(arr: np.ndarray, ds: Dataset, config: PixelConfig, frame: int = 0) -> Window:
    """The VOI for modality values ``arr``: config preset, VOI LUT, dataset window, min/max."""
    preset = _preset(ds, config)
    if preset is not None:
        return Window(*preset)
    if ds.get("VOILUTSequence"):
        entries, first_mapped = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor[:2])
        entries = entries or 2**16  # 0 means 65536 entries (PS3.3 C.11.2.1.1)
        return Window(first_mapped + entries / 2, float(entries), "LUT")
    center = _first(_attr(ds, "WindowCenter", frame))
    width = _first(_attr(ds, "WindowWidth", frame))
    if center is not None and width is not None and _sane_window(center, width):
        function = str(_attr(ds, "VOILUTFunction", frame) or "LINEAR").strip().upper()
        return Window(center, width, "SIGMOID" if function == "SIGMOID" else "LINEAR")
    return _robust_range(arr)


def _sane_window(center: float | None, width: float | None) -> bool:
    """A dataset window worth using: finite, width > 0, both within modality range (a
    non-finite or absurd one falls back to the percentile window)."""
    if center is None or width is None:
        return False
    if not (np.isfinite(center) and np.isfinite(width)):
        return False
    return 0 < width <= 2 * MAX_MODALITY_VALUE and abs(center) <= MAX_MODALITY_VALUE


def apply_window(arr: np.ndarray, window: Window, ds: Dataset | None = None) -> np.ndarray:
    """Modality values to [0, 1] float32; zero width gives zeros; a LUT window needs ``ds``."""
    if window.function == "LUT":
        if ds is None:
            raise ValueError("a LUT window needs the dataset")
        # pydicom indexes the LUT with integers; its output depth is the descriptor's third value.
        depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        out = apply_voi(np.rint(arr).astype(np.int64), ds) / np.float32(2**depth - 1)
    elif window.width <= 0:
        return np.zeros(arr.shape, dtype=np.float32)
    elif window.function == "SIGMOID":
        out = 1 / (1 + np.exp(-4 * (arr - window.center) / window.width))
    else:
        out = (arr - (window.center - window.width / 2)) / window.width
    return np.nan_to_num(np.clip(out, 0, 1), nan=0.0).astype(np.float32)


def invert_monochrome1(arr01: np.ndarray, ds: Dataset) -> np.ndarray:
    """MONOCHROME1 shows low values bright: flip so that every image reads as MONOCHROME2."""
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        return (1 - arr01).astype(np.float32)
    return arr01


def to_channels(arr01: np.ndarray, ds: Dataset, channels: int) -> np.ndarray:
    """One frame in [0, 1] to rows x cols x channels: luminance of RGB, or grey repeated.

    Colour (3 samples, or an expanded palette) must already be RGB: ``decode`` converts YBR.
    """
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    colour = int(ds.get("SamplesPerPixel") or 1) == 3 or photometric == "PALETTE COLOR"
    if arr01.ndim != (3 if colour else 2) or (colour and arr01.shape[-1] != 3):
        raise ValueError(f"array of shape {arr01.shape} does not fit {photometric}")
    if not colour:
        return np.repeat(arr01[..., None], channels, axis=-1)
    return arr01 if channels == 3 else (arr01 @ _LUMA)[..., None]


def frame_indices(count: int, policy: str) -> list[int]:
    """Source frame numbers a policy keeps; "middle" of an even count is the later one."""
    if policy not in FRAME_POLICIES:
        raise ValueError(f"frame_policy must be one of {FRAME_POLICIES}")
    if policy == "all":
        return list(range(count))
    return [count // 2 if policy == "middle" else 0]


def placement(rows: int, cols: int, size: int) -> tuple[int, int, int, int]:
    """Where ``resize_pad`` puts a rows x cols image in size x size: (top, left, height,
    width) of the scaled image; the rest is padding. Scoring maps predictions back with it."""
    scale = size / max(rows, cols)
    new_rows, new_cols = max(1, round(rows * scale)), max(1, round(cols * scale))
    return (size - new_rows) // 2, (size - new_cols) // 2, new_rows, new_cols


def resize_pad(img: np.ndarray, size: int) -> np.ndarray:
    """Fit rows x cols x channels into size x size: keep the aspect ratio, pad centred with 0."""
    top, left, new_rows, new_cols = placement(img.shape[0], img.shape[1], size)
    out = np.zeros((size, size, img.shape[2]), dtype=np.float32)
    for c in range(img.shape[2]):
        # PIL's "F" mode resamples float32 exactly; BILINEAR widens its support on downscale.
        channel = Image.fromarray(np.ascontiguousarray(img[..., c], dtype=np.float32))
        resized = channel.resize((new_cols, new_rows), Image.Resampling.BILINEAR)
        out[top : top + new_rows, left : left + new_cols, c] = np.asarray(resized)
    return np.clip(out, 0, 1)


def _colour01(frame: np.ndarray, ds: Dataset, photometric: str) -> tuple[np.ndarray, float]:
    """RGB (or palette indices) to [0, 1] without windowing, and the full-scale value used."""
    if photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
        full = float(np.iinfo(frame.dtype).max)  # the LUT's entry depth, 8 or 16 bits
    else:
        full = float(2 ** int(ds.BitsStored) - 1)
    return (frame.astype(np.float32) / np.float32(full)).clip(0, 1), full


def normalize(ds: Dataset, config: PixelConfig) -> list[NormalizedImage]:
    """The whole chain, one ``NormalizedImage`` per frame that the frame policy keeps.

    Grey: modality LUT, VOI window, MONOCHROME1 inversion. Colour: scaled by its bit depth.

    A non-finite or absurd dataset window falls back to the percentile window, as does one
    that would turn a varying image into a flat one.

    Raises:
        PixelError: ``no_pixel_data``, ``undecodable``, ``unsupported_photometric``,
            ``invalid_rescale`` (non-finite, zero or absurd slope/intercept), or
            ``normalize_failed`` for anything else (e.g. unreadable LUT attributes).
    """
    _require_pixels(ds)  # before Number of Frames is looked at
    try:
        count = max(1, int(_first(ds.get("NumberOfFrames")) or 1))
        indices = frame_indices(count, config.frame_policy)
    except ValueError:
        raise PixelError("normalize_failed", "invalid Number of Frames") from None
    # Decode one frame, not a whole cine run, when only one is kept.
    arr, photometric = _decode(ds, None if config.frame_policy == "all" else indices[0])
    source = str(ds.get("PhotometricInterpretation", "")).strip()
    out = []
    try:
        for frame, stored in zip(indices, arr, strict=True):
            if photometric in _COLOUR:
                img01, full = _colour01(stored, ds, photometric)
                window = Window(full / 2, full)
            else:
                values = modality_lut(stored, ds, frame)
                window, img01 = _grey01(values, ds, config, frame)
            pixels = resize_pad(to_channels(img01, ds, config.channels), config.size)
            rows, cols = stored.shape[:2]
            out.append(
                NormalizedImage(pixels, frame, rows, cols, window.center, window.width, source)
            )
    except PixelError:
        raise
    except Exception as e:
        # Never chain: messages from pydicom or numpy may quote dataset values.
        raise PixelError("normalize_failed", f"cannot normalize ({type(e).__name__})") from None
    return out


def _grey01(
    values: np.ndarray, ds: Dataset, config: PixelConfig, frame: int
) -> tuple[Window, np.ndarray]:
    """Windowed grey values in [0, 1], never nan, and never a flat image from a window that
    misses data that varies: the dataset's window then gives way to the percentile window.

    Raises:
        PixelError: ``invalid_rescale`` when the modality values overflow or none is finite.
    """
    # Float pixel data may hold a few nan/inf pixels: the window ignores them and they map
    # to black (nan) or the clipped end (inf). With no finite pixel there is no image.
    if not np.isfinite(values).any():
        raise PixelError("invalid_rescale", "no pixel value is finite after the rescale")
    window = choose_window(values, ds, config, frame)
    img01 = apply_window(values, window, ds)
    if window.function != "LUT" and _preset(ds, config) is None and img01.min() == img01.max():
        fallback = _robust_range(values)
        if fallback.width > 0:
            window = fallback
            img01 = apply_window(values, window, ds)
    if not (np.isfinite(window.center) and np.isfinite(window.width)):
        raise PixelError("invalid_rescale", "no finite window for these values")
    return window, invert_monochrome1(img01, ds)
