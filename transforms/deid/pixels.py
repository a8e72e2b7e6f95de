"""Burned-in text risk and fixed-box pixel masking."""

from collections.abc import Iterable

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

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


def mask_pixels(ds: Dataset, boxes: Iterable[tuple[float, float, float, float]]) -> None:
    """Blanks the boxes on every frame and stores the pixels uncompressed (valid encoding)."""
    arr = ds.pixel_array.copy()
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[np.newaxis]
    # Blank means black: the lowest value, or the highest where MONOCHROME1 inverts.
    if int(ds.get("PixelRepresentation", 0)) == 1:
        fill = np.iinfo(frames.dtype).min if frames.dtype.kind == "i" else frames.min()
    elif str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        fill = (1 << int(ds.get("BitsStored", ds.BitsAllocated))) - 1
    else:
        fill = 0
    for x0, y0, x1, y1 in boxes:
        r0, r1 = round(y0 * rows), round(y1 * rows)
        c0, c1 = round(x0 * cols), round(x1 * cols)
        frames[:, r0:r1, c0:c1, ...] = fill
    if "YBR" in str(ds.get("PhotometricInterpretation", "")):
        ds.PhotometricInterpretation = "RGB"  # pixel_array converted it
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        ds.PlanarConfiguration = 0
    ds.PixelData = frames.astype(frames.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OB" if int(ds.BitsAllocated) == 8 else "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


# ---------------------------------------------------------------------------------------
# Whole objects
