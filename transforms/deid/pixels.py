"""Burned-in text risk and fixed-box pixel masking."""

from collections.abc import Iterable

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian

from transforms.deid.config import PixelPolicy

# Pixels


def burned_in_risk(ds: Dataset, policy: PixelPolicy) -> str | None:
    """Why this image may carry burned-in text (a PHI-free reason), or None."""
    if "PixelData" not in ds:
        return None
    annotation = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if annotation == "YES":
        return "BurnedInAnnotation is YES"
    if modality in policy.risky_modalities:
        return f"modality {modality} commonly carries burned-in text"
    if not annotation and modality in policy.missing_annotation_modalities:
        return f"modality {modality} without BurnedInAnnotation"
    return None


def blank_value(ds: Dataset, dtype: np.dtype, frames: np.ndarray | None = None) -> int:
    """Blank means black on the display: the lowest value, the highest in MONOCHROME1, or
    in PALETTE COLOR the index whose palette entry is darkest."""
    if str(ds.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        top = min(1 << int(ds.get("BitsStored", 8)), 1 << 16)
        index = np.arange(top).astype(dtype)
        return int(index[np.argmin(apply_color_lut(index, ds).sum(axis=-1))])
    if int(ds.get("PixelRepresentation", 0)) == 1:
        if np.dtype(dtype).kind == "i":
            return int(np.iinfo(dtype).min)
        return int(frames.min()) if frames is not None else 0
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        return (1 << int(ds.get("BitsStored", ds.BitsAllocated))) - 1
    return 0


def store_frames(ds: Dataset, frames: np.ndarray) -> None:
    """Writes decoded frames back as uncompressed Pixel Data with a matching description.

    pydicom's ``pixel_array`` converts YBR to RGB and interleaves the samples, so the
    photometric interpretation and planar configuration are set to what the bytes are.
    """
    if "YBR" in str(ds.get("PhotometricInterpretation", "")):
        ds.PhotometricInterpretation = "RGB"  # pixel_array converted it
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        ds.PlanarConfiguration = 0
    # A big-endian dataset stays big-endian: pydicom will not re-encode it as little.
    big = ds.file_meta.get("TransferSyntaxUID") == ExplicitVRBigEndian
    ds.PixelData = frames.astype(frames.dtype.newbyteorder(">" if big else "<")).tobytes()
    ds["PixelData"].VR = "OB" if int(ds.BitsAllocated) == 8 else "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian if big else ExplicitVRLittleEndian


def mask_pixels(ds: Dataset, boxes: Iterable[tuple[float, float, float, float]]) -> None:
    """Blanks the boxes on every frame and stores the pixels uncompressed (valid encoding)."""
    arr = ds.pixel_array.copy()
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[np.newaxis]
    fill = blank_value(ds, frames.dtype, frames)
    for x0, y0, x1, y1 in boxes:
        r0, r1 = round(y0 * rows), round(y1 * rows)
        c0, c1 = round(x0 * cols), round(x1 * cols)
        frames[:, r0:r1, c0:c1, ...] = fill
    store_frames(ds, frames)


# ---------------------------------------------------------------------------------------
# Whole objects
