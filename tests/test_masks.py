"""Masks from SEG and RTSTRUCT objects: on their images' grids, refused when they do not fit."""

from __future__ import annotations

import collections
import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset

from transforms import mask_geometry, mask_join, masks
from transforms.deid.content import ContentCheck
from transforms.mask_classes import MaskClasses
from transforms.pixels import resize_pad
from transforms.testing import synth_patient
from transforms.testing.masks import enhanced_image, rtstruct_dataset, seg_dataset


@pytest.fixture(scope="module")
def synthetic() -> tuple[dict[str, Dataset], list[dict], dict[str, np.ndarray]]:
    """Loose files of a few all-positive patients with masks: datasets, objects, truth."""
    found, rows, truth = {}, [], {}
    for index in (0, 1):  # seed 3: two RTSTRUCTs (patient 0's CT study) and loose SEGs
        part = synth_patient(index, 3, positive_rate=1.0, masks=True)
        for f in part.files:
            if not f.path.endswith((".zip", ".tar.gz")):
                ds = pydicom.dcmread(io.BytesIO(f.data))
                found[str(ds.SOPInstanceUID)] = ds
        rows += [r for r in part.mask_objects if r["member"] is None]
        truth.update(part.masks)
    return found, rows, truth


def test_synthetic_seg_and_rtstruct_land_on_their_images(synthetic):
    found, rows, truth = synthetic
    kinds = set()
    for row in rows:
        obj = found[row["sop_instance_uid"]]
        kinds.add(masks.mask_kind(obj))
        parts = masks.read_mask_object(obj, row["file"], None)
        assert sorted(p.referenced for p in parts) == sorted(row["referenced"])
        for part in parts:
            label = mask_geometry.label_map(found[part.referenced], [part])
            assert np.array_equal(label, truth[part.referenced]), row["kind"]
    assert kinds == {masks.SEG, masks.RTSTRUCT}


def _image(rows: int = 40, cols: int = 56, **geometry) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", pydicom.uid.generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "2.25.11", "2.25.12"
    ds.FrameOfReferenceUID, ds.Modality = "2.25.13", "MR"
    ds.PatientID, ds.PatientName, ds.StudyDate, ds.StudyTime = "P", "A^B", "20200101", "1200"
    ds.PatientBirthDate = ds.PatientSex = ds.StudyID = ds.AccessionNumber = ""
    ds.ReferringPhysicianName, ds.SliceThickness = "", "1"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored = "MONOCHROME2", 16, 12
    ds.HighBit, ds.PixelRepresentation = 11, 0
    ds.ImagePositionPatient = geometry.get("origin", [-10.0, 20.0, 5.0])
    ds.ImageOrientationPatient = geometry.get("orientation", [1, 0, 0, 0, 1, 0])
    ds.PixelSpacing = geometry.get("spacing", [0.5, 0.8])  # row spacing, column spacing
    ds.PixelData = np.zeros((rows, cols), np.uint16).tobytes()
    return ds


def test_a_seg_another_tool_wrote_reads_back_exactly():
    """highdicom directly, from a mask PIL drew (not synth's writer, not our fill)."""
    image = _image()
    canvas = Image.new("L", (image.Columns, image.Rows), 0)
    ImageDraw.Draw(canvas).ellipse((7, 5, 30, 27), fill=1)
    ImageDraw.Draw(canvas).rectangle((35, 10, 50, 30), fill=2)
    drawn = np.asarray(canvas, np.uint8)
    seg = seg_dataset(image, (drawn == 1).astype(np.uint8), "2.25.21", "2.25.22")
    two = hd.seg.SegmentDescription(
        segment_number=2,
        segment_label="cyst",
        segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologic"),
        segmented_property_type=hd.sr.CodedConcept("441457006", "SCT", "Cyst"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        [image],
        np.stack([drawn == 1, drawn == 2], axis=-1)[np.newaxis].astype(np.uint8),
        hd.seg.SegmentationTypeValues.BINARY,
        [seg.SegmentSequence[0], two],
        series_instance_uid="2.25.23",
        series_number=5,
        sop_instance_uid="2.25.24",
        instance_number=1,
        manufacturer="other",
        manufacturer_model_name="tool",
        software_versions="1",
        device_serial_number="1",
    )
    buf = io.BytesIO()
    seg.save_as(buf)
    (part,) = masks.read_mask_object(pydicom.dcmread(io.BytesIO(buf.getvalue())), "s", None)
    assert part.referenced == image.SOPInstanceUID
    assert np.array_equal(mask_geometry.label_map(image, [part]), drawn)


def test_contours_in_an_oblique_plane_fill_the_pixels_they_enclose():
    """A rectangle whose corners sit on pixel edges, on a coronal image with non-square
    pixels: the expected pixels are known without any fill rule."""
    orientation = [1, 0, 0, 0, 0, -1]  # coronal: rows run towards the feet
    image = _image(origin=[-40.0, 12.0, 60.0], orientation=orientation, spacing=[0.7, 0.4])
    row_dir, col_dir = np.array(orientation[:3], float), np.array(orientation[3:], float)
    corners = [(9.5, 4.5), (29.5, 4.5), (29.5, 19.5), (9.5, 19.5)]  # (column, row)
    origin = np.array([-40.0, 12.0, 60.0])
    mm = [origin + x * 0.4 * row_dir + y * 0.7 * col_dir for x, y in corners]
    rt = rtstruct_dataset([image], [np.array(corners)], "2.25.31", "2.25.32")
    rt.ROIContourSequence[0].ContourSequence[0].ContourData = [float(v) for p in mm for v in p]
    (part,) = masks.read_mask_object(rt, "s", None)
    label = mask_geometry.label_map(image, [part])
    expected = np.zeros((40, 56), np.uint8)
    expected[5:20, 10:30] = 1
    assert np.array_equal(label, expected)


def test_a_mask_that_does_not_fit_its_image_is_refused_by_name():
    image = _image()
    small = masks.MaskPart(masks.SEG, image.SOPInstanceUID, "s", None, np.zeros((4, 4), np.uint8))
    with pytest.raises(masks.MaskError) as caught:
        mask_geometry.label_map(image, [small])
    assert caught.value.error_type == masks.MASK_GEOMETRY_MISMATCH
    assert caught.value.message == "a 4x4 SEG frame on a 40x56 image"
    off_plane = np.array([[-10.0, 20.0, 9.0], [0.0, 20.0, 9.0], [0.0, 30.0, 9.0]])
    part = masks.MaskPart(masks.RTSTRUCT, image.SOPInstanceUID, "s", None, None, ((1, off_plane),))
    with pytest.raises(masks.MaskError, match="off its image's plane"):
        mask_geometry.label_map(image, [part])
    del image.ImagePositionPatient
    with pytest.raises(masks.MaskError, match="on an image without them"):
        mask_geometry.label_map(image, [part])


def test_an_object_that_cannot_be_read_is_named_and_quotes_nothing():
    broken = Dataset()
    broken.SOPClassUID, broken.PatientName = masks.SEG_SOP_CLASS, "SECRET^NAME"
    with pytest.raises(masks.MaskError) as caught:
        masks.read_mask_object(broken, "s", None)
    assert caught.value.error_type == masks.MASK_UNREADABLE and "SECRET" not in str(caught.value)
    rt = Dataset()
    rt.SOPClassUID, rt.ROIContourSequence = masks.RTSTRUCT_SOP_CLASS, []
    with pytest.raises(masks.MaskError) as caught:
        masks.read_mask_object(rt, "s", None)
    assert caught.value.error_type == masks.MASK_WITHOUT_IMAGE
    assert masks.mask_kind(_image()) is None


def test_the_label_map_gets_the_pixels_geometry_with_nearest_neighbour():
    label = np.zeros((30, 50), np.uint8)
    label[5:20, 10:25], label[22:28, 30:45] = 1, 3
    fitted = mask_geometry.fit_label_map(label, 64)
    assert fitted.shape == (64, 64) and set(np.unique(fitted)) == {0, 1, 3}
    # The same place as the image's bilinear resize of that map, up to edge pixels.
    image = resize_pad(label[..., None].astype(np.float32) / 3, 64)[..., 0]
    assert (np.abs(image * 3 - fitted) > 1).mean() < 0.02
    padding = image == 0
    assert not fitted[padding & (np.abs(image * 3 - fitted) > 1)].any()


def _two_frame_masks(rows: int = 32, cols: int = 40) -> np.ndarray:
    """Five frames: frame 2 (index 1) a square of class 1, frame 4 (index 3) an ellipse of
    class 1 beside a rectangle of class 2; the other frames empty."""
    drawn = np.zeros((5, rows, cols), np.uint8)
    drawn[1, 4:12, 6:15] = 1
    canvas = Image.new("L", (cols, rows), 0)
    ImageDraw.Draw(canvas).ellipse((3, 5, 20, 25), fill=1)
    ImageDraw.Draw(canvas).rectangle((24, 8, 36, 20), fill=2)
    drawn[3] = np.asarray(canvas, np.uint8)
    return drawn


def test_a_seg_of_frames_lays_each_on_its_own_frame_and_the_rest_are_background():
    image = enhanced_image(5, 32, 40, "2.25.41")
    drawn = _two_frame_masks()
    seg = seg_dataset(image, drawn, "2.25.42", "2.25.43", labels=("lesion", "cyst"))
    buf = io.BytesIO()
    seg.save_as(buf)
    parts = masks.read_mask_object(pydicom.dcmread(io.BytesIO(buf.getvalue())), "s", None)
    assert sorted(p.frame for p in parts) == [2, 4]  # empty frames are left out of the SEG
    assert {p.referenced for p in parts} == {image.SOPInstanceUID}
    maps = mask_geometry.label_maps(image, parts)
    assert sorted(maps) == [1, 3]
    for index in range(5):
        assert np.array_equal(mask_geometry.label_map(image, parts, index), drawn[index])
    # A frame the image does not have, or a frame number missing on a multi-frame image.
    beyond = masks.MaskPart(masks.SEG, "x", "s", None, drawn[1], frame=6)
    with pytest.raises(masks.MaskError, match="a SEG frame of frame 6 of a 5-frame image"):
        mask_geometry.label_maps(image, [beyond])
    unnamed = masks.MaskPart(masks.SEG, "x", "s", None, drawn[1])
    with pytest.raises(masks.MaskError, match="names no frame of a 5-frame image"):
        mask_geometry.label_maps(image, [unnamed])


def test_contours_on_frames_of_an_enhanced_image_land_on_their_frames():
    """A contour naming frame 2, one naming none (found by its plane: frame 5), each with
    corners on pixel edges so the pixels are known without a fill rule."""
    image = enhanced_image(5, 32, 40, "2.25.51")
    corners = np.array([(9.5, 4.5), (29.5, 4.5), (29.5, 19.5), (9.5, 19.5)])
    shapes = [corners, corners[:, ::-1]]
    rt = rtstruct_dataset([image, image], shapes, "2.25.52", "2.25.53", frames=[2, 5])
    first, second = rt.ROIContourSequence[0].ContourSequence
    del second.ContourImageSequence[0].ReferencedFrameNumber
    parts = masks.read_mask_object(rt, "s", None)
    maps = mask_geometry.label_maps(image, parts)
    expected = np.zeros((32, 40), np.uint8)
    expected[5:20, 10:30] = 1
    transposed = np.zeros((32, 40), np.uint8)
    transposed[10:30, 5:20] = 1  # (x, y) swapped: rows 10-29, columns 5-19
    assert sorted(maps) == [1, 4] and np.array_equal(maps[1], expected)
    assert np.array_equal(maps[4], transposed)
    first.ContourImageSequence[0].ReferencedFrameNumber = 3  # the points lie on frame 2
    with pytest.raises(masks.MaskError, match="off its image's plane"):
        mask_geometry.label_maps(image, masks.read_mask_object(rt, "s", None))
    first.ContourImageSequence[0].ReferencedFrameNumber = None
    first.ContourData = [v + (7.0 if i % 3 == 2 else 0) for i, v in enumerate(first.ContourData)]
    with pytest.raises(masks.MaskError, match="off every frame's plane"):
        mask_geometry.label_maps(image, masks.read_mask_object(rt, "s", None))


def test_contours_on_a_multi_frame_image_without_a_plane_per_frame_are_refused_by_name():
    image = _image()
    image.NumberOfFrames = 3  # a cine run: one position for all its frames
    outline = np.array([(5.0, 5.0), (20.0, 5.0), (20.0, 15.0)])
    rt = rtstruct_dataset([image], [outline], "2.25.61", "2.25.62")
    with pytest.raises(masks.MaskError) as caught:
        mask_geometry.label_maps(image, masks.read_mask_object(rt, "s", None))
    assert caught.value.error_type == masks.MASK_UNSUPPORTED
    assert caught.value.message.startswith("contours on a multi-frame image without a plane")


def test_class_names_are_kept_only_when_the_content_check_passes_them():
    check = ContentCheck.load()
    image = _image()
    drawn = np.zeros((40, 56), np.uint8)
    drawn[2:5, 2:5], drawn[10:20, 10:20], drawn[30:35, 40:50] = 1, 2, 3
    labels = ("lesion", "John Smith", "Roe tumour")  # a person; the patient's own name
    image.PatientName = "Roe^Jane"
    seg = seg_dataset(image, drawn, "2.25.71", "2.25.72", labels=labels)
    assert masks.class_names(seg, check) == {1: "lesion", 2: "class 2", 3: "class 3"}
    rt = rtstruct_dataset(
        [image], [np.array([(1.0, 1.0), (9.0, 1.0), (9.0, 9.0)])], "2.25.73", "2.25.74"
    )
    assert masks.class_names(rt, check) == {1: "lesion"}
    rt.StructureSetROISequence[0].ROIName = "Dr. Miller's"
    assert masks.class_names(rt, check) == {1: "class 1"}
    counted = [((1, "lesion"), 3), ((1, "tumour"), 1), ((2, "class 2"), 1), ((2, "cyst"), 1)]
    assert mask_join.name_classes(counted) == {"1": "lesion", "2": "class 2"}


def _ct_series(folder, slices: int = 4) -> list[Dataset]:
    """A small axial CT series on disk (rt-utils reads a folder), 2 mm apart. Square
    pixels: rt-utils 1.2.7 steps along a row by PixelSpacing[0], the spacing between rows,
    so its contours on non-square pixels are stretched (our reading follows PS3.3)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    study, series, frame_of_reference = "2.25.601", "2.25.602", "2.25.603"
    out = []
    for z in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"2.25.61{z}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame_of_reference
        ds.Modality, ds.PatientName, ds.PatientID, ds.PatientSex = "CT", "X^Y", "P1", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20200101", "1200", "1", ""
        ds.ReferringPhysicianName, ds.PatientBirthDate, ds.SeriesNumber = "", "", 1
        ds.StudyDescription, ds.InstanceNumber, ds.SliceThickness = "", z + 1, 2.0
        ds.Rows, ds.Columns, ds.PixelSpacing = 64, 64, [0.7, 0.7]
        ds.ImagePositionPatient, ds.ImageOrientationPatient = (
            [-10.0, 5.0, 2.0 * z],
            [1, 0, 0, 0, 1, 0],
        )
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.zeros((64, 64), np.uint16).tobytes()
        ds.save_as(folder / f"{z}.dcm", enforce_file_format=True)
        out.append(ds)
    return out


def _rt_utils_structure_set(tmp_path) -> tuple[list[Dataset], Dataset, dict[str, np.ndarray]]:
    """rt-utils (another tool) writes two ROIs: a ring with an island in its hole on slices
    1-2, a square on slice 2; the truth is the masks it was given, as label maps."""
    from rt_utils import RTStructBuilder

    folder = tmp_path / "series"
    folder.mkdir()
    images = _ct_series(folder)
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 24, xx - 30)
    ring = ((r < 18) & (r > 9)) | (r < 4)  # an island inside the ring's hole
    square = np.zeros((64, 64), bool)
    square[3:12, 50:61] = True
    first, second = np.zeros((64, 64, 4), bool), np.zeros((64, 64, 4), bool)
    first[..., 1] = first[..., 2] = ring
    second[..., 2] = square
    rt = RTStructBuilder.create_new(dicom_series_path=str(folder))
    rt.add_roi(mask=first, name="RING")
    rt.add_roi(mask=second, name="BOX")
    rt.save(str(tmp_path / "rt.dcm"))
    truth = {}
    for z, image in enumerate(images):
        label = np.zeros((64, 64), np.uint8)
        label[first[..., z]] = 1
        label[second[..., z]] = 2
        truth[image.SOPInstanceUID] = label
    return images, pydicom.dcmread(tmp_path / "rt.dcm"), truth


def test_a_structure_set_rt_utils_wrote_reads_back_exactly(tmp_path):
    """Outlines traced through the centres of the mask's edge pixels, a hole as an inner
    outline and an island in the hole: each slice's label map is the mask rt-utils got."""
    images, rt, truth = _rt_utils_structure_set(tmp_path)
    parts = masks.read_mask_object(rt, "rt.dcm", None)
    assert {p.referenced for p in parts} == {images[1].SOPInstanceUID, images[2].SOPInstanceUID}
    for image in images[1:3]:
        own = [p for p in parts if p.referenced == image.SOPInstanceUID]
        assert np.array_equal(mask_geometry.label_map(image, own), truth[image.SOPInstanceUID])


def test_contours_that_name_no_image_land_on_the_image_whose_plane_holds_them(tmp_path):
    """Contour Image Sequence is optional: contours without it are one part keyed by the
    series the structure set references, which every image of that series takes up, each
    keeping those on its plane; an image none lies on is left unlabeled (no label map),
    not called background, and matched (no dead letter)."""
    images, rt, truth = _rt_utils_structure_set(tmp_path)
    for roi in rt.ROIContourSequence:
        for contour in roi.ContourSequence:
            del contour.ContourImageSequence
    for frame_of_reference in rt.ReferencedFrameOfReferenceSequence:  # images need no list
        for study in frame_of_reference.RTReferencedStudySequence:
            for series in study.RTReferencedSeriesSequence:
                del series.ContourImageSequence
    (part,) = masks.read_mask_object(rt, "rt.dcm", None)
    assert part.by_plane and part.referenced == images[0].SeriesInstanceUID
    join = mask_join.JoinMasksFn()
    join.setup()
    side = collections.defaultdict(list)  # as Beam's multimap side input: [] when unknown
    side[mask_join.uid_digest(images[0].SeriesInstanceUID)] = [part]
    for image in images:
        maps = mask_geometry.label_maps(image, [part])
        out = list(join.process((("a", None), image), side))
        joined = out[-1][1][1]
        if truth[image.SOPInstanceUID].any():
            assert np.array_equal(maps[0], truth[image.SOPInstanceUID])
            assert np.array_equal(joined.maps[0], truth[image.SOPInstanceUID])
        else:
            assert maps == {} and joined is None
    for frame_of_reference in rt.ReferencedFrameOfReferenceSequence:
        del frame_of_reference.RTReferencedStudySequence
    with pytest.raises(masks.MaskError) as e:
        masks.read_mask_object(rt, "rt.dcm", None)
    assert e.value.error_type == masks.MASK_WITHOUT_IMAGE


def test_public_segs_read_in_either_byte_order_without_spatial_locations_stated():
    """pydicom-data's liver SEG (3 frames on 3 CT images, Spatial Locations Preserved not
    stated) and its Explicit VR Big Endian copy, pydicom's one-frame versions (their pixel
    data cut to the first of the three frames they describe): each frame laid on the image
    its derivation names, as pydicom decodes it."""
    import data_store
    from pydicom.data import get_testdata_file

    root = Path(data_store.__file__).parent / "data"
    pairs = [
        (root / "liver.dcm", root / "liver_expb.dcm"),
        (
            Path(get_testdata_file("liver_1frame.dcm")),
            Path(get_testdata_file("liver_expb_1frame.dcm")),
        ),
    ]
    for little, big in pairs:
        ds = pydicom.dcmread(little)
        frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
        sources = [
            str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            for item in ds.PerFrameFunctionalGroupsSequence
        ]
        read = [masks.read_mask_object(pydicom.dcmread(p), p.name, None) for p in (little, big)]
        for parts in read:
            by_image = {p.referenced: p.pixels for p in parts}
            for frame, sop in zip(frames, sources[: len(frames)], strict=True):
                assert np.array_equal(by_image[sop], frame.astype(np.uint8))
        assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(*read, strict=True))


@pytest.mark.parametrize("kind", ["LABELMAP", "FRACTIONAL"])
def test_label_map_and_fractional_segs_from_highdicom_read_back(tmp_path, kind):
    """A LABELMAP SEG (its own SOP class, background described as segment 0) and a
    FRACTIONAL one (a probability map: a pixel is marked from one half up)."""
    (tmp_path / "s").mkdir()
    images = [
        pydicom.dcmread(tmp_path / "s" / f"{z}.dcm") for z in range(len(_ct_series(tmp_path / "s")))
    ]
    yy, xx = np.mgrid[:64, :64]
    truth = np.zeros((4, 64, 64), np.uint8)
    truth[1:3][:, np.hypot(yy - 24, xx - 30) < 10] = 1
    truth[2, 40:50, 5:20] = 2
    if kind == "LABELMAP":
        pixels = truth
    else:  # each segment's probability: 0.9 inside, 0.3 on a ring around it (not marked)
        pixels = np.zeros((4, 64, 64, 2), np.float32)
        for j in (0, 1):
            inside = truth == j + 1
            near = np.stack([cv2_dilate(m) for m in inside]) & ~inside
            pixels[..., j] = 0.9 * inside + 0.3 * near
    described = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=label,
            segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologic"),
            segmented_property_type=hd.sr.CodedConcept("4147007", "SCT", "Mass"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                "m", hd.sr.CodedConcept("123109", "DCM", "Manual Processing"), "1"
            ),
        )
        for n, label in ((1, "mass"), (2, "cyst"))
    ]
    seg = hd.seg.Segmentation(
        images, pixels, getattr(hd.seg.SegmentationTypeValues, kind), described,
        series_instance_uid="2.25.651", series_number=5, sop_instance_uid="2.25.652",
        instance_number=1, manufacturer="other", manufacturer_model_name="tool",
        software_versions="1", device_serial_number="1",
    )  # fmt: skip
    buf = io.BytesIO()
    seg.save_as(buf)
    ds = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    assert masks.mask_kind(ds) == masks.SEG
    parts = masks.read_mask_object(ds, "s", None)
    for z, image in enumerate(images):
        own = [p for p in parts if p.referenced == image.SOPInstanceUID]
        assert np.array_equal(mask_geometry.label_map(image, own), truth[z])


def cv2_dilate(mask: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0


def test_a_structure_set_whose_unnamed_contours_lie_on_no_image_is_a_dead_letter(tmp_path):
    """Through the Beam join: contours without image references are placed by plane; an
    object none of whose contours lies on an image of its series ends as one dead letter
    (its images go on unlabeled), one that lands is not a dead letter."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    images, rt, _ = _rt_utils_structure_set(tmp_path)
    for roi in rt.ROIContourSequence:
        for contour in roi.ContourSequence:
            del contour.ContourImageSequence
    off = copy_dataset(rt)
    for roi in off.ROIContourSequence:
        for contour in roi.ContourSequence:
            points = np.asarray(contour.ContourData, float).reshape(-1, 3)
            points[:, 2] += 1.0  # between two slices 2 mm apart
            contour.ContourData = [float(v) for v in points.ravel()]
    parts = [
        (mask_join.uid_digest(p.referenced), p)
        for obj, name in ((rt, "on.dcm"), (off, "off.dcm"))
        for p in masks.read_mask_object(obj, name, None)
    ]
    with beam.Pipeline() as pipeline:
        keyed = pipeline | "Images" >> beam.Create(
            [((f"{i}.dcm", None), im) for i, im in enumerate(images)]
        )
        joined = keyed | mask_join.JoinMasks(pipeline | "Parts" >> beam.Create(parts))
        letters = joined.dead_letters | beam.Map(lambda d: (d.source, d.error_type))
        assert_that(letters, equal_to([("off.dcm", masks.MASK_GEOMETRY_MISMATCH)]), label="letters")
        labelled = joined.joined | beam.Map(lambda kv: (kv[0][0], kv[1][1] is not None))
        expected = [("0.dcm", False), ("1.dcm", True), ("2.dcm", True), ("3.dcm", False)]
        assert_that(labelled, equal_to(expected), label="labelled")


def copy_dataset(ds: Dataset) -> Dataset:
    import copy

    return copy.deepcopy(ds)


def test_mask_classes_are_parsed_and_match_names_whatever_their_case_and_spacing():
    classes = MaskClasses.parse("tumour=GTV|GTV*, liver = Liver ,Spinal Cord")
    assert classes.names == ("tumour", "liver", "Spinal Cord")
    assert classes.describe() == {"1": "tumour", "2": "liver", "3": "Spinal Cord"}
    values = {n: classes.value_of(n) for n in ("gtv", "GTV_primary", " LIVER", "spinal  cord")}
    assert values == {"gtv": 1, "GTV_primary": 1, " LIVER": 2, "spinal  cord": 3}
    assert classes.value_of("PTV") is None and classes.value_of("BODY") is None
    for bad, why in (
        ("GTV,,Liver", "empty class"),
        ("=GTV", "class name is"),
        ("a=GTV|", "empty name to match"),
        ("tumour=", "no name to match"),
        ("GTV,gtv", "given twice"),
        (",".join(f"c{i}" for i in range(256)), "255 classes"),
    ):
        with pytest.raises(ValueError, match=why):
            MaskClasses.parse(bad)


def test_mask_classes_pick_rois_by_name_whatever_their_numbers(tmp_path):
    """A planning system's structure set: ROI numbers of its own (1001 here, over 255),
    ROIs no model should learn. Classes by name keep only theirs, valued as the class."""
    images, rt, truth = _rt_utils_structure_set(tmp_path)  # ROIs RING (1) and BOX (2)
    for item in rt.StructureSetROISequence:
        item.ROINumber = 1000 + int(item.ROINumber)
    for roi in rt.ROIContourSequence:
        roi.ReferencedROINumber = 1000 + int(roi.ReferencedROINumber)
    with pytest.raises(masks.MaskError, match="outside 1-255"):
        masks.read_mask_object(rt, "rt.dcm", None)
    classes = MaskClasses.parse("box=Box,ring=r?ng")
    parts = masks.read_mask_object(rt, "rt.dcm", None, classes)
    image = images[2]  # both ROIs
    label = mask_geometry.label_map(
        image, [p for p in parts if p.referenced == image.SOPInstanceUID]
    )
    want = truth[image.SOPInstanceUID]
    assert np.array_equal(label, np.select([want == 1, want == 2], [2, 1], 0))
    only = masks.read_mask_object(rt, "rt.dcm", None, MaskClasses.parse("box=BOX"))
    assert {v for p in only for v, _ in p.contours} == {1}
    read = mask_join.ReadMaskPartsFn(classes)
    read.setup()
    names = [o.value for o in read.process((("rt.dcm", None), rt)) if hasattr(o, "tag")]
    assert sorted(names) == [(1, "box"), (2, "ring")]  # the user's names, not the ROIs'
    with pytest.raises(masks.MaskError) as e:
        masks.read_mask_object(rt, "rt.dcm", None, MaskClasses.parse("liver=Liver"))
    assert e.value.error_type == "mask_without_class"


def test_mask_classes_pick_and_renumber_a_segs_segments():
    image = _image()
    drawn = np.zeros((image.Rows, image.Columns), np.uint8)
    drawn[5:20, 5:20], drawn[10:30, 25:40] = 1, 2
    seg = seg_dataset(image, drawn, "2.25.41", "2.25.42", labels=("lesion", "cyst"))
    buf = io.BytesIO()
    seg.save_as(buf)
    seg = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    (part,) = masks.read_mask_object(seg, "s", None, MaskClasses.parse("cyst=CYST,lesion"))
    assert np.array_equal(
        mask_geometry.label_map(image, [part]), np.select([drawn == 1, drawn == 2], [2, 1], 0)
    )
    (part,) = masks.read_mask_object(seg, "s", None, MaskClasses.parse("c=cy*"))
    assert np.array_equal(mask_geometry.label_map(image, [part]), (drawn == 2).astype(np.uint8))


def test_reading_a_seg_logs_no_uid(caplog):
    """highdicom warns about a SEG whose evidence lists other instances, quoting their UIDs:
    the mask reader keeps it quiet, as a worker logging at INFO would show it."""
    import logging

    image = _image()
    drawn = np.zeros((image.Rows, image.Columns), np.uint8)
    drawn[5:20, 5:20] = 1
    buf = io.BytesIO()
    seg_dataset(image, drawn, "2.25.41", "2.25.42").save_as(buf)
    ds = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    for series in ds.ReferencedSeriesSequence:
        series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID = "2.25.1234.5678"
    read = mask_join.ReadMaskPartsFn()
    read.setup()
    with caplog.at_level(logging.DEBUG):
        list(read.process((("s", None), ds)))
    assert "2.25.1234" not in caplog.text and image.SOPInstanceUID not in caplog.text


def test_a_mask_on_an_object_without_pixels_is_a_dead_letter_not_a_crash():
    """A SEG or RTSTRUCT may reference an SR or a key object: no grid to lay it on."""
    image = _image()
    drawn = np.zeros((image.Rows, image.Columns), np.uint8)
    drawn[5:20, 5:20] = 1
    (part,) = masks.read_mask_object(
        seg_dataset(image, drawn, "2.25.41", "2.25.42"), "seg.dcm", None
    )
    report = Dataset()
    report.SOPInstanceUID, report.Modality = image.SOPInstanceUID, "SR"
    join = mask_join.JoinMasksFn()
    join.setup()
    side = collections.defaultdict(list)
    side[mask_join.uid_digest(image.SOPInstanceUID)] = [part]
    out = list(join.process((("sr.dcm", None), report), side))
    (letter,) = [o.value for o in out if getattr(o, "tag", None) == "dead_letter"]
    assert (letter.source, letter.error_type) == ("seg.dcm", masks.MASK_GEOMETRY_MISMATCH)
    assert out[-1] == (("sr.dcm", None), (report, None))


def test_a_later_class_wins_where_classes_overlap(tmp_path):
    """A tumour inside the liver: listed after it, it stays whole on the liver."""
    from rt_utils import RTStructBuilder

    folder = tmp_path / "series"
    folder.mkdir()
    images = _ct_series(folder)
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 30, xx - 30)
    liver, gtv = np.zeros((64, 64, 4), bool), np.zeros((64, 64, 4), bool)
    liver[..., 1], gtv[..., 1] = r < 25, r < 6
    rt = RTStructBuilder.create_new(dicom_series_path=str(folder))
    rt.add_roi(mask=liver, name="Liver")
    rt.add_roi(mask=gtv, name="GTV_1")
    rt.save(str(tmp_path / "rt.dcm"))
    ds = pydicom.dcmread(tmp_path / "rt.dcm")
    for text, tumour in (("liver=Liver,tumour=GTV*", 2), ("tumour=GTV*,liver=Liver", 1)):
        parts = masks.read_mask_object(ds, "rt.dcm", None, MaskClasses.parse(text))
        label = mask_geometry.label_map(images[1], parts)
        assert (label[r < 6] == tumour).all() == (tumour == 2)


def test_outlines_that_overlap_are_joined_and_one_given_twice_counts_once():
    """Even-odd alone would cut the overlap of two squares out, and erase a square drawn
    twice; only an outline inside another is a hole."""
    square = np.array([(2, 2), (8, 2), (8, 8), (2, 8)], float)
    other = square + 4
    joined = mask_geometry.contours_fill([square, other], 16, 16)
    want = np.zeros((16, 16), bool)
    want[2:9, 2:9] = want[6:13, 6:13] = True
    assert np.array_equal(joined, want)
    assert np.array_equal(
        mask_geometry.contours_fill([square, square.copy()], 16, 16),
        want & (np.arange(16)[:, None] < 9) & (np.arange(16)[None, :] < 9),
    )
    hole = np.array([(4, 4), (6, 4), (6, 6), (4, 6)], float)
    ring = mask_geometry.contours_fill([square, hole], 16, 16)
    assert ring[2:9, 2:9].sum() == 49 - 1 and not ring[5, 5]  # only the centre strictly inside


def test_a_star_of_many_edges_per_row_fills_as_matplotlib_does():
    """2,000 vertices, many crossings on every row: the per-row intervals agree with an
    independent polygon test on every pixel centre, except centres within 1/100 px of the
    outline, which are inside (matplotlib leaves those to chance)."""
    from matplotlib.path import Path as Polygon

    t = np.linspace(0, 2 * np.pi, 2000, endpoint=False)
    radius = 200.3 + 40 * np.sin(40 * t)
    star = np.stack([256.1 + radius * np.cos(t), 255.7 + radius * np.sin(t)], axis=1)
    filled = mask_geometry.contours_fill([star], 512, 512)
    yy, xx = np.mgrid[:512, :512]
    centres = np.stack([xx.ravel(), yy.ravel()], axis=1)
    differ = centres[filled.ravel() != Polygon(star).contains_points(centres)]
    assert filled[differ[:, 1], differ[:, 0]].all() and len(differ) < 300
    a, b = star, np.roll(star, -1, axis=0)
    for point in differ.astype(float):  # each one lies on the outline
        t = np.clip(((point - a) * (b - a)).sum(1) / ((b - a) ** 2).sum(1), 0, 1)
        assert np.hypot(*(point - a - t[:, None] * (b - a)).T).min() <= 0.01


def test_a_contour_naming_no_frame_marks_every_frame_on_its_plane():
    """Two time points of the same slices (frames 1 and 4 share a plane): a contour that
    names no frame is on both, not on whichever came first."""
    image = enhanced_image(5, 32, 40, "2.25.54")
    frames = image.PerFrameFunctionalGroupsSequence
    frames[3].PlanePositionSequence[0].ImagePositionPatient = list(
        frames[0].PlanePositionSequence[0].ImagePositionPatient
    )
    corners = np.array([(9.5, 4.5), (29.5, 4.5), (29.5, 19.5), (9.5, 19.5)])
    rt = rtstruct_dataset([image], [corners], "2.25.55", "2.25.56", frames=[1])
    del rt.ROIContourSequence[0].ContourSequence[0].ContourImageSequence[0].ReferencedFrameNumber
    maps = mask_geometry.label_maps(image, masks.read_mask_object(rt, "s", None))
    assert sorted(maps) == [0, 3] and np.array_equal(maps[0], maps[3]) and maps[0].sum() == 300
