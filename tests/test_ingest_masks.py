"""ingest --task segmentation: masks from SEG and RTSTRUCT joined on original UIDs, in the
pixels' geometry, beside the images; bad masks are named dead letters."""

from __future__ import annotations

import copy
import io
import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tensorflow as tf
from conftest import read_table

from models import features as f
from pipelines import ingest
from pipelines import synth as synth_pipeline
from pipelines.options import UsageError
from transforms import deid, mask_geometry, mask_join, masks
from transforms.keys import KeySource
from transforms.testing import synth_patient
from transforms.testing.masks import enhanced_image, rtstruct_dataset, seg_dataset

KEY = "m" * 64
SEED, PATIENTS, SIZE = 3, 5, 48


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict, dict[str, np.ndarray], Path]:
    """synth --masks (all studies positive) → ingest --task segmentation, with a --masks
    folder holding a SEG that does not fit its image, one whose image is not in the input,
    and an image."""
    os.environ["DF_MASK_KEY"] = KEY
    root = tmp_path_factory.mktemp("masks")
    corpus, extra, out = root / "corpus", root / "extra", root / "out"
    argv = ["--output", str(corpus), "--patients", str(PATIENTS), "--seed", str(SEED)]
    synth_pipeline.run([*argv, "--positive-rate", "1", "--masks"])
    truth: dict[str, np.ndarray] = {}
    for index in range(PATIENTS):
        truth.update(synth_patient(index, SEED, positive_rate=1.0, masks=True).masks)
    extra.mkdir()
    image = next(  # a loose labelled image of the corpus
        ds
        for p in sorted((corpus / "export").rglob("IMG*"))
        if "/S9" not in str(p) and str((ds := pydicom.dcmread(p)).SOPInstanceUID) in truth
    )
    wrong = copy.deepcopy(image)  # a SEG drawn on a grid of another size
    wrong.Rows, wrong.Columns = image.Rows + 8, image.Columns
    mask = np.zeros((wrong.Rows, wrong.Columns), np.uint8)
    mask[4:12, 4:12] = 1
    seg_dataset(wrong, mask, "2.25.901", "2.25.902").save_as(extra / "wrong_size.dcm")
    stray = copy.deepcopy(image)  # a SEG of an image that is not in the input
    stray.SOPInstanceUID = "2.25.903"
    seg_dataset(stray, mask[:-8], "2.25.904", "2.25.905").save_as(extra / "no_image.dcm")
    image.save_as(extra / "an_image.dcm")
    couch = np.zeros((image.Rows, image.Columns), np.uint8)
    couch[-6:] = 1  # a structure no class names (--mask-classes below)
    seg_dataset(image, couch, "2.25.906", "2.25.907", labels=("Couch",)).save_as(
        extra / "couch.dcm"
    )
    (root / "pixels.yaml").write_text(f"size: {SIZE}\n")
    argv = ["--input", str(corpus / "export"), "--output", str(out), "--task", "segmentation"]
    argv += ["--masks", str(extra), "--key-env", "DF_MASK_KEY"]
    argv += ["--mask-classes", "lesion=LESION|tumour*"]  # synth's objects name theirs lesion
    argv += ["--pixel-config", str(root / "pixels.yaml")]
    assert ingest.run(argv) == 0
    return out, json.loads((out / "manifest.json").read_text()), truth, extra


def _examples(out: Path) -> dict[str, tuple[str, dict]]:
    spec = {
        f.SOP_INSTANCE_UID: tf.io.FixedLenFeature([], tf.string),
        f.IMAGE: tf.io.FixedLenFeature([], tf.string),
        f.MASK: tf.io.FixedLenFeature([], tf.string),
        f.LABEL: tf.io.FixedLenFeature([], tf.string),
    }
    found = {}
    for path in sorted((out / "tfrecords").rglob("part-*.tfrecord.gz")):
        for record in tf.data.TFRecordDataset(str(path), "GZIP"):
            ex = {k: v.numpy() for k, v in tf.io.parse_single_example(record, spec).items()}
            found[ex[f.SOP_INSTANCE_UID].decode()] = (path.parent.name, ex)
    return found


def test_every_labelled_image_carries_its_mask_in_the_pixels_geometry(run):
    out, manifest, truth, _ = run
    pseudonym = deid.Deidentifier(
        deid.Profile.load(), deid.DeidConfig(), KeySource(env="DF_MASK_KEY").resolve()
    ).pseudonyms.uid
    found = _examples(out)
    rows = {r[f.SOP_INSTANCE_UID]: r for r in read_table(str(out / "index"))}
    checked, brighter = 0, []
    for original, mask in truth.items():
        uid = pseudonym(original)
        if uid not in rows:
            continue  # a multi-frame run or a file ingest refused: not an image here
        split, ex = found[uid]
        row = rows[uid]
        assert row[f.MASK_SOURCE] in (masks.SEG, masks.RTSTRUCT) and split != "unlabeled"
        assert row[f.FOREGROUND_FRACTION] == pytest.approx(mask.mean(), rel=1e-5)
        got = np.frombuffer(ex[f.MASK], np.uint8).reshape(SIZE, SIZE)
        assert np.array_equal(got, mask_geometry.fit_label_map(mask, SIZE))
        assert ex[f.LABEL] == b"1"
        # The lesion is where the mask says: brighter inside than in a ring around it.
        image = np.frombuffer(ex[f.IMAGE], np.uint8).reshape(SIZE, SIZE, -1)[..., 0]
        ring = np.zeros_like(got, bool)
        ys, xs = np.nonzero(got)
        ring[max(0, ys.min() - 3) : ys.max() + 4, max(0, xs.min() - 3) : xs.max() + 4] = True
        ring &= got == 0
        brighter.append(image[got > 0].mean() > image[ring].mean())
        checked += 1
    # Not every one: text redacted over the lesion, or a window that clips it, flattens some.
    assert checked >= 10 and np.mean(brighter) >= 0.8, brighter
    sources = {r[f.MASK_SOURCE] for r in rows.values()}
    assert {masks.SEG, masks.RTSTRUCT} <= sources <= {masks.SEG, masks.RTSTRUCT, masks.NONE}
    for row in rows.values():  # images without a mask: unlabeled, never trained on
        if row[f.MASK_SOURCE] == masks.NONE:
            assert row[f.SPLIT] == "unlabeled" and row[f.FOREGROUND_FRACTION] is None
    assert manifest["task"] == "segmentation"
    assert manifest["masks"] == {
        "input": "given",
        "by_name": {"1": "lesion"},
        "classes": {"1": "lesion"},
    }


def test_seg_and_rtstruct_objects_are_never_images(run):
    out, _, _, _ = run
    rows = read_table(str(out / "index"))
    assert {r[f.MODALITY] for r in rows}.isdisjoint({"SEG", "RTSTRUCT"})
    assert len(rows) == len(_examples(out))


def test_bad_masks_are_named_dead_letters(run):
    out, _, _, extra = run
    errors = read_table(str(out / "errors"))
    by_file = {Path(e[f.SOURCE]).name: e for e in errors if e[f.STAGE] == masks.STAGE_MASKS}
    assert by_file["wrong_size.dcm"][f.ERROR_TYPE] == masks.MASK_GEOMETRY_MISMATCH
    assert by_file["no_image.dcm"][f.ERROR_TYPE] == masks.MASK_WITHOUT_IMAGE
    assert by_file["an_image.dcm"][f.ERROR_TYPE] == "not_a_mask_object"
    assert by_file["couch.dcm"][f.ERROR_TYPE] == "mask_without_class"
    for e in by_file.values():
        assert str(extra) in e[f.SOURCE] and "2.25.90" not in e[f.MESSAGE]


def test_the_task_and_its_inputs_are_checked_first(tmp_path, monkeypatch):
    monkeypatch.setenv("DF_MASK_KEY", KEY)
    (tmp_path / "in").mkdir()
    base = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o")]
    base += ["--key-env", "DF_MASK_KEY"]
    with pytest.raises(UsageError, match="--masks is for --task segmentation"):
        ingest.run([*base, "--masks", str(tmp_path)])
    with pytest.raises(UsageError, match="--labels is for --task classification"):
        ingest.run([*base, "--task", "segmentation", "--labels", str(tmp_path / "l.csv")])
    with pytest.raises(UsageError, match="--mask-classes is for --task segmentation"):
        ingest.run([*base, "--mask-classes", "GTV"])
    with pytest.raises(UsageError, match="--mask-classes: class 'gtv' is given twice"):
        ingest.run([*base, "--task", "segmentation", "--mask-classes", "GTV,gtv=GTV2"])


def test_a_classification_ingest_takes_no_segmentation_object_for_an_image():
    buf = io.BytesIO()
    image = pydicom.Dataset()
    image.SOPClassUID = masks.SEG_SOP_CLASS
    fn = mask_join.SegmentationObjectFn()
    (letter,) = [o.value for o in fn.process((("s", "m"), image))]
    assert (letter.stage, letter.error_type) == (masks.STAGE_MASKS, "segmentation_object")
    assert not buf.getvalue()


@pytest.fixture(scope="module")
def frames_run(tmp_path_factory) -> tuple[Path, dict, dict[str, np.ndarray]]:
    """Enhanced multi-frame images with a SEG of two of their frames (a segment named with
    a person's name) and RTSTRUCT contours on frames, and a cine run with contours,
    ingested with frame policy ``all``."""
    os.environ["DF_MASK_KEY"] = KEY
    root = tmp_path_factory.mktemp("frames")
    corpus, out = root / "in", root / "out"
    corpus.mkdir()
    truth: dict[str, np.ndarray] = {}  # original UID → its frames' maps
    seg_image = enhanced_image(5, 32, 40, "2.25.81")
    drawn = np.zeros((5, 32, 40), np.uint8)
    drawn[1, 4:12, 6:15], drawn[3, 8:20, 5:30], drawn[3, 22:28, 30:38] = 1, 1, 2
    truth[seg_image.SOPInstanceUID] = drawn
    labels = ("lesion", "John Smith")
    seg_dataset(seg_image, drawn, "2.25.82", "2.25.83", labels=labels).save_as(corpus / "seg.dcm")
    rt_image = enhanced_image(4, 24, 30, "2.25.84")
    square = np.array([(4.5, 3.5), (14.5, 3.5), (14.5, 11.5), (4.5, 11.5)])
    rt = rtstruct_dataset([rt_image] * 2, [square, square + 6], "2.25.85", "2.25.86", [2, 4])
    del rt.ROIContourSequence[0].ContourSequence[1].ContourImageSequence[0].ReferencedFrameNumber
    rt.save_as(corpus / "rt.dcm")
    contours = np.zeros((4, 24, 30), np.uint8)
    contours[1, 4:12, 5:15], contours[3, 10:18, 11:21] = 1, 1
    truth[rt_image.SOPInstanceUID] = contours
    cine = copy.deepcopy(rt_image)  # frames without a plane each: contours cannot land
    cine.SOPInstanceUID = cine.file_meta.MediaStorageSOPInstanceUID = "2.25.87"
    del cine.PerFrameFunctionalGroupsSequence, cine.SharedFunctionalGroupsSequence
    cine.ImagePositionPatient, cine.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
    cine.PixelSpacing = [0.5, 0.8]
    outline = np.array([(2.0, 2.0), (9.0, 2.0), (9.0, 9.0)])
    cine_rt = rtstruct_dataset([cine] * 2, [outline] * 2, "2.25.88", "2.25.89")
    for number, contour in enumerate(cine_rt.ROIContourSequence[0].ContourSequence, 1):
        contour.ContourImageSequence[0].ReferencedFrameNumber = number  # two parts, one letter
    cine_rt.save_as(corpus / "cine_rt.dcm")
    for ds in (seg_image, rt_image, cine):
        ds.save_as(corpus / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    (root / "pixels.yaml").write_text("size: 16\nframe_policy: all\n")
    argv = ["--input", str(corpus), "--output", str(out), "--task", "segmentation"]
    argv += ["--key-env", "DF_MASK_KEY", "--pixel-config", str(root / "pixels.yaml")]
    assert ingest.run(argv) == 0
    return out, json.loads((out / "manifest.json").read_text()), truth


def test_each_frame_carries_its_own_frames_mask(frames_run):
    out, _, truth = frames_run
    pseudonym = deid.Deidentifier(
        deid.Profile.load(), deid.DeidConfig(), KeySource(env="DF_MASK_KEY").resolve()
    ).pseudonyms.uid
    rows = read_table(str(out / "index"))
    spec = {
        f.SOP_INSTANCE_UID: tf.io.FixedLenFeature([], tf.string),
        f.FRAME: tf.io.FixedLenFeature([], tf.int64),
        f.MASK: tf.io.FixedLenFeature([], tf.string),
        f.LABEL: tf.io.FixedLenFeature([], tf.string),
    }
    examples = {}
    for path in sorted((out / "tfrecords").rglob("part-*.tfrecord.gz")):
        for record in tf.data.TFRecordDataset(str(path), "GZIP"):
            ex = {k: v.numpy() for k, v in tf.io.parse_single_example(record, spec).items()}
            examples[ex[f.SOP_INSTANCE_UID].decode(), int(ex[f.FRAME])] = ex
    for original, maps in truth.items():
        uid = pseudonym(original)
        mine = sorted((r for r in rows if r[f.SOP_INSTANCE_UID] == uid), key=lambda r: r[f.FRAME])
        assert [r[f.FRAME] for r in mine] == list(range(len(maps)))
        for row, expected in zip(mine, maps, strict=True):
            ex = examples[uid, row[f.FRAME]]
            got = np.frombuffer(ex[f.MASK], np.uint8).reshape(16, 16)
            assert np.array_equal(got, mask_geometry.fit_label_map(expected, 16)), row[f.FRAME]
            assert row[f.FOREGROUND_FRACTION] == pytest.approx((expected > 0).mean())
            assert row[f.LABEL] == ex[f.LABEL].decode() == str(expected.max())
            assert row[f.MASK_SOURCE] in (masks.SEG, masks.RTSTRUCT)
            assert row[f.SPLIT] != "unlabeled"
    cine = [r for r in rows if r[f.SOP_INSTANCE_UID] == pseudonym("2.25.87")]
    assert len(cine) == 4 and {r[f.MASK_SOURCE] for r in cine} == {masks.NONE}
    assert {r[f.SPLIT] for r in cine} == {"unlabeled"}


def test_class_names_reach_the_manifest_only_when_they_pass_the_content_check(frames_run):
    out, manifest, _ = frames_run
    assert manifest["masks"] == {
        "input": None,
        "by_name": None,
        "classes": {"1": "lesion", "2": "class 2"},
    }
    text = (out / "manifest.json").read_text()
    assert "John" not in text and "Smith" not in text


def test_contours_on_frames_without_a_plane_each_are_a_named_dead_letter(frames_run):
    out, _, _ = frames_run
    errors = [e for e in read_table(str(out / "errors")) if e[f.STAGE] == masks.STAGE_MASKS]
    assert [(Path(e[f.SOURCE]).name, e[f.ERROR_TYPE]) for e in errors] == [
        ("cine_rt.dcm", masks.MASK_UNSUPPORTED)
    ]
