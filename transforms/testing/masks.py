"""Segmentation labels as exports carry them beside their images: a DICOM SEG per image
with a lesion (written with highdicom), or for some CT and MR studies one RTSTRUCT (written
here with pydicom: closed planar contours in patient coordinates), each holding the exact
lesion the phantom drew (``images.phantom_and_lesion``, ``images.lesion_mask``).

Both copy the patient and study of their images, as the devices that write them do, so
their identifiers need de-identification like any other object's.
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
def _segment_description():
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=LESION,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )


def seg_dataset(
    source: Dataset, mask: np.ndarray, series_uid: str, sop_uid: str, instance_number: int = 1
) -> Dataset:
    """A binary DICOM SEG of one single-frame image: one segment, ``lesion``.

    Args:
        source: the image (its pixel module and identifiers; pixel data not needed).
        mask: (rows, cols) 0/1, the image's geometry.
        series_uid, sop_uid, instance_number: the SEG's own (synth derives the UIDs from
            the seed: every SEG of a study is one series).
    """
    import highdicom as hd

    seg = hd.seg.Segmentation(
        [source],
        mask[np.newaxis].astype(np.uint8),
        hd.seg.SegmentationTypeValues.BINARY,
        [_segment_description()],
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
        omit_empty_frames=False,
    )
    # Same bytes for the same seed: the content time is the study's, never the clock's.
    seg.ContentDate, seg.ContentTime = source.StudyDate, source.StudyTime
    seg.SeriesDate, seg.SeriesTime = source.StudyDate, source.StudyTime
    seg.InstanceCreationDate, seg.InstanceCreationTime = source.StudyDate, source.StudyTime
    seg.file_meta.MediaStorageSOPInstanceUID = uid.UID(sop_uid)
    return seg


def contour_points(source: Dataset, outline: np.ndarray) -> list[float]:
    """(x, y) pixel vertices of an axial image → DICOM ContourData (x, y, z in mm)."""
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
    sources: list[Dataset], outlines: list[np.ndarray], series_uid: str, sop_uid: str
) -> Dataset:
    """An RT Structure Set with one ROI, ``lesion``: one closed planar contour per image.

    Args:
        sources: CT or MR images of one series (with patient geometry).
        outlines: for each, its lesion polygon in pixel (x, y) coordinates.
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
    for source, outline in zip(sources, outlines, strict=True):
        contour = Dataset()
        contour.ContourImageSequence = Sequence([_ref(source.SOPClassUID, source.SOPInstanceUID)])
        contour.ContourGeometricType = "CLOSED_PLANAR"
        contour.NumberOfContourPoints = len(outline)
        contour.ContourData = contour_points(source, outline)
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
