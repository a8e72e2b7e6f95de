"""Synthetic pixels (phantoms, lesions, burned-in text) and their encodings."""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels.encoders import RLELosslessEncoder

from transforms.mask_geometry import polygon_fill
from transforms.testing.difficulty import PRESETS, Difficulty

EASY = PRESETS["easy"]

TRANSFER_SYNTAXES = (
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.RLELossless,
    uid.JPEG2000Lossless,
    uid.JPEGLSLossless,
    uid.JPEGBaseline8Bit,
)
LOSSY_SYNTAXES = frozenset({uid.JPEGBaseline8Bit})
_ENCAPSULATED_BY_PYDICOM = (uid.RLELossless, uid.JPEG2000Lossless, uid.JPEGLSLossless)
_IMPLEMENTATION_UID = "2.25.258135491238468431209814397734911632961"


@dataclass(frozen=True)
class _Kind:
    modality: str
    sop_class: str
    bits_allocated: int
    photometric: str
    samples: int = 1
    multiframe: bool = False


KINDS = {
    "CT": _Kind("CT", uid.CTImageStorage, 16, "MONOCHROME2"),
    "CR": _Kind("CR", uid.ComputedRadiographyImageStorage, 16, "MONOCHROME1"),
    "DX": _Kind("DX", uid.DigitalXRayImageStorageForPresentation, 16, "MONOCHROME2"),
    "MR": _Kind("MR", uid.MRImageStorage, 16, "MONOCHROME2"),
    "US": _Kind("US", uid.UltrasoundImageStorage, 8, "MONOCHROME2"),
    "XA": _Kind("XA", uid.XRayAngiographicImageStorage, 8, "MONOCHROME2", multiframe=True),
    "SC": _Kind("OT", uid.SecondaryCaptureImageStorage, 8, "RGB", samples=3),
}
CYCLE = tuple(KINDS)  # any 7 consecutive patient indices cover every kind
_BODY_PART = {"CT": "CHEST", "CR": "CHEST", "DX": "HAND", "MR": "HEAD", "US": "ABDOMEN"}
_BODY_PART.update({"XA": "HEART", "SC": "CHEST"})
# Real vendors' names as their devices write them: de-identification keeps a manufacturer
# only when its content check passes (a reviewed vendor list), as it would for real exports.
MANUFACTURERS = {"CT": "SIEMENS", "CR": "AGFA", "DX": "FUJIFILM", "MR": "GE MEDICAL SYSTEMS"}
MANUFACTURERS.update({"US": "Philips", "XA": "TOSHIBA", "SC": "Carestream Health"})


def _phantom(
    rng: np.random.Generator,
    rows: int,
    cols: int,
    lesion: bool,
    difficulty: Difficulty = EASY,
) -> np.ndarray:
    """Body-like float image in [0, 1]; a positive adds a gaussian blob inside the body.

    The blob is drawn last so that the same rng state gives the same body either way.
    ``difficulty`` scales the noise and the blob's contrast and width; the draws are the
    same whatever it is, so it changes pixel values and nothing else.
    """
    return phantom_and_lesion(rng, rows, cols, lesion, difficulty)[0]


def phantom_and_lesion(
    rng: np.random.Generator,
    rows: int,
    cols: int,
    lesion: bool,
    difficulty: Difficulty = EASY,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``_phantom``'s image, and the lesion's outline as a closed polygon (None without one).

    The outline is the blob's half-maximum ellipse, as ``LESION_VERTICES`` (x, y) vertices
    in pixel coordinates (the centre of the top-left pixel is (0, 0)). The lesion's mask,
    the one segmentation objects carry, is ``lesion_mask`` of this polygon.
    """
    yy = (np.arange(rows)[:, None] + 0.5) / rows - 0.5
    xx = (np.arange(cols)[None, :] + 0.5) / cols - 0.5
    cy, cx = rng.uniform(-0.04, 0.04, 2)
    ry, rx = rng.uniform(0.32, 0.46, 2)
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    texture = np.zeros((rows, cols))
    for _ in range(3):
        fy, fx, phase = rng.uniform(2, 9), rng.uniform(2, 9), rng.uniform(0, 2 * np.pi)
        texture += 0.03 * np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
    img = np.where(inside <= 1, 0.5 + texture, 0.02) + rng.normal(
        0, 0.015 * difficulty.noise, (rows, cols)
    )
    radius, angle = rng.uniform(0, 0.55), rng.uniform(0, 2 * np.pi)
    sigma, contrast = rng.uniform(0.03, 0.08), rng.uniform(0.25, 0.45)
    sigma, contrast = sigma * difficulty.size, contrast * difficulty.contrast
    outline = None
    if lesion:
        by, bx = cy + radius * ry * np.sin(angle), cx + radius * rx * np.cos(angle)
        img += contrast * np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * sigma**2))
        # Half maximum at sqrt(2 ln 2) sigma, in the image's normalized units per axis.
        half = sigma * np.sqrt(2 * np.log(2))
        t = np.linspace(0, 2 * np.pi, LESION_VERTICES, endpoint=False)
        xs = (bx + 0.5 + half * np.cos(t)) * cols - 0.5
        ys = (by + 0.5 + half * np.sin(t)) * rows - 0.5
        outline = np.stack([xs, ys], axis=1)
    return np.clip(img, 0.0, 1.0), outline


LESION_VERTICES = 48


def lesion_mask(outline: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The pixels whose centres lie inside the closed polygon (x, y vertices), as uint8 0/1
    (``mask_geometry.polygon_fill``: the fill ingest applies to RTSTRUCT contours)."""
    return polygon_fill(outline, rows, cols).astype(np.uint8)


def _text_mask(shape: tuple[int, int], lines: list[str]) -> np.ndarray:
    """Where the default PIL font draws the lines at the top left."""
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(canvas).text((3, 3), "\n".join(lines), fill=255)
    return np.asarray(canvas) > 0


def _stored_pixels(
    kind: str, img: np.ndarray, rng: np.random.Generator, signed: bool
) -> np.ndarray:
    """Map the [0, 1] phantom to the stored values a scanner of this kind writes."""
    if kind == "CT":
        stored = np.clip(np.round(img * 2000 - 1000) + 1024, 0, 4095)
        if not signed:
            return stored.astype(np.uint16)
        rows, cols = img.shape
        yy, xx = np.ogrid[:rows, :cols]
        fov = ((yy - rows / 2) / (rows / 2)) ** 2 + ((xx - cols / 2) / (cols / 2)) ** 2 > 1
        return np.where(fov, -2000, stored).astype(np.int16)  # padding outside the FOV
    if kind == "CR":
        return np.round((1 - 0.9 * img) * 4095).astype(np.uint16)  # MONOCHROME1: dense = low
    if kind == "DX":
        return np.round(img * 16383).astype(np.uint16)
    if kind == "MR":
        rician = np.abs(rng.normal(0, 20, img.shape))  # magnitude images have positive noise
        return np.clip(np.round(img * 3000 + rician), 0, 4095).astype(np.uint16)
    if kind == "US":
        return np.round(img * 220 * rng.uniform(0.75, 1.0, img.shape)).astype(np.uint8)
    if kind == "XA":
        return _angio_frames(img, rng)
    colour = np.stack([img, img**2, np.sqrt(img) * 0.6], axis=-1)  # SC: a colour-mapped render
    return np.round(colour * 255).astype(np.uint8)


def _angio_frames(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A short cine run: a vessel fills with contrast over 4-8 frames."""
    rows, cols = img.shape
    yy, xx = np.mgrid[:rows, :cols]
    amp, freq, centre = rng.uniform(5, 15), rng.uniform(0.02, 0.08), rng.uniform(0.3, 0.7) * rows
    vessel = np.abs(yy - (centre + amp * np.sin(freq * xx))) < 3
    frames = []
    for f in range(int(rng.integers(4, 9))):
        frame = (1 - 0.7 * img) * 230 - vessel * (20 + 25 * f) + rng.normal(0, 3, img.shape)
        frames.append(np.clip(np.round(frame), 0, 255))
    return np.stack(frames).astype(np.uint8)


def _image_size(kind: str, rng: np.random.Generator) -> tuple[int, int]:
    rows = int(rng.integers(96 if kind == "US" else 48, 193))
    # Ultrasound needs room for the burned-in name in the default font.
    cols = int(rng.integers(176, 193)) if kind == "US" else int(rng.integers(48, 193))
    return rows, cols


# ---------------------------------------------------------------- DICOM modules


def _jpeg_baseline(ds: Dataset, arr: np.ndarray) -> None:
    # pydicom has no JPEG encoder: PIL writes each frame, pydicom encapsulates them.
    frames = arr if ds.get("NumberOfFrames", 1) > 1 else arr[None]
    encoded = []
    for frame in frames:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=92, subsampling=1)  # 4:2:2
        encoded.append(buf.getvalue())
    if ds.SamplesPerPixel == 3:
        ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.LossyImageCompressionRatio = f"{arr.nbytes / sum(len(e) for e in encoded):.2f}"
    _set_encapsulated(ds, encoded)


def _set_encapsulated(ds: Dataset, fragments: list[bytes]) -> None:
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def _encode(ds: Dataset, arr: np.ndarray, ts: str) -> bytes:
    """Part 10 bytes of the dataset with the array as Pixel Data in the transfer syntax."""
    ds.file_meta.TransferSyntaxUID = uid.UID(ts)
    if ts == uid.JPEGBaseline8Bit:
        _jpeg_baseline(ds, arr)
    elif ts in _ENCAPSULATED_BY_PYDICOM:
        ds.compress(ts, arr, encoding_plugin=_plugin(ts), generate_instance_uid=False)
    elif ts == uid.ExplicitVRBigEndian:
        # The writer copies OW bytes verbatim, so the words must be big-endian already.
        ds.PixelData = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    else:
        ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@functools.cache
def _plugin(ts: str) -> str:
    # Pinned, so that which RLE plugins happen to be installed does not change the bytes;
    # pylibjpeg-rle is much faster than pydicom's pure-Python RLE encoder.
    if ts != uid.RLELossless:
        return ""
    return "pylibjpeg" if "pylibjpeg" in RLELosslessEncoder.available_plugins else "pydicom"


def _fits(ts: str, kind: _Kind) -> bool:
    return ts != uid.JPEGBaseline8Bit or kind.bits_allocated == 8
