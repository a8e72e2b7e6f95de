"""Segmentation labels: DICOM SEG and RTSTRUCT objects read into parts, one per image.

The pure core of ingest's mask join starts here: ``read_mask_object`` turns a SEG (read with
highdicom) or an RTSTRUCT (closed planar contours) into ``MaskPart``s, one per image (or per
frame of a multi-frame image) it references by original SOP Instance UID; contours that name
no image go to every image of the series the structure set references. Laying the parts on their
image's grid is ``mask_geometry``; the Beam join is ``mask_join``.

Class values are the segment numbers of a SEG and the ROI numbers of an RTSTRUCT (0 is
background); where two overlap, the higher value wins. Their names (SegmentLabel, ROIName)
are free text a person typed: ``class_names`` keeps one only if de-identification's content
check passes it whole, else the class is ``class N``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from transforms.deadletter import StageError
from transforms.deid.content import ContentCheck
from transforms.deid.identifiers import PatientIdentifiers
from transforms.mask_classes import MASK_WITHOUT_CLASS, MaskClasses, renumbering

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
    every image of the series the structure set references (``referenced`` is then that
    series' UID): an image takes those that lie on its plane (or on one of its frames') and
    no others.
    """

    kind: str
    referenced: str  # the image's original SOP Instance UID (by_plane: its series')
    source: str
    member: str | None
    pixels: np.ndarray | None = None
    contours: tuple[tuple[int, np.ndarray], ...] = ()
    frame: int | None = None
    by_plane: bool = False


def read_mask_object(
    ds: Dataset, source: str, member: str | None, classes: MaskClasses | None = None
) -> list[MaskPart]:
    """The parts of one SEG or RTSTRUCT, one per referenced image; with ``classes``
    (``--mask-classes``), only its segments or ROIs of a class, valued as that class.

    Raises:
        MaskError: ``mask_unreadable`` (not a readable SEG/RTSTRUCT), ``mask_unsupported``
            (SEG frames that cannot be laid on source images or frames, over 255 classes),
            ``mask_without_class`` (with ``classes``: no segment or ROI of a class).
    """
    kind = mask_kind(ds)
    if kind is None:
        raise MaskError(MASK_UNREADABLE, "not a segmentation or RT structure set object")
    renumber = renumbering(ds, classes, kind) if classes is not None else None
    if renumber is not None and not renumber:
        what = "segment" if kind == SEG else "ROI"
        raise MaskError(MASK_WITHOUT_CLASS, f"no {what} has a name --mask-classes gives a class")
    if kind == SEG:
        return _seg_parts(ds, source, member, renumber)
    return _rtstruct_parts(ds, source, member, renumber)


def _seg_parts(
    ds: Dataset, source: str, member: str | None, renumber: dict[int, int] | None
) -> list[MaskPart]:
    import highdicom as hd

    try:
        seg = hd.seg.Segmentation.from_dataset(_little_endian(ds), copy=False)
        uids = [str(sop) for _, _, sop in seg.get_source_image_uids()]
        # Spatial Locations Preserved (0028,135A) is absent from SEGs some tools wrote (the
        # liver SEGs of pydicom's test files): not stated is taken as kept, since each frame
        # must still have its image's size; "NO" stays refused.
        ignore = not _locations_not_preserved(seg)
        # a LABELMAP SEG may describe its background as segment 0: not a class
        numbers = [n for n in (int(s.SegmentNumber) for s in seg.SegmentSequence) if n > 0]
        if renumber is not None:
            numbers = [n for n in numbers if n in renumber]
        values = [renumber[n] if renumber is not None else n for n in numbers]
        frames = _seg_source_frames(seg)
        # a FRACTIONAL SEG's values (probability or occupancy, read as 0-1) mark a pixel
        # from one half up; BINARY and LABELMAP values are 0 or 1 per segment
        fractional = str(seg.get("SegmentationType", "")) == "FRACTIONAL"
        threshold = 0.5 - 1e-6 if fractional else 0
    except Exception as e:  # highdicom's messages may quote values: name the type only
        raise MaskError(MASK_UNREADABLE, f"the SEG cannot be read ({type(e).__name__})") from None
    if not uids:
        raise MaskError(MASK_WITHOUT_IMAGE, "the SEG references no source image")
    if max(values, default=0) > 255:
        raise MaskError(MASK_UNSUPPORTED, "more than 255 segments do not fit a uint8 label map")
    parts = []
    for sop in uids:
        numbered = sorted(frames.get(sop, ()))
        try:
            if numbered:  # frames of a multi-frame image: the rest of its frames are empty
                stack = seg.get_pixels_by_source_frame(
                    sop,
                    numbered,
                    segment_numbers=numbers,
                    combine_segments=False,
                    ignore_spatial_locations=ignore,
                )
            else:
                stack = seg.get_pixels_by_source_instance(
                    [sop],
                    segment_numbers=numbers,
                    combine_segments=False,
                    ignore_spatial_locations=ignore,
                )
        except Exception as e:
            what = "frames of their source image" if numbered else "single source images"
            raise MaskError(
                MASK_UNSUPPORTED,
                f"the SEG's frames cannot be laid on {what} ({type(e).__name__})",
            ) from None
        for i, frame in enumerate(numbered or [None]):
            label = np.zeros(stack.shape[1:3], np.uint8)
            for j in np.argsort(values, kind="stable"):  # the higher class wins overlaps
                label[stack[i, ..., j] > threshold] = values[j]
            parts.append(MaskPart(SEG, sop, source, member, pixels=label, frame=frame))
    return parts


def _locations_not_preserved(seg: Dataset) -> bool:
    """Whether any source reference of the SEG's frames says its spatial locations were
    not preserved."""
    for item in seg.get("PerFrameFunctionalGroupsSequence", []):
        for derivation in item.get("DerivationImageSequence", []):
            for ref in derivation.get("SourceImageSequence", []):
                if str(ref.get("SpatialLocationsPreserved", "")).upper() == "NO":
                    return True
    return False


def _little_endian(ds: Dataset) -> Dataset:
    """The SEG in Explicit VR Little Endian (highdicom parses no other byte order): a Big
    Endian one's frames decoded by pydicom and stored again, bits packed as before."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian

    meta = ds.get("file_meta")
    if meta is None or meta.get("TransferSyntaxUID") != ExplicitVRBigEndian:
        return ds
    from pydicom.pixels import pack_bits

    pixels = ds.pixel_array
    out = Dataset()
    out.update(ds)
    out.file_meta = copy.deepcopy(meta)
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if int(ds.BitsAllocated) == 1:
        out.PixelData = pack_bits(pixels.ravel())
    else:
        out.PixelData = pixels.astype(f"<u{int(ds.BitsAllocated) // 8}").tobytes()
    out["PixelData"].VR = "OB" if int(ds.BitsAllocated) <= 8 else "OW"
    return out


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


def _rtstruct_parts(
    ds: Dataset, source: str, member: str | None, renumber: dict[int, int] | None
) -> list[MaskPart]:
    by_image: dict[tuple[str, int | None], list[tuple[int, np.ndarray]]] = {}
    loose: list[tuple[int, np.ndarray]] = []  # contours that name no image
    try:
        for roi in ds.ROIContourSequence:
            value = int(roi.ReferencedROINumber)
            if renumber is not None:
                if value not in renumber:
                    continue  # an ROI of no class
                value = renumber[value]
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
        listed = _referenced_series(ds) if loose else []
    except MaskError:
        raise
    except Exception as e:
        raise MaskError(
            MASK_UNREADABLE, f"the RT structure set cannot be read ({type(e).__name__})"
        ) from None
    if loose and not listed:
        raise MaskError(
            MASK_WITHOUT_IMAGE,
            "a contour names no image and the structure set references no series",
        )
    if not by_image and not loose:
        raise MaskError(MASK_WITHOUT_IMAGE, "the RT structure set has no closed contour")
    parts = [
        MaskPart(RTSTRUCT, sop, source, member, contours=tuple(found), frame=frame)
        for (sop, frame), found in by_image.items()
    ]
    return parts + [
        MaskPart(RTSTRUCT, series, source, member, contours=tuple(loose), by_plane=True)
        for series in listed
    ]


def _referenced_series(ds: Dataset) -> list[str]:
    """The Series Instance UIDs the structure set references (Referenced Frame of Reference
    → RT Referenced Study → RT Referenced Series), each once, in order."""
    found: dict[str, None] = {}
    for frame_of_reference in ds.get("ReferencedFrameOfReferenceSequence") or []:
        for study in frame_of_reference.get("RTReferencedStudySequence") or []:
            for series in study.get("RTReferencedSeriesSequence") or []:
                uid = str(series.get("SeriesInstanceUID", "") or "").strip()
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
