"""Segmentation labels from DICOM SEG and RTSTRUCT objects, as label maps on their images.

The pure core of ingest's mask join: ``read_mask_object`` turns a SEG (read with highdicom)
or an RTSTRUCT (closed planar contours) into ``MaskPart``s, one per image it references by
original SOP Instance UID; ``label_map`` lays the parts for one image onto that image's own
pixel grid (RTSTRUCT contours filled here, pixel centres inside, from the image's patient
geometry) and refuses a mask whose geometry does not match; ``fit_label_map`` then gives
the map the geometry the pixels get (``pixels.resize_pad``), with nearest neighbour.

Class values are the segment numbers of a SEG and the ROI numbers of an RTSTRUCT (0 is
background); where two overlap, the higher value wins. Nothing here keeps a segment or ROI
name: they are free text a person typed (de-identification's business), and the map needs
only numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from pydicom.dataset import Dataset

from transforms.composite import NamedOutputs
from transforms.deadletter import DEAD_LETTER, DeadLetter, DeadLetterFn, StageError
from transforms.dicom_io import METRICS_NAMESPACE

STAGE_MASKS = "masks"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
SEG, RTSTRUCT, NONE = "seg", "rtstruct", "none"  # index column mask_source
# Dead-letter error types (stage "masks").
MASK_UNREADABLE = "mask_unreadable"
MASK_GEOMETRY_MISMATCH = "mask_geometry_mismatch"
MASK_WITHOUT_IMAGE = "mask_without_image"
MASK_UNSUPPORTED = "mask_unsupported"
PLANE_TOLERANCE_MM = 0.5  # how far off an image's plane a contour point may lie


class MaskError(StageError):
    def __init__(self, error_type: str, message: str):
        super().__init__(error_type, message, STAGE_MASKS)


def mask_kind(ds: Dataset) -> str | None:
    """``seg`` or ``rtstruct`` for a segmentation object (never a training image), else None."""
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class == SEG_SOP_CLASS:
        return SEG
    if sop_class == RTSTRUCT_SOP_CLASS:
        return RTSTRUCT
    return None


@dataclass(frozen=True)
class MaskPart:
    """What one SEG or RTSTRUCT says about one image.

    ``pixels``: a SEG's label map on the image's grid (rows x cols uint8). ``contours``:
    an RTSTRUCT's closed planar contours, (class value, points N x 3 in mm). ``source`` and
    ``member`` say where the object came from (for its dead letters only).
    """

    kind: str
    referenced: str  # the image's original SOP Instance UID
    source: str
    member: str | None
    pixels: np.ndarray | None = None
    contours: tuple[tuple[int, np.ndarray], ...] = ()


def read_mask_object(ds: Dataset, source: str, member: str | None) -> list[MaskPart]:
    """The parts of one SEG or RTSTRUCT, one per referenced image.

    Raises:
        MaskError: ``mask_unreadable`` (not a readable SEG/RTSTRUCT), ``mask_unsupported``
            (a SEG of frames of a multi-frame image, a fractional SEG over 255 classes).
    """
    kind = mask_kind(ds)
    if kind == SEG:
        return _seg_parts(ds, source, member)
    if kind == RTSTRUCT:
        return _rtstruct_parts(ds, source, member)
    raise MaskError(MASK_UNREADABLE, "not a segmentation or RT structure set object")


def _seg_parts(ds: Dataset, source: str, member: str | None) -> list[MaskPart]:
    import highdicom as hd

    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
        uids = [str(sop) for _, _, sop in seg.get_source_image_uids()]
        numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    except Exception as e:  # highdicom's messages may quote values: name the type only
        raise MaskError(MASK_UNREADABLE, f"the SEG cannot be read ({type(e).__name__})") from None
    if not uids:
        raise MaskError(MASK_WITHOUT_IMAGE, "the SEG references no source image")
    if max(numbers, default=0) > 255:
        raise MaskError(MASK_UNSUPPORTED, "more than 255 segments do not fit a uint8 label map")
    parts = []
    for sop in uids:
        try:
            stack = seg.get_pixels_by_source_instance(
                [sop], segment_numbers=numbers, combine_segments=False
            )
        except Exception as e:
            raise MaskError(
                MASK_UNSUPPORTED,
                f"the SEG's frames cannot be laid on single source images ({type(e).__name__})",
            ) from None
        label = np.zeros(stack.shape[1:3], np.uint8)
        for i, number in enumerate(numbers):  # ascending: the higher segment wins overlaps
            label[stack[0, ..., i] > 0] = number
        parts.append(MaskPart(SEG, sop, source, member, pixels=label))
    return parts


def _rtstruct_parts(ds: Dataset, source: str, member: str | None) -> list[MaskPart]:
    by_image: dict[str, list[tuple[int, np.ndarray]]] = {}
    try:
        for roi in ds.ROIContourSequence:
            value = int(roi.ReferencedROINumber)
            if not 0 < value <= 255:
                raise MaskError(MASK_UNSUPPORTED, "an ROI number outside 1-255")
            for contour in roi.get("ContourSequence", []):
                if contour.ContourGeometricType != "CLOSED_PLANAR":
                    continue  # points and open lines enclose nothing
                images = contour.get("ContourImageSequence") or []
                if not images:
                    raise MaskError(MASK_WITHOUT_IMAGE, "a contour references no image")
                points = np.asarray(contour.ContourData, np.float64).reshape(-1, 3)
                sop = str(images[0].ReferencedSOPInstanceUID)
                by_image.setdefault(sop, []).append((value, points))
    except MaskError:
        raise
    except Exception as e:
        raise MaskError(
            MASK_UNREADABLE, f"the RT structure set cannot be read ({type(e).__name__})"
        ) from None
    if not by_image:
        raise MaskError(MASK_WITHOUT_IMAGE, "the RT structure set has no closed contour")
    return [
        MaskPart(RTSTRUCT, sop, source, member, contours=tuple(found))
        for sop, found in by_image.items()
    ]


def polygon_fill(vertices: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Pixels whose centres lie inside the closed polygon ((x, y) vertices in pixel units,
    (0, 0) the centre of the top-left pixel), as a bool mask. Even-odd crossing test, one
    row of centres at a time."""
    mask = np.zeros((rows, cols), bool)
    if len(vertices) < 3:
        return mask
    xs, ys = vertices[:, 0], vertices[:, 1]
    x2, y2 = np.roll(xs, -1), np.roll(ys, -1)
    centres = np.arange(cols, dtype=np.float64)
    first, last = max(0, int(np.floor(ys.min()))), min(rows - 1, int(np.ceil(ys.max())))
    for row in range(first, last + 1):
        crosses = (ys <= row) != (y2 <= row)
        if not crosses.any():
            continue
        x_at = xs[crosses] + (row - ys[crosses]) * (x2[crosses] - xs[crosses]) / (
            y2[crosses] - ys[crosses]
        )
        mask[row] = (centres[None, :] < x_at[:, None]).sum(axis=0) % 2 == 1
    return mask


def _pixel_coordinates(image: Dataset, points: np.ndarray) -> np.ndarray:
    """Patient coordinates (mm) → (x = column, y = row) on the image; refuses points off its
    plane or an image without patient geometry."""
    try:
        origin = np.asarray(image.ImagePositionPatient, np.float64)
        orientation = np.asarray(image.ImageOrientationPatient, np.float64)
        row_mm, col_mm = (float(v) for v in image.PixelSpacing)
    except (AttributeError, ValueError, TypeError):
        raise MaskError(
            MASK_GEOMETRY_MISMATCH, "contours in patient coordinates on an image without them"
        ) from None
    along_row, along_col = orientation[:3], orientation[3:]
    normal = np.cross(along_row, along_col)
    offset = points - origin[None, :]
    if np.abs(offset @ normal).max() > PLANE_TOLERANCE_MM:
        raise MaskError(MASK_GEOMETRY_MISMATCH, "a contour lies off its image's plane")
    return np.stack([offset @ along_row / col_mm, offset @ along_col / row_mm], axis=1)


def label_map(image: Dataset, parts: list[MaskPart]) -> np.ndarray:
    """The label map (rows x cols uint8) of ``image`` from the parts that reference it.

    Args:
        image: the image with its original geometry (Rows, Columns, patient geometry).
        parts: one or more parts referencing it.

    Raises:
        MaskError: ``mask_geometry_mismatch`` for a SEG of another size, or contours that
            are not on the image's plane; ``mask_unsupported`` for a multi-frame image.
    """
    rows, cols = int(image.Rows), int(image.Columns)
    if int(image.get("NumberOfFrames", 1) or 1) > 1:
        raise MaskError(MASK_UNSUPPORTED, "masks of multi-frame images are not read yet")
    out = np.zeros((rows, cols), np.uint8)
    for part in parts:
        if part.pixels is not None:
            if part.pixels.shape != (rows, cols):
                shape = "x".join(map(str, part.pixels.shape))
                raise MaskError(
                    MASK_GEOMETRY_MISMATCH, f"a {shape} SEG frame on a {rows}x{cols} image"
                )
            out = np.maximum(out, part.pixels)
        for value, points in part.contours:
            inside = polygon_fill(_pixel_coordinates(image, points), rows, cols)
            out[inside & (out < value)] = value
    return out


def fit_label_map(label: np.ndarray, size: int) -> np.ndarray:
    """The map in the pixels' geometry (``pixels.resize_pad``): aspect kept, scaled to fit
    ``size``, padded centred with background; nearest neighbour, so no new class appears."""
    rows, cols = label.shape
    scale = size / max(rows, cols)
    new_rows, new_cols = max(1, round(rows * scale)), max(1, round(cols * scale))
    # The source pixel whose centre is nearest each target pixel's centre.
    ys = np.minimum(((np.arange(new_rows) + 0.5) * rows / new_rows).astype(int), rows - 1)
    xs = np.minimum(((np.arange(new_cols) + 0.5) * cols / new_cols).astype(int), cols - 1)
    out = np.zeros((size, size), np.uint8)
    top, left = (size - new_rows) // 2, (size - new_cols) // 2
    out[top : top + new_rows, left : left + new_cols] = label[np.ix_(ys, xs)]
    return out


# --- The Beam shell: ingest's mask join ---------------------------------------------------


@dataclass(frozen=True)
class MaskLabel:
    """An image's segmentation label, joined on its original UID: the label map on the
    image's own grid, and what it came from (``seg`` or ``rtstruct``)."""

    pixels: np.ndarray
    kind: str


def uid_digest(uid: str) -> bytes:
    """What the join keys on: no original identifier goes through a shuffle or side input."""
    return hashlib.sha256(uid.strip().encode()).digest()[:16]


Parsed = tuple[tuple[str, str | None], Dataset]


class ReadMaskPartsFn(DeadLetterFn):
    """((source, member), Dataset) of a SEG/RTSTRUCT → (digest of referenced UID, MaskPart)."""

    stage = STAGE_MASKS
    failed_counter = "mask_objects_dead_letters"

    def where(self, element: Parsed) -> tuple[str, str | None]:
        return element[0]

    def work(self, element: Parsed) -> Iterator[tuple[bytes, MaskPart]]:
        (source, member), ds = element
        for part in read_mask_object(ds, source, member):
            yield uid_digest(part.referenced), part


class NotAMaskFn(DeadLetterFn):
    """An image found where only masks were expected (``--masks``): a dead letter."""

    stage = STAGE_MASKS

    def where(self, element: Parsed) -> tuple[str, str | None]:
        return element[0]

    def work(self, element: Parsed) -> Iterator:
        raise MaskError("not_a_mask_object", "not a SEG or RTSTRUCT object, in the masks input")
        yield  # a generator, like every work()


class SegmentationObjectFn(DeadLetterFn):
    """A SEG or RTSTRUCT in a task that reads no masks: never a training image."""

    stage = STAGE_MASKS

    def where(self, element: Parsed) -> tuple[str, str | None]:
        return element[0]

    def work(self, element: Parsed) -> Iterator:
        raise MaskError(
            "segmentation_object", "a SEG or RTSTRUCT object: labels for --task segmentation"
        )
        yield


class JoinMasksFn(beam.DoFn):
    """((source, member), Dataset) of an image + the parts referencing it (side input) →
    ((source, member), (Dataset, MaskLabel or None)); the digest of every matched UID on
    ``MATCHED``; a mask that does not fit is a dead letter of its object (the image keeps
    the masks that do fit, or goes on without one)."""

    def setup(self):
        self._masked = Metrics.counter(METRICS_NAMESPACE, "masks_matched")
        self._unmasked = Metrics.counter(METRICS_NAMESPACE, "masks_missing")

    def process(self, element: Parsed, parts):
        key, ds = element
        digest = uid_digest(str(ds.get("SOPInstanceUID", "")))
        found = list(parts[digest])  # a multimap side input: empty for an unknown key
        label = None
        if found:
            yield beam.pvalue.TaggedOutput(MATCHED, digest)
        for part in found:  # one object that does not fit spoils only itself
            try:
                pixels = label_map(ds, [part])
            except MaskError as e:
                letter = DeadLetter(part.source, part.member, STAGE_MASKS, e.error_type, e.message)
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
                continue
            if label is None:
                label = MaskLabel(pixels, part.kind)
            else:
                label = MaskLabel(np.maximum(label.pixels, pixels), label.kind)
        (self._masked if label is not None else self._unmasked).inc()
        yield key, (ds, label)


MATCHED = "matched"


def _unmatched_letters(element: tuple[bytes, dict]) -> Iterator[DeadLetter]:
    _, grouped = element
    if grouped["matched"]:
        return
    for source, member in sorted(set(grouped["parts"])):
        yield DeadLetter(
            source,
            member,
            STAGE_MASKS,
            MASK_WITHOUT_IMAGE,
            "the mask references an image that is not in the input",
        )


class Joined(NamedTuple):
    joined: beam.PCollection
    dead_letters: beam.PCollection[DeadLetter]


class JoinMasks(NamedOutputs):
    """Images ``((source, member), Dataset)`` joined with the masks that reference them, on
    the images' original SOP Instance UIDs (before de-identification, as labels are).

    The parts travel keyed by a digest of the UID they reference, as a side input (one
    label map per labelled image: the images stay spread over the workers). Parts whose
    image never shows up are dead letters ``mask_without_image`` of their objects.

    Args:
        parts: ``(digest, MaskPart)`` from ``ReadMaskPartsFn``.
    """

    def __init__(self, parts: beam.PCollection):
        super().__init__()
        self._parts = parts

    def expand(self, images: beam.PCollection) -> Joined:
        side = beam.pvalue.AsMultiMap(self._parts)
        joined = images | "Lookup" >> beam.ParDo(JoinMasksFn(), side).with_outputs(
            MATCHED, DEAD_LETTER, main="joined"
        )
        where = self._parts | "PartSources" >> beam.Map(
            lambda kv: (kv[0], (kv[1].source, kv[1].member))
        )
        matched = (
            joined[MATCHED]
            | "DistinctMatches" >> beam.Distinct()
            | "MatchedKeys" >> beam.Map(lambda d: (d, True))
        )
        unmatched = (
            {"parts": where, "matched": matched}
            | "GroupByImage" >> beam.CoGroupByKey()
            | "Unmatched" >> beam.FlatMap(_unmatched_letters)
        )
        dead = (joined[DEAD_LETTER], unmatched) | "MaskDeadLetters" >> beam.Flatten()
        return Joined(joined.joined, dead)
