"""synth --masks: SEG and RTSTRUCT objects beside their images, holding the exact lesion."""

from __future__ import annotations

import io
import tarfile
import zipfile

import highdicom as hd
import numpy as np
import pydicom
import pytest
from matplotlib.path import Path as Polygon

from transforms.testing import CorpusPart, images, synth_patient

SEED = 3
PATIENTS = range(8)  # with every study positive: SEGs of every kind and two RTSTRUCTs


@pytest.fixture(scope="module")
def parts() -> list[CorpusPart]:
    return [synth_patient(i, SEED, positive_rate=1.0, masks=True) for i in PATIENTS]


def _objects(part: CorpusPart) -> dict[tuple[str, str | None], bytes]:
    out: dict[tuple[str, str | None], bytes] = {}
    for f in part.files:
        if f.path.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(f.data)) as zf:
                out.update({(f.path, n): zf.read(n) for n in zf.namelist()})
        elif f.path.endswith(".tar.gz"):
            with tarfile.open(fileobj=io.BytesIO(f.data), mode="r:gz") as tf:
                for m in tf.getmembers():
                    out[(f.path, m.name)] = tf.extractfile(m).read()  # type: ignore[union-attr]
        else:
            out[(f.path, None)] = f.data
    return out


def _datasets(part: CorpusPart) -> dict[str, pydicom.Dataset]:
    found = (pydicom.dcmread(io.BytesIO(b)) for b in _objects(part).values())
    return {str(ds.SOPInstanceUID): ds for ds in found}


def test_every_labelled_image_has_one_object_and_both_kinds_occur(parts):
    kinds = [row["kind"] for part in parts for row in part.mask_objects]
    assert kinds.count("seg") >= 10 and kinds.count("rtstruct") >= 1
    for part in parts:
        referenced = [uid for row in part.mask_objects for uid in row["referenced"]]
        assert sorted(referenced) == sorted(part.masks)  # each labelled image exactly once
        for mask in part.masks.values():
            assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}


def test_seg_read_back_by_highdicom_is_the_drawn_mask(parts):
    checked = 0
    for part in parts:
        found = _datasets(part)
        for row in part.mask_objects:
            if row["kind"] != "seg":
                continue
            seg = hd.seg.Segmentation.from_dataset(found[row["sop_instance_uid"]])
            (image_uid,) = row["referenced"]
            image = found[image_uid]
            assert seg.SeriesInstanceUID != image.SeriesInstanceUID
            assert seg.StudyInstanceUID == image.StudyInstanceUID
            assert seg.PatientID == image.PatientID  # copied: de-identification's business
            assert [s.SegmentLabel for s in seg.SegmentSequence] == ["lesion"]
            pixels = seg.get_pixels_by_source_instance([image_uid], segment_numbers=[1])
            assert pixels.shape == (1, image.Rows, image.Columns, 1)
            assert np.array_equal(pixels[0, ..., 0], part.masks[image_uid])
            checked += 1
    assert checked >= 10


def _on_outline(points: np.ndarray, outline: np.ndarray, tolerance: float = 0.01) -> np.ndarray:
    """Points within ``tolerance`` px of a closed outline's edges (a centre on the outline
    is inside, as the fill has it; matplotlib leaves such points to chance)."""
    a, b = outline, np.roll(outline, -1, axis=0)
    ab = b - a
    t = np.clip(
        ((points[:, None, :] - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1
    )
    nearest = a + t[..., None] * ab
    return (np.hypot(*(points[:, None, :] - nearest).transpose(2, 0, 1)) < tolerance).any(axis=1)


def test_rtstruct_contours_rasterized_independently_are_the_drawn_mask(parts):
    """matplotlib's polygon test on pixel centres (and centres on the outline), from
    ContourData in millimetres."""
    checked = 0
    for part in parts:
        found = _datasets(part)
        for row in part.mask_objects:
            if row["kind"] != "rtstruct":
                continue
            rt = found[row["sop_instance_uid"]]
            assert rt.Modality == "RTSTRUCT" and rt.StructureSetROISequence[0].ROIName == "lesion"
            for contour in rt.ROIContourSequence[0].ContourSequence:
                image = found[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
                assert contour.ContourGeometricType == "CLOSED_PLANAR"
                xyz = np.asarray(contour.ContourData, float).reshape(-1, 3)
                origin = np.asarray(image.ImagePositionPatient, float)
                row_mm, col_mm = (float(v) for v in image.PixelSpacing)
                assert np.allclose(xyz[:, 2], origin[2])  # on the image's plane
                cols = (xyz[:, 0] - origin[0]) / col_mm
                rows = (xyz[:, 1] - origin[1]) / row_mm
                yy, xx = np.mgrid[: image.Rows, : image.Columns]
                centres = np.stack([xx.ravel(), yy.ravel()], axis=1)
                outline = np.stack([cols, rows], axis=1)
                inside = Polygon(outline).contains_points(centres) | _on_outline(centres, outline)
                expected = part.masks[str(image.SOPInstanceUID)]
                assert np.array_equal(inside.reshape(expected.shape), expected.astype(bool))
                checked += 1
    assert checked >= 2


def test_masks_change_nothing_about_the_images(parts):
    for index, part in zip(PATIENTS, parts, strict=True):
        plain = synth_patient(index, SEED, positive_rate=1.0)
        assert plain.labels == part.labels and plain.text_boxes == part.text_boxes
        with_masks = {k: v for k, v in _objects(part).items() if "/S9" not in (k[1] or k[0])}
        assert with_masks == _objects(plain)
        added = set(part.phi["uid"]) - set(plain.phi["uid"])  # the objects' own UIDs
        assert set(plain.phi["uid"]) <= set(part.phi["uid"])
        assert added == {u for r in part.mask_objects for u in _own_uids(part, r)}


def _own_uids(part: CorpusPart, row: dict) -> set[str]:
    ds = _datasets(part)[row["sop_instance_uid"]]
    return {str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}


def test_the_mask_is_the_lesion_the_phantom_drew():
    rng = np.random.default_rng(5)
    img, outline = images.phantom_and_lesion(rng, 96, 120, True)
    rng = np.random.default_rng(5)
    plain, none = images.phantom_and_lesion(rng, 96, 120, False)
    assert none is None and outline is not None
    mask = images.lesion_mask(outline, 96, 120).astype(bool)
    blob = img - plain  # the lesion alone (clipping aside)
    # Inside the half-maximum outline the blob is above half its peak, outside below.
    peak = blob.max()
    assert blob[mask].min() >= 0.45 * peak and blob[~mask].max() <= 0.55 * peak
