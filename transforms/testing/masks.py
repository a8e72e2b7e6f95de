"""Segmentation labels as exports carry them beside their images: a DICOM SEG per image
with a lesion (written with highdicom), or for some CT and MR studies one RTSTRUCT (written
here with pydicom: closed planar contours in patient coordinates), each holding the exact
lesion the phantom drew (``images.phantom_and_lesion``, ``images.lesion_mask``).

Both copy the patient and study of their images, as the devices that write them do, so
their identifiers need de-identification like any other object's.

``enhanced_image`` is a small enhanced multi-frame MR (a plane per frame in its functional
groups), the kind of image a SEG of frames and RTSTRUCT contours per frame label. Synth's
cine runs have no patient coordinate system, and highdicom writes no SEG of several frames
without one, so synth itself labels single-frame images only.
"""

from __future__ import annotations

import functools

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

LESION = "lesion"  # the one segment / ROI name
SEG_SERIES_NUMBER = 99
RTSTRUCT_SERIES_NUMBER = 98
RTSTRUCT_KINDS = ("CT", "MR")  # the kinds with a patient coordinate system
_STUDY_COMPONENT = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (RT references)


@functools.cache
def _segment_description(number: int = 1, label: str = LESION):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )


def seg_dataset(
    source: Dataset,
    mask: np.ndarray,
    series_uid: str,
    sop_uid: str,
    instance_number: int = 1,
    labels: tuple[str, ...] = (LESION,),
) -> Dataset:
    """A binary DICOM SEG of one image: one segment, ``lesion``, or one per label.

    Args:
        source: the image (its pixel module and identifiers; pixel data not needed).
        mask: (rows, cols) 0/1, the image's geometry; (frames, rows, cols) for every frame
            of a multi-frame image; values 0..len(labels) with several labels.
        series_uid, sop_uid, instance_number: the SEG's own (synth derives the UIDs from
            the seed: every SEG of a study is one series).
        labels: the segments' labels (segment N is value N of ``mask``); empty frames are
            left out of a multi-frame SEG, as highdicom does by default.
    """
    import highdicom as hd

    frames = mask[np.newaxis] if mask.ndim == 2 else mask
    if len(labels) > 1:  # one binary plane per segment
        frames = np.stack([frames == n for n in range(1, len(labels) + 1)], axis=-1)
    seg = hd.seg.Segmentation(
        [source],
        frames.astype(np.uint8),
        hd.seg.SegmentationTypeValues.BINARY,
        [_segment_description(n, label) for n, label in enumerate(labels, 1)],
        series_instance_uid=series_uid,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer="ACME Contouring",
        manufacturer_model_name="Contour 3",
        software_versions="3.1",
        device_serial_number="C3-0042",
        content_label="LESION",
        content_creator_name=source.get("OperatorsName") or None,
        omit_empty_frames=mask.ndim == 3,
    )
    # Same bytes for the same seed: the content time is the study's, never the clock's.
    seg.ContentDate, seg.ContentTime = source.StudyDate, source.StudyTime
    seg.SeriesDate, seg.SeriesTime = source.StudyDate, source.StudyTime
    seg.InstanceCreationDate, seg.InstanceCreationTime = source.StudyDate, source.StudyTime
    seg.file_meta.MediaStorageSOPInstanceUID = uid.UID(sop_uid)
    return seg


def contour_points(source: Dataset, outline: np.ndarray, frame: int | None = None) -> list[float]:
    """(x, y) pixel vertices of an image, or of its frame ``frame`` (1-based) of an
    ``enhanced_image`` → DICOM ContourData (x, y, z in mm)."""
    if frame is not None:
        shared = source.SharedFunctionalGroupsSequence[0]
        plane = source.PerFrameFunctionalGroupsSequence[frame - 1].PlanePositionSequence[0]
        origin = [float(v) for v in plane.ImagePositionPatient]
        row_mm, col_mm = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
        orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
    else:
        origin = [float(v) for v in source.ImagePositionPatient]
        row_mm, col_mm = (float(v) for v in source.PixelSpacing)
        orientation = [float(v) for v in source.ImageOrientationPatient]
    along_row, along_col = np.array(orientation[:3]), np.array(orientation[3:])
    points = (
        np.array(origin)[None, :]
        + outline[:, :1] * col_mm * along_row[None, :]
        + outline[:, 1:2] * row_mm * along_col[None, :]
    )
    return [round(float(v), 4) for v in points.ravel()]


def rtstruct_dataset(
    sources: list[Dataset],
    outlines: list[np.ndarray],
    series_uid: str,
    sop_uid: str,
    frames: list[int | None] | None = None,
) -> Dataset:
    """An RT Structure Set with one ROI, ``lesion``: one closed planar contour per image.

    Args:
        sources: CT or MR images of one series (with patient geometry).
        outlines: for each, its lesion polygon in pixel (x, y) coordinates.
        frames: for each, the frame (1-based) of an ``enhanced_image`` the contour lies on
            (ReferencedFrameNumber), or None.
    """
    first = sources[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = uid.RTStructureSetStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid.UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SpecificCharacterSet = first.get("SpecificCharacterSet", "ISO_IR 100")
    ds.SOPClassUID, ds.SOPInstanceUID = uid.RTStructureSetStorage, sop_uid
    for keyword in (
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
        "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
        "StudyDescription",
    ):  # fmt: skip
        if keyword in first:
            setattr(ds, keyword, first[keyword].value)
    ds.Modality, ds.SeriesInstanceUID = "RTSTRUCT", series_uid
    ds.SeriesNumber = RTSTRUCT_SERIES_NUMBER
    ds.Manufacturer, ds.OperatorsName = "ACME Planning", first.get("OperatorsName", "")
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "LESIONS"
    ds.StructureSetDate, ds.StructureSetTime = first.StudyDate, first.StudyTime
    ds.InstanceCreationDate, ds.InstanceCreationTime = first.StudyDate, first.StudyTime
    frame = first.FrameOfReferenceUID
    images = [_ref(s.SOPClassUID, s.SOPInstanceUID) for s in sources]
    series = Dataset()
    series.SeriesInstanceUID, series.ContourImageSequence = first.SeriesInstanceUID, images
    study = _ref(_STUDY_COMPONENT, first.StudyInstanceUID)
    study.RTReferencedSeriesSequence = Sequence([series])
    reference = Dataset()
    reference.FrameOfReferenceUID = frame
    reference.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([reference])
    roi = Dataset()
    roi.ROINumber, roi.ReferencedFrameOfReferenceUID = 1, frame
    roi.ROIName, roi.ROIGenerationAlgorithm = LESION, "MANUAL"
    ds.StructureSetROISequence = Sequence([roi])
    contours = []
    for source, outline, frame in zip(
        sources, outlines, frames or [None] * len(sources), strict=True
    ):
        contour = Dataset()
        image = _ref(source.SOPClassUID, source.SOPInstanceUID)
        if frame is not None:
            image.ReferencedFrameNumber = frame
        contour.ContourImageSequence = Sequence([image])
        contour.ContourGeometricType = "CLOSED_PLANAR"
        contour.NumberOfContourPoints = len(outline)
        contour.ContourData = contour_points(source, outline, frame)
        contours.append(contour)
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber, roi_contour.ROIDisplayColor = 1, [255, 0, 0]
    roi_contour.ContourSequence = Sequence(contours)
    ds.ROIContourSequence = Sequence([roi_contour])
    observation = Dataset()
    observation.ObservationNumber, observation.ReferencedROINumber = 1, 1
    observation.RTROIInterpretedType, observation.ROIInterpreter = "GTV", ""
    ds.RTROIObservationsSequence = Sequence([observation])
    return ds


def _ref(class_uid: str, instance_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = class_uid, instance_uid
    return item


def enhanced_image(
    frames: int, rows: int, cols: int, sop_uid: str, spacing: tuple[float, float] = (0.5, 0.8)
) -> Dataset:
    """An Enhanced MR Image of ``frames`` axial frames 2 mm apart (origin of frame i at
    (-10, 20, 5 + 2i) mm), its plane per frame in PerFrameFunctionalGroupsSequence and its
    pixel spacing (row, column) and orientation shared; pixels a ramp, 12 bits stored."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = uid.EnhancedMRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid.UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = uid.EnhancedMRImageStorage, sop_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Roe^Jane", "P7", "", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{sop_uid}.1", f"{sop_uid}.2"
    ds.FrameOfReferenceUID, ds.Modality = f"{sop_uid}.3", "MR"
    ds.StudyDate, ds.StudyTime, ds.ContentDate, ds.ContentTime = "20200101", "1200", "", ""
    ds.StudyID = ds.AccessionNumber = ds.ReferringPhysicianName = ""
    ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 1, 1, "ACME"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.NumberOfFrames = rows, cols, 1, frames
    ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored = "MONOCHROME2", 16, 12
    ds.HighBit, ds.PixelRepresentation = 11, 0
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = list(spacing), 2
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orientation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for i in range(frames):
        position, content, item = Dataset(), Dataset(), Dataset()
        position.ImagePositionPatient = [-10.0, 20.0, 5.0 + 2 * i]
        content.DimensionIndexValues, content.InStackPositionNumber = [i + 1], i + 1
        item.PlanePositionSequence = Sequence([position])
        item.FrameContentSequence = Sequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ramp = np.arange(frames * rows * cols, dtype=np.uint32).reshape(frames, rows, cols)
    ds.PixelData = (ramp * 7 % 4000).astype(np.uint16).tobytes()
    return ds
