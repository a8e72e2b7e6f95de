"""`dicomflow score` with a segmentation model: figures in source pixels, DICOM SEG written
back (dciodvfy-clean, referencing the de-identified instances), dead letters and usage errors.

The model is made by hand, not trained: a 1x1 convolution whose softmax says "foreground"
exactly where the normalized pixel is above 0.5, so every mask it predicts is known from the
images drawn here.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import read_table
from orthanc import running_orthanc
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from models import features as f
from pipelines import deidentify, score
from pipelines.options import UsageError
from transforms import dicom_seg

KEY = "g" * 64
SIZE = 64
PHI_NAME = "Zebulon^Quintavius"
PHI_ID = "MRN-777-31337"
ROOT = "1.2.826.0.1.3680043.10.9999"  # the crafted instances' own UIDs (replaced by de-id)
PRIVATE_CLASS = "1.3.46.670589.11.0.0.12.1"  # a vendor's private image storage class


def _image(name: str, pixels: np.ndarray, frame_of_reference: bool = True, **extra) -> Dataset:
    """A CT image: 0 background, 1000 where the mask is drawn; window 500/1000 maps them to
    0 and 1, so the model's foreground is exactly the drawn pixels (at the model's size)."""
    sop = f"{ROOT}.{sum(map(ord, name))}"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.PatientName, ds.PatientID = PHI_NAME, PHI_ID
    ds.PatientBirthDate, ds.PatientSex = "19600101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{ROOT}.1", f"{ROOT}.2"
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20240102", "101010", "S1"
    ds.AccessionNumber, ds.ReferringPhysicianName = "ACC9", "Who^Doctor"
    ds.Modality, ds.Manufacturer, ds.SeriesNumber = "CT", "Scanner Co", 1
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    if frame_of_reference:
        ds.FrameOfReferenceUID = f"{ROOT}.3"
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [0, 0, 0]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 1
    ds.KVP = 120
    ds.AcquisitionNumber = 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 500, 1000
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    ds.PixelData = (pixels.astype(np.uint16) * 1000).tobytes()
    return ds


def _boxes(shape: tuple[int, ...], *boxes: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    for r0, c0, r1, c1 in boxes:
        mask[..., r0 : r1 + 1, c0 : c1 + 1] = 1
    return mask


# name → (pixels, expected areas, expected boxes (class, row/col min, row/col max)).
# "two" sits in the model input unscaled (32 x 64 → rows 16-47); "big" is 4x the model's
# size (128 x 256): boxes on multiples of 4 land whole on model pixels.
IMAGES = {
    "two": (_boxes((32, 64), (4, 5, 9, 14), (20, 40, 27, 59)), [220], [
        ("1", 4, 5, 9, 14), ("1", 20, 40, 27, 59),
    ]),
    "big": (_boxes((128, 256), (16, 32, 47, 95)), [2048], [("1", 16, 32, 47, 95)]),
    "empty": (np.zeros((40, 40), np.uint8), [0], []),
}  # fmt: skip


def _write_version(model_dir: Path) -> Path:
    """A segmentation version exported as the trainer exports one, with a known network."""
    import keras
    import tensorflow_transform as tft

    from models import export
    from models.transform_writer import write_transform
    from transforms.pixels import PixelConfig

    transform = model_dir / "transform"
    write_transform(str(transform), 0.0, 1.0, ["0", "1"], SIZE, 1)
    inputs = keras.Input((SIZE, SIZE, 1))
    layer = keras.layers.Conv2D(2, 1, activation="softmax")
    network = keras.Model(inputs, layer(inputs))
    layer.set_weights([np.array([0.0, 40.0]).reshape(1, 1, 1, 2), np.array([0.0, -20.0])])
    version = model_dir / "1"
    layer_ = tft.TFTransformOutput(str(transform)).transform_features_layer()
    module = export.ServingModule(layer_, network, (SIZE, SIZE, 1))
    export.save_serving(module, str(version / export.SAVED_MODEL))
    info = export.model_info(
        "1",
        ["0", "1"],
        (SIZE, SIZE, 1),
        f.UNET,
        None,
        datetime.datetime.now(datetime.UTC).isoformat(),
        "test",
        PixelConfig(size=SIZE).describe(),
        task="segmentation",
        class_names={"1": "lesion"},
    )
    export.write_json(str(version / export.MODEL_JSON), info.to_json())
    return version


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Crafted images (and a multi-frame one, and one of a private SOP class) scored with
    --write-seg into files and a DICOMweb store (Orthanc), and de-identified under the
    same key."""
    os.environ["DF_SEG_KEY"] = KEY
    root = tmp_path_factory.mktemp("seg-score")
    corpus = root / "corpus"
    corpus.mkdir()
    for name, (pixels, *_) in IMAGES.items():
        _image(name, pixels).save_as(corpus / f"{name}.dcm", enforce_file_format=True)
    # An image of a vendor's private SOP class: scored, but highdicom knows no IOD to
    # derive a SEG from, so a seg_failed dead letter.
    private = _image("private", IMAGES["two"][0], SOPClassUID=PRIVATE_CLASS)
    private.file_meta.MediaStorageSOPClassUID = PRIVATE_CLASS
    private.save_as(corpus / "private.dcm", enforce_file_format=True)
    multi = _image("multi", np.stack([IMAGES["two"][0]] * 3), frame_of_reference=False)
    multi.save_as(corpus / "multi.dcm", enforce_file_format=True)
    version = _write_version(root / "models")
    key = ["--key-env", "DF_SEG_KEY"]
    out = root / "out"
    argv = ["--input", str(corpus), "--model", str(version), "--output", str(out), *key]
    argv += ["--run-id", "r1", "--write-seg", "--task", "segmentation"]
    with running_orthanc() as store:
        assert score.run([*argv, "--output-store", f"dicomweb+{store.url}"]) == 0
        stored = store.sop_instance_uids()
    deid = root / "deid"
    assert deidentify.run(["--input", str(corpus), "--output", str(deid), *key]) == 0
    return {"out": out, "deid": deid, "corpus": corpus, "root": root, "stored": stored}


def _rows(out: Path, run_id: str) -> list[dict]:
    return read_table(str(out / "scores" / "model_version=1" / f"run_id={run_id}"))


def _source_uid(deid: Path, name: str) -> str:
    """The pseudonymous SOPInstanceUID deidentify gave the crafted image ``name``."""
    for path in deid.glob("deid_dicom/*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        shape = (int(ds.Rows), int(ds.Columns))
        single = "NumberOfFrames" not in ds and ds.SOPClassUID == CTImageStorage
        if single and shape == IMAGES[name][0].shape:
            return str(ds.SOPInstanceUID)
    raise AssertionError(name)


def test_rows_give_areas_components_and_boxes_in_source_pixels(runs):
    rows = {r[f.SOP_INSTANCE_UID]: r for r in _rows(runs["out"], "r1")}
    assert len(rows) == 5  # every instance, the ones without a SEG too
    for name, (_, areas, boxes) in IMAGES.items():
        row = rows[_source_uid(runs["deid"], name)]
        assert row[f.FOREGROUND_AREA] == areas, name
        assert row[f.COMPONENT_COUNT] == [len(boxes)], name
        got = [tuple(b[k] for k in ("class", "row_min", "column_min", "row_max", "column_max"))
               for b in row[f.BOUNDING_BOXES]]  # fmt: skip
        assert got == boxes, name
        assert (row[f.MAX_PROBABILITY][0] > 0.99) == bool(boxes), name
        assert row[f.MODEL_VERSION] == "1" and row[f.RUN_ID] == "r1"
    manifest = json.loads((runs["out"] / "manifest.json").read_text())
    assert manifest["task"] == "segmentation" and manifest["seg"]["type"] == "binary"
    assert manifest["counts"]["seg_written"] == manifest["counts"]["seg_stored"] == 3
    assert manifest["counts"]["by_predicted_class"] == {"1": 4}


def _dciodvfy_errors(path: Path) -> list[str]:
    assert shutil.which("dciodvfy"), "dciodvfy missing: apt-get install dicom3tools (.ci/run)"
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if "Error" in line]


def test_seg_passes_dciodvfy_and_references_the_deidentified_instance(runs):
    rows = _rows(runs["out"], "r1")
    written = [r for r in rows if r[f.SEG_URI]]
    assert len(written) == 3  # two, big, empty; not the multi-frame or the private one
    deid = {p.stem: pydicom.dcmread(p, stop_before_pixels=True)
            for p in runs["deid"].glob("deid_dicom/*.dcm")}  # fmt: skip
    folder = runs["out"] / "seg" / "model_version=1" / "run_id=r1"
    for row in written:
        uid = row[f.SOP_INSTANCE_UID]
        path = Path(row[f.SEG_URI])
        assert path == folder / f"{uid}.dcm"
        assert _dciodvfy_errors(path) == []
        seg = pydicom.dcmread(path)
        source = deid[uid]  # the instance exists in the de-identified output
        reference = seg.ReferencedSeriesSequence[0]
        assert reference.SeriesInstanceUID == source.SeriesInstanceUID
        assert reference.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == uid
        assert seg.StudyInstanceUID == source.StudyInstanceUID
        assert seg.PatientID == source.PatientID and seg.PatientName == source.PatientName
        assert seg.Manufacturer == dicom_seg.MANUFACTURER
        assert seg.SegmentationType == "BINARY"
        assert seg.SegmentSequence[0].SegmentLabel == "lesion"  # model.json class_names
        assert (seg.SeriesInstanceUID, seg.SOPInstanceUID) == dicom_seg.seg_uids(
            "1", "binary", source.SeriesInstanceUID, uid
        )
        text = path.read_bytes()
        for phi in (PHI_NAME, PHI_ID, "Who^Doctor", "ACC9", ROOT):
            assert phi.encode() not in text
    segs = sorted(str(pydicom.dcmread(r[f.SEG_URI]).SOPInstanceUID) for r in written)
    assert sorted(runs["stored"]) == segs  # and the same SEGs in the store
    two = next(r for r in written if r[f.FOREGROUND_AREA] == [220])
    seg = pydicom.dcmread(two[f.SEG_URI])
    assert np.array_equal(seg.pixel_array, IMAGES["two"][0])


def test_seg_failures_are_dead_letters_and_rows_stay(runs):
    errors = read_table(str(runs["out"] / "errors"))
    failed = sorted((Path(e[f.SOURCE]).name, e[f.STAGE], e[f.ERROR_TYPE]) for e in errors)
    assert failed == [
        ("multi.dcm", "score", "seg_failed"),
        ("private.dcm", "score", "seg_failed"),
    ]
    messages = " ".join(e[f.MESSAGE] for e in errors)
    assert "needs its frame of reference" in messages and "cannot be built" in messages
    rows = _rows(runs["out"], "r1")
    assert sum(r[f.SEG_URI] is None for r in rows) == 2


def test_fractional_seg_holds_probabilities(runs, tmp_path):
    """The writer on a de-identified header and the probabilities the model gives."""
    from transforms.scoring import ScoreKey
    from transforms.seg_scoring import SourceGrid

    uid = _source_uid(runs["deid"], "two")
    header = (runs["deid"] / "deid_dicom" / f"{uid}.dcm").read_bytes()
    drawn = IMAGES["two"][0].astype(bool)
    probabilities = np.zeros((1, SIZE, SIZE, 2), np.float32)
    probabilities[0, 16:48, :, 1] = np.where(drawn, 0.9, 0.2)  # the crop: rows 16-47
    probabilities[..., 0] = 1 - probabilities[..., 1]
    key = ScoreKey("s", None, (uid, "", "", "P", "CT"), (0,), ((32, 64),), header)
    writer = dicom_seg.SegWriter(str(tmp_path), ["0", "1"], "1", "fractional", "test")
    path = Path(writer.write(key, probabilities, [SourceGrid.of(32, 64, SIZE)]))
    assert path == tmp_path / f"{uid}.dcm"
    assert _dciodvfy_errors(path) == []
    seg = pydicom.dcmread(path)
    assert seg.SegmentationType == "FRACTIONAL" and seg.MaximumFractionalValue == 255
    assert seg.SegmentSequence[0].SegmentLabel == "class 1"  # no class_names given
    values = seg.pixel_array
    assert set(values[drawn]) == {round(0.9 * 255)} and set(values[~drawn]) == {round(0.2 * 255)}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--task", "classification"], "the model is a segmentation model"),
        (["--explain-top", "2"], "--explain-top is for classification"),
        (["--seg-type", "fractional"], "--seg-type needs --write-seg"),
        (["--input-format", "tfrecords", "--write-seg"], "--write-seg needs raw DICOM"),
        (["--output-store", "dicomweb+http://127.0.0.1:9/dicom-web"], "give it too"),
    ],
)
def test_usage_errors_fail_before_any_work(runs, extra, message, tmp_path):
    argv = ["--input", str(runs["corpus"]), "--model", str(runs["root"] / "models" / "1")]
    argv += ["--output", str(tmp_path / "out"), *extra]
    if "--input-format" not in extra:
        argv += ["--key-env", "DF_SEG_KEY"]
    with pytest.raises(UsageError, match=message):
        score.run(argv)
    assert not (tmp_path / "out").exists()


def test_a_rerun_with_the_same_run_id_replaces_its_segs(runs):
    """Last in this module: it changes the run's output."""
    out, version = runs["out"], runs["root"] / "models" / "1"
    folder = out / "seg" / "model_version=1" / "run_id=r1"
    two = _source_uid(runs["deid"], "two")
    before = (folder / f"{two}.dcm").read_bytes()
    argv = ["--input", str(runs["corpus"] / "two.dcm"), "--model", str(version)]
    argv += ["--output", str(out), "--key-env", "DF_SEG_KEY", "--run-id", "r1", "--write-seg"]
    assert score.run(argv) == 0
    assert [p.name for p in folder.iterdir()] == [f"{two}.dcm"]  # the others were stale
    after = pydicom.dcmread(folder / f"{two}.dcm")
    assert after.SOPInstanceUID == pydicom.dcmread(io.BytesIO(before)).SOPInstanceUID


def test_an_instance_whose_header_was_not_kept_is_a_seg_failure(tmp_path):
    from transforms.deadletter import StageError
    from transforms.scoring import ScoreKey
    from transforms.seg_scoring import SourceGrid

    writer = dicom_seg.SegWriter(str(tmp_path), ["0", "1"], "1", "binary", "test")
    key = ScoreKey("s", None, ("2.25.5", "", "", "P", "CT"), (0,), ((8, 8),), None)
    with pytest.raises(StageError, match="header could not be encoded") as info:
        writer.write(key, np.zeros((1, 8, 8, 2), np.float32), [SourceGrid.of(8, 8, 8)])
    assert info.value.error_type == "seg_failed" and not list(tmp_path.iterdir())


@pytest.mark.parametrize("scored", [(0, 1, 2), (1,)])
def test_a_multi_frame_instance_with_planes_gets_a_seg_frame_per_source_frame(tmp_path, scored):
    """An enhanced MR header with its frame of reference: every frame scored, one SEG frame
    per source frame (dciodvfy: no error); some frames scored, a dead letter that says so."""
    from transforms.deadletter import StageError
    from transforms.scoring import ScoreKey
    from transforms.seg_scoring import SourceGrid
    from transforms.testing.masks import enhanced_image

    source = enhanced_image(3, 32, 48, "2.25.8801")
    source.PatientID, source.PatientName, source.StudyInstanceUID = "P1", "PSEUDO^NYM", "2.25.8802"
    source.SeriesInstanceUID, source.FrameOfReferenceUID = "2.25.8803", "2.25.8804"
    del source.PixelData
    header = io.BytesIO()
    source.save_as(header, enforce_file_format=True)
    drawn = np.zeros((3, 32, 48), bool)
    drawn[0, 4:12, 8:20], drawn[2, 20:30, 30:44] = True, True
    grid = SourceGrid.of(32, 48, 48)  # 32 x 48 padded into 48 x 48: rows 8-39
    probabilities = np.zeros((len(scored), 48, 48, 2), np.float32)
    for i, frame in enumerate(scored):
        probabilities[i, 8:40, :, 1] = np.where(drawn[frame], 0.9, 0.1)
    probabilities[..., 0] = 1 - probabilities[..., 1]
    ids = ("2.25.8801", "2.25.8803", "2.25.8802", "P1", "MR")
    key = ScoreKey("s", None, ids, scored, ((32, 48),) * len(scored), header.getvalue())
    writer = dicom_seg.SegWriter(str(tmp_path), ["0", "1"], "1", "binary", "test")
    if len(scored) < 3:
        with pytest.raises(StageError, match="1 of its 3 frames were scored"):
            writer.write(key, probabilities, [grid] * len(scored))
        return
    path = Path(writer.write(key, probabilities, [grid] * 3))
    assert _dciodvfy_errors(path) == []
    seg = hd.seg.segread(path)
    pixels = seg.get_pixels_by_source_frame("2.25.8801", [1, 2, 3], segment_numbers=[1])
    assert np.array_equal(pixels[..., 0].astype(bool), drawn)
