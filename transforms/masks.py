"""Segmentation labels from DICOM SEG and RTSTRUCT objects, as label maps on their images.

The pure core of ingest's mask join: ``read_mask_object`` turns a SEG (read with highdicom)
or an RTSTRUCT (closed planar contours) into ``MaskPart``s, one per image (or per frame of
a multi-frame image) it references by original SOP Instance UID; ``label_maps`` lays the
parts for one image onto that image's own pixel grid, frame by frame (RTSTRUCT contours
filled here, pixel centres inside or on an outline, inner outlines as holes, from the
patient geometry of the image or of its frame; contours that name no image go to every
image of the series the structure set lists, and each takes those on its plane)
and refuses a mask whose geometry does not match; ``fit_label_map`` then gives each map the
geometry the pixels get (``pixels.resize_pad``), with nearest neighbour.

Class values are the segment numbers of a SEG and the ROI numbers of an RTSTRUCT (0 is
background); where two overlap, the higher value wins. Their names (SegmentLabel, ROIName)
are free text a person typed: ``class_names`` keeps one only if de-identification's content
check passes it whole, else the class is ``class N``.
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
from transforms.deid.content import ContentCheck
from transforms.deid.identifiers import PatientIdentifiers
from transforms.dicom_io import METRICS_NAMESPACE

STAGE_MASKS = "masks"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"  # Segmentation Type LABELMAP
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
    if sop_class in (SEG_SOP_CLASS, LABEL_MAP_SEG_SOP_CLASS):
        return SEG
    if sop_class == RTSTRUCT_SOP_CLASS:
        return RTSTRUCT
    return None


@dataclass(frozen=True)
class MaskPart:
    """What one SEG or RTSTRUCT says about one image, or one frame of it.

    ``pixels``: a SEG's label map on the image's grid (rows x cols uint8). ``contours``:
    an RTSTRUCT's closed planar contours, (class value, points N x 3 in mm). ``frame``: the
    frame number (1-based, as DICOM counts) the part references, None where it names none
    (a single-frame image; contours of a multi-frame image are then found by their plane).
    ``source`` and ``member`` say where the object came from (for its dead letters only).
    ``by_plane``: contours that name no image (Contour Image Sequence is optional), sent to
    every image of the series the structure set lists: an image takes those that lie on its
    plane (or on one of its frames') and no others.
    """

    kind: str
    referenced: str  # the image's original SOP Instance UID
    source: str
    member: str | None
    pixels: np.ndarray | None = None
    contours: tuple[tuple[int, np.ndarray], ...] = ()
    frame: int | None = None
    by_plane: bool = False


def read_mask_object(ds: Dataset, source: str, member: str | None) -> list[MaskPart]:
    """The parts of one SEG or RTSTRUCT, one per referenced image.

    Raises:
        MaskError: ``mask_unreadable`` (not a readable SEG/RTSTRUCT), ``mask_unsupported``
            (SEG frames that cannot be laid on source images or frames, over 255 classes).
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
        # a LABELMAP SEG may describe its background as segment 0: not a class
        numbers = [n for n in (int(s.SegmentNumber) for s in seg.SegmentSequence) if n > 0]
        frames = _seg_source_frames(seg)
        # a FRACTIONAL SEG's values (probability or occupancy, read as 0-1) mark a pixel
        # from one half up; BINARY and LABELMAP values are 0 or 1 per segment
        fractional = str(seg.get("SegmentationType", "")) == "FRACTIONAL"
        threshold = 0.5 - 1e-6 if fractional else 0
    except Exception as e:  # highdicom's messages may quote values: name the type only
        raise MaskError(MASK_UNREADABLE, f"the SEG cannot be read ({type(e).__name__})") from None
    if not uids:
        raise MaskError(MASK_WITHOUT_IMAGE, "the SEG references no source image")
    if max(numbers, default=0) > 255:
        raise MaskError(MASK_UNSUPPORTED, "more than 255 segments do not fit a uint8 label map")
    parts = []
    for sop in uids:
        numbered = sorted(frames.get(sop, ()))
        try:
            if numbered:  # frames of a multi-frame image: the rest of its frames are empty
                stack = seg.get_pixels_by_source_frame(
                    sop, numbered, segment_numbers=numbers, combine_segments=False
                )
            else:
                stack = seg.get_pixels_by_source_instance(
                    [sop], segment_numbers=numbers, combine_segments=False
                )
        except Exception as e:
            what = "frames of their source image" if numbered else "single source images"
            raise MaskError(
                MASK_UNSUPPORTED,
                f"the SEG's frames cannot be laid on {what} ({type(e).__name__})",
            ) from None
        for i, frame in enumerate(numbered or [None]):
            label = np.zeros(stack.shape[1:3], np.uint8)
            for j, number in enumerate(numbers):  # ascending: the higher segment wins overlaps
                label[stack[i, ..., j] > threshold] = number
            parts.append(MaskPart(SEG, sop, source, member, pixels=label, frame=frame))
    return parts


def _seg_source_frames(seg) -> dict[str, set[int]]:
    """Source SOP Instance UID → the frame numbers of it that the SEG's frames derive from
    (none for single-frame sources)."""
    found: dict[str, set[int]] = {}
    for item in seg.get("PerFrameFunctionalGroupsSequence", []):
        for derivation in item.get("DerivationImageSequence", []):
            for ref in derivation.get("SourceImageSequence", []):
                numbers = ref.get("ReferencedFrameNumber")
                if numbers is None or numbers == "":
                    continue
                numbers = [numbers] if isinstance(numbers, int) else list(numbers)
                sop = str(ref.ReferencedSOPInstanceUID)
                found.setdefault(sop, set()).update(int(n) for n in numbers)
    return found


def _rtstruct_parts(ds: Dataset, source: str, member: str | None) -> list[MaskPart]:
    by_image: dict[tuple[str, int | None], list[tuple[int, np.ndarray]]] = {}
    loose: list[tuple[int, np.ndarray]] = []  # contours that name no image
    try:
        for roi in ds.ROIContourSequence:
            value = int(roi.ReferencedROINumber)
            if not 0 < value <= 255:
                raise MaskError(MASK_UNSUPPORTED, "an ROI number outside 1-255")
            for contour in roi.get("ContourSequence", []):
                if contour.ContourGeometricType != "CLOSED_PLANAR":
                    continue  # points and open lines enclose nothing
                points = np.asarray(contour.ContourData, np.float64).reshape(-1, 3)
                images = contour.get("ContourImageSequence") or []
                if not images:
                    loose.append((value, points))
                    continue
                sop = str(images[0].ReferencedSOPInstanceUID)
                frame = images[0].get("ReferencedFrameNumber")
                frame = None if frame in (None, "") else int(frame)  # one frame: one plane
                by_image.setdefault((sop, frame), []).append((value, points))
        listed = _series_images(ds) if loose else []
    except MaskError:
        raise
    except Exception as e:
        raise MaskError(
            MASK_UNREADABLE, f"the RT structure set cannot be read ({type(e).__name__})"
        ) from None
    if loose and not listed:
        raise MaskError(
            MASK_WITHOUT_IMAGE, "a contour names no image and the structure set lists none"
        )
    if not by_image and not loose:
        raise MaskError(MASK_WITHOUT_IMAGE, "the RT structure set has no closed contour")
    parts = [
        MaskPart(RTSTRUCT, sop, source, member, contours=tuple(found), frame=frame)
        for (sop, frame), found in by_image.items()
    ]
    return parts + [
        MaskPart(RTSTRUCT, sop, source, member, contours=tuple(loose), by_plane=True)
        for sop in listed
    ]


def _series_images(ds: Dataset) -> list[str]:
    """The SOP Instance UIDs of the images the structure set lists as its series' (Referenced
    Frame of Reference → RT Referenced Study → RT Referenced Series → Contour Image), each
    once, in order."""
    found: dict[str, None] = {}
    for frame_of_reference in ds.get("ReferencedFrameOfReferenceSequence") or []:
        for study in frame_of_reference.get("RTReferencedStudySequence") or []:
            for series in study.get("RTReferencedSeriesSequence") or []:
                for image in series.get("ContourImageSequence") or []:
                    uid = str(image.get("ReferencedSOPInstanceUID", "") or "").strip()
                    if uid:
                        found[uid] = None
    return list(found)


def class_names(ds: Dataset, check: ContentCheck) -> dict[int, str]:
    """Class value → name, from a SEG's segment labels or an RTSTRUCT's ROI names, each
    kept only if de-identification's content check passes it whole (the object's own
    patient identifiers included); a name that fails, or none, is ``class N``."""
    kind = mask_kind(ds)
    if kind == SEG:
        items, number, name = ds.get("SegmentSequence", []), "SegmentNumber", "SegmentLabel"
    elif kind == RTSTRUCT:
        items, number, name = ds.get("StructureSetROISequence", []), "ROINumber", "ROIName"
    else:
        return {}
    own = PatientIdentifiers.of(ds)
    out = {}
    for item in items:
        try:
            value = int(item.get(number))
        except (TypeError, ValueError):
            continue  # no class without a number (the parts refuse such objects)
        if not 0 < value <= 255:
            continue
        text = str(item.get(name, "") or "").strip()
        kept = check.check(text, own, tokenwise=False).value if text else None
        out[value] = kept or f"class {value}"
    return out


def polygon_fill(vertices: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Pixels inside one closed polygon; see ``contours_fill``."""
    return contours_fill([vertices], rows, cols)


def contours_fill(polygons: list[np.ndarray], rows: int, cols: int) -> np.ndarray:
    """Pixels inside closed polygons ((x, y) vertices in pixel units, (0, 0) the centre of
    the top-left pixel) taken together, as a bool mask: a pixel is inside when its centre
    is inside (even-odd over all the outlines: a polygon inside another is a hole, as
    rt-utils, Plastimatch and Slicer write a ring) or on an outline (an outline traced
    through the centres of a mask's edge pixels, as rt-utils writes one, gives that mask
    back). One row of centres at a time."""
    mask = np.zeros((rows, cols), bool)
    kept = [np.asarray(p, np.float64) for p in polygons if len(p) >= 3]
    kept = [p for p in kept if np.isfinite(p).all()]
    if not kept:
        return mask
    xs = np.concatenate([p[:, 0] for p in kept])
    ys = np.concatenate([p[:, 1] for p in kept])
    x2 = np.concatenate([np.roll(p[:, 0], -1) for p in kept])
    y2 = np.concatenate([np.roll(p[:, 1], -1) for p in kept])
    low, high = np.minimum(ys, y2), np.maximum(ys, y2)
    flat = np.abs(y2 - ys) < _ON
    centres = np.arange(cols, dtype=np.float64)
    first, last = max(0, int(np.floor(low.min()))), min(rows - 1, int(np.ceil(high.max())))
    for row in range(first, last + 1):
        touching = (low <= row + _ON) & (high >= row - _ON)
        if not touching.any():
            continue
        crosses = (ys <= row) != (y2 <= row)
        x_at = xs[crosses] + (row - ys[crosses]) * (x2[crosses] - xs[crosses]) / (
            y2[crosses] - ys[crosses]
        )
        line = (centres[None, :] < x_at[:, None]).sum(axis=0) % 2 == 1
        on_flat = touching & flat
        for a, b in zip(xs[on_flat], x2[on_flat], strict=True):
            line |= (centres >= min(a, b) - _ON) & (centres <= max(a, b) + _ON)
        slanted = touching & ~flat
        t = (row - ys[slanted]) / (y2[slanted] - ys[slanted])
        x_on = xs[slanted] + t * (x2[slanted] - xs[slanted])
        nearest = np.round(x_on)
        hit = (np.abs(x_on - nearest) < _ON) & (nearest >= 0) & (nearest < cols)
        line[nearest[hit].astype(int)] = True
        mask[row] = line
    return mask


_ON = 0.01  # a centre this close to an outline (pixels) lies on it: contours in mm carry
# rounding from the writer's float32 matrices and decimal strings


class _Plane(NamedTuple):
    """Where one frame lies in patient coordinates (mm)."""

    origin: np.ndarray  # the centre of its top-left pixel
    along_row: np.ndarray  # unit vector along a row (columns grow)
    along_col: np.ndarray  # unit vector down a column (rows grow)
    row_mm: float  # spacing between rows
    col_mm: float  # spacing between columns

    def distance(self, points: np.ndarray) -> float:
        """The largest distance of the points from this plane."""
        normal = np.cross(self.along_row, self.along_col)
        return float(np.abs((points - self.origin[None, :]) @ normal).max())

    def pixels(self, points: np.ndarray) -> np.ndarray:
        """Patient coordinates → (x = column, y = row) in pixel units."""
        offset = points - self.origin[None, :]
        return np.stack(
            [offset @ self.along_row / self.col_mm, offset @ self.along_col / self.row_mm], axis=1
        )


def _functional(image: Dataset, index: int, sequence: str, keyword: str):
    """A frame's value from its per-frame functional group, else from the shared one."""
    for groups, at in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        items = image.get(groups) or []
        if at < len(items) and items[at].get(sequence):
            value = items[at].get(sequence)[0].get(keyword)
            if value is not None:
                return value
    return None


def frame_count(image: Dataset) -> int:
    """The image's Number of Frames (1 when absent)."""
    try:
        return max(1, int(image.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        raise MaskError(
            MASK_GEOMETRY_MISMATCH, "the image's Number of Frames is not a number"
        ) from None


def _plane(image: Dataset, index: int) -> _Plane:
    """The plane of frame ``index`` (0-based): an enhanced image's per-frame functional
    groups, else the image's own attributes (one frame only).

    Raises:
        MaskError: ``mask_geometry_mismatch`` without patient geometry; ``mask_unsupported``
            for a multi-frame image that gives no plane per frame.
    """
    if "PerFrameFunctionalGroupsSequence" in image:
        position = _functional(image, index, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _functional(
            image, index, "PlaneOrientationSequence", "ImageOrientationPatient"
        )
        spacing = _functional(image, index, "PixelMeasuresSequence", "PixelSpacing")
    elif frame_count(image) > 1:
        raise MaskError(
            MASK_UNSUPPORTED,
            "contours on a multi-frame image without a plane per frame (no functional groups)",
        )
    else:
        position = image.get("ImagePositionPatient")
        orientation = image.get("ImageOrientationPatient")
        spacing = image.get("PixelSpacing")
    try:
        orientation = np.asarray(orientation, np.float64)
        row_mm, col_mm = (float(v) for v in spacing)
        plane = _Plane(
            np.asarray(position, np.float64).reshape(3), orientation[:3], orientation[3:6],
            row_mm, col_mm,
        )  # fmt: skip
    except (AttributeError, ValueError, TypeError):
        raise MaskError(
            MASK_GEOMETRY_MISMATCH, "contours in patient coordinates on an image without them"
        ) from None
    if (
        orientation.shape != (6,)
        or not np.isfinite([*plane.origin, *orientation, row_mm, col_mm]).all()
    ):
        raise MaskError(
            MASK_GEOMETRY_MISMATCH, "contours in patient coordinates on an image without them"
        )
    return plane


def _frame_index(frame: int | None, count: int, what: str) -> int:
    """A part's frame number (1-based, or None) → the frame's index (0-based)."""
    if frame is None:
        if count > 1:
            raise MaskError(
                MASK_GEOMETRY_MISMATCH, f"{what} that names no frame of a {count}-frame image"
            )
        return 0
    if not 1 <= frame <= count:
        raise MaskError(MASK_GEOMETRY_MISMATCH, f"{what} of frame {frame} of a {count}-frame image")
    return frame - 1


class _FramePlanes:
    """An image's frame planes, each read once; stacked once a contour must be placed by
    its plane (a multi-frame image's contour that names no frame)."""

    def __init__(self, image: Dataset, count: int):
        self._image, self._count = image, count
        self._read: dict[int, _Plane] = {}
        self._stacked: tuple[np.ndarray, np.ndarray] | None = None

    def __getitem__(self, index: int) -> _Plane:
        if index not in self._read:
            self._read[index] = _plane(self._image, index)
        return self._read[index]

    def nearest(self, points: np.ndarray) -> tuple[int, float]:
        """The frame whose plane is nearest the points, and their largest distance from it."""
        if self._stacked is None:
            planes = [self[i] for i in range(self._count)]
            normals = np.array([np.cross(p.along_row, p.along_col) for p in planes])
            origins = np.array([p.origin for p in planes])
            self._stacked = normals, np.einsum("ij,ij->i", origins, normals)
        normals, offsets = self._stacked
        distances = np.abs(points @ normals.T - offsets[None, :]).max(axis=0)
        index = int(np.argmin(distances))
        return index, float(distances[index])


def _contour_frame(
    frame: int | None, count: int, points: np.ndarray, planes: _FramePlanes
) -> tuple[int, _Plane]:
    """The frame a contour lies on and its plane: the frame it names, else (a multi-frame
    image) the one whose plane holds it."""
    if frame is not None or count == 1:
        index = _frame_index(frame, count, "a contour")
        if planes[index].distance(points) > PLANE_TOLERANCE_MM:
            raise MaskError(MASK_GEOMETRY_MISMATCH, "a contour lies off its image's plane")
        return index, planes[index]
    index, distance = planes.nearest(points)
    if distance > PLANE_TOLERANCE_MM:
        raise MaskError(MASK_GEOMETRY_MISMATCH, "a contour lies off every frame's plane")
    return index, planes[index]


def _on_image(count: int, points: np.ndarray, planes: _FramePlanes) -> bool:
    """Whether a contour lies on the image's plane, or on one of its frames'."""
    distance = planes[0].distance(points) if count == 1 else planes.nearest(points)[1]
    return distance <= PLANE_TOLERANCE_MM


def label_maps(image: Dataset, parts: list[MaskPart]) -> dict[int, np.ndarray]:
    """The label maps (rows x cols uint8) of ``image``'s frames that the parts mark, by
    frame index (0-based, as ``pixels.frame_indices`` counts); a frame not in it is all
    background (a SEG leaves out empty frames).

    Args:
        image: the image with its original geometry (Rows, Columns, Number of Frames and
            patient geometry, per frame for an enhanced image).
        parts: one or more parts referencing it.

    Raises:
        MaskError: ``mask_geometry_mismatch`` for a SEG of another size, a frame the image
            does not have, a SEG frame naming no frame of a multi-frame image, or contours
            that are not on the plane of the image or of any of its frames;
            ``mask_unsupported`` for contours on a multi-frame image without per-frame
            planes.
    """
    rows, cols = int(image.Rows), int(image.Columns)
    count = frame_count(image)
    out: dict[int, np.ndarray] = {}
    planes = _FramePlanes(image, count)  # each read once, however many contours it holds
    for part in parts:
        if part.pixels is not None:
            if part.pixels.shape != (rows, cols):
                shape = "x".join(map(str, part.pixels.shape))
                raise MaskError(
                    MASK_GEOMETRY_MISMATCH, f"a {shape} SEG frame on a {rows}x{cols} image"
                )
            index = _frame_index(part.frame, count, "a SEG frame")
            out[index] = np.maximum(out.get(index, 0), part.pixels).astype(np.uint8)
        outlines: dict[tuple[int, int], list[np.ndarray]] = {}
        for value, points in part.contours:
            if part.by_plane and not _on_image(count, points, planes):
                continue  # a contour of another image of the series
            index, plane = _contour_frame(part.frame, count, points, planes)
            outlines.setdefault((index, value), []).append(plane.pixels(points))
        for (index, value), polygons in sorted(outlines.items()):  # the higher value wins
            inside = contours_fill(polygons, rows, cols)
            label = out.setdefault(index, np.zeros((rows, cols), np.uint8))
            label[inside & (label < value)] = value
    return out


def label_map(image: Dataset, parts: list[MaskPart], frame: int = 0) -> np.ndarray:
    """The label map of one frame (index, 0-based) of ``image``; see ``label_maps``."""
    maps = label_maps(image, parts)
    return maps.get(frame, np.zeros((int(image.Rows), int(image.Columns)), np.uint8))


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
    """An image's segmentation label, joined on its original UID: the label maps on the
    image's own grid of the frames its masks mark (``label_maps``: by 0-based frame index,
    any other frame all background), and what it came from (``seg`` or ``rtstruct``)."""

    maps: dict[int, np.ndarray]
    kind: str

    def frame(self, index: int, rows: int, cols: int) -> np.ndarray:
        """Frame ``index``'s map (all background where no mask marks that frame)."""
        found = self.maps.get(index)
        return found if found is not None else np.zeros((rows, cols), np.uint8)


def uid_digest(uid: str) -> bytes:
    """What the join keys on: no original identifier goes through a shuffle or side input."""
    return hashlib.sha256(uid.strip().encode()).digest()[:16]


Parsed = tuple[tuple[str, str | None], Dataset]


CLASS_NAMES = "class_names"  # ReadMaskPartsFn's output of (class value, checked name)


class ReadMaskPartsFn(DeadLetterFn):
    """((source, member), Dataset) of a SEG/RTSTRUCT → (digest of referenced UID, MaskPart);
    on ``CLASS_NAMES``, (class value, name) for each class the object names, as
    ``class_names`` checks them (the content check is built once per worker)."""

    stage = STAGE_MASKS
    failed_counter = "mask_objects_dead_letters"

    def setup(self):
        self._check = ContentCheck.load()

    def where(self, element: Parsed) -> tuple[str, str | None]:
        return element[0]

    def work(self, element: Parsed) -> Iterator:
        (source, member), ds = element
        for part in read_mask_object(ds, source, member):
            yield uid_digest(part.referenced), part
        for value, name in sorted(class_names(ds, self._check).items()):
            yield beam.pvalue.TaggedOutput(CLASS_NAMES, (value, name))


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
            "segmentation_object",
            "a SEG or RTSTRUCT object: a label of images, never an image itself "
            "(ingest --task segmentation reads it)",
        )
        yield


class JoinMasksFn(beam.DoFn):
    """((source, member), Dataset) of an image + the parts referencing it (side input) →
    ((source, member), (Dataset, MaskLabel or None)); the digest of every matched UID on
    ``MATCHED``; a mask object that does not fit (any of its parts) is one dead letter of
    that object, and the image keeps the masks that do fit, or goes on without one."""

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
        by_object: dict[tuple[str, str | None], list[MaskPart]] = {}
        for part in found:  # a SEG of a multi-frame image gives a part per frame
            by_object.setdefault((part.source, part.member), []).append(part)
        for (source, member), own in by_object.items():  # one that does not fit spoils itself
            try:
                maps = label_maps(ds, own)
            except MaskError as e:
                letter = DeadLetter(source, member, STAGE_MASKS, e.error_type, e.message)
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
                continue
            loose = [p for p in own if p.by_plane]
            if loose and _placed(ds, loose):
                yield beam.pvalue.TaggedOutput(PLACED, (source, member))
            if not maps and len(loose) == len(own):
                continue  # the series' contours lie on other images: this one is unlabeled
            if label is None:
                label = MaskLabel(maps, own[0].kind)
            else:
                merged = dict(label.maps)
                for index, pixels in maps.items():
                    before = merged.get(index)
                    merged[index] = pixels if before is None else np.maximum(before, pixels)
                label = MaskLabel(merged, label.kind)
        (self._masked if label is not None else self._unmasked).inc()
        yield key, (ds, label)


MATCHED = "matched"
PLACED = "placed"  # (source, member) of an object a contour naming no image landed from


def _placed(image: Dataset, parts: list[MaskPart]) -> bool:
    """Whether any of the by-plane parts' contours lies on the image (or a frame of it)."""
    count = frame_count(image)
    planes = _FramePlanes(image, count)
    return any(_on_image(count, points, planes) for p in parts for _, points in p.contours)


def _unplaced_letters(element: tuple[tuple[str, str | None], dict]) -> Iterator[DeadLetter]:
    (source, member), grouped = element
    if grouped["loose"] and not grouped["placed"]:
        yield DeadLetter(
            source,
            member,
            STAGE_MASKS,
            MASK_GEOMETRY_MISMATCH,
            "no contour that names no image lies on an image of the series it lists",
        )


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
    image never shows up are dead letters ``mask_without_image`` of their objects; an object
    whose contours name no image and none of them lies on an image of its series is a dead
    letter ``mask_geometry_mismatch``.

    Args:
        parts: ``(digest, MaskPart)`` from ``ReadMaskPartsFn``.
    """

    def __init__(self, parts: beam.PCollection):
        super().__init__()
        self._parts = parts

    def expand(self, images: beam.PCollection) -> Joined:
        side = beam.pvalue.AsMultiMap(self._parts)
        joined = images | "Lookup" >> beam.ParDo(JoinMasksFn(), side).with_outputs(
            MATCHED, PLACED, DEAD_LETTER, main="joined"
        )
        where = self._parts | "PartSources" >> beam.Map(
            lambda kv: (kv[0], (kv[1].source, kv[1].member))
        )
        matched = _keys(joined[MATCHED], "Matched")
        unmatched = (
            {"parts": where, "matched": matched}
            | "GroupByImage" >> beam.CoGroupByKey()
            | "Unmatched" >> beam.FlatMap(_unmatched_letters)
        )
        loose = self._parts | "LooseParts" >> beam.FlatMap(
            lambda kv: [(kv[1].source, kv[1].member)] if kv[1].by_plane else []
        )
        unplaced = (
            {"loose": _keys(loose, "Loose"), "placed": _keys(joined[PLACED], "Placed")}
            | "GroupByObject" >> beam.CoGroupByKey()
            | "Unplaced" >> beam.FlatMap(_unplaced_letters)
        )
        dead = (joined[DEAD_LETTER], unmatched, unplaced) | "MaskDeadLetters" >> beam.Flatten()
        return Joined(joined.joined, dead)


def _keys(keys: beam.PCollection, name: str) -> beam.PCollection:
    """Each distinct key once, as ``(key, True)``: one side of a CoGroupByKey."""
    return (
        keys | f"Distinct{name}" >> beam.Distinct() | f"{name}Keys" >> beam.Map(lambda k: (k, True))
    )


def name_classes(counted: list[tuple[tuple[int, str], int]]) -> dict[str, str]:
    """((class value, checked name), how many objects gave it) → {"value": name}: the name
    most objects give that class (ties: the first in sorted order), in numeric order."""
    counts: dict[int, dict[str, int]] = {}
    for (value, name), n in counted:
        names = counts.setdefault(int(value), {})
        names[name] = names.get(name, 0) + n
    return {
        str(value): min(names, key=lambda name: (-names[name], name))
        for value, names in sorted(counts.items())
    }


class ClassNames(beam.PTransform):
    """``CLASS_NAMES`` pairs → a one-element PCollection: the manifest's class names
    (``name_classes``; empty when no object was read)."""

    def expand(self, pairs: beam.PCollection) -> beam.PCollection[dict[str, str]]:
        return (
            pairs
            | "Count" >> beam.combiners.Count.PerElement()
            | "All" >> beam.combiners.ToList()
            | "Name" >> beam.Map(name_classes)
        )
