"""Burned-in text redaction: planted text boxes blanked, the rest untouched, no text left."""

import dataclasses
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from transforms import deid
from transforms.deadletter import StageError
from transforms.deid.objects import redaction_counts
from transforms.deid.ocr import frames_8bit, load_ocr
from transforms.deid.pixels import blank_value
from transforms.deid.redact import identifiers, is_identifying, redact_pixels, region_band
from transforms.testing.burnin import (
    HARD_KINDS,
    TextBox,
    burn_text,
    hard_case,
    size_band,
    text_lines,
)

KEY = b"r" * 32
FIELDS = {
    "family": "QUINTERO",
    "given": "ROSALIND",
    "pid": "PID004711",
    "date": "20190317",
    "time": "142233",
    "institution": "Harbourview Clinic",
    "accession": "AC99172",
}
# (modality, photometric, bits, top, frames): radiograph, inverted radiograph,
# ultrasound, screenshot, multi-frame run.
KINDS = [
    ("DX", "MONOCHROME2", 16, 16383, 1),
    ("CR", "MONOCHROME1", 16, 4095, 1),
    ("US", "MONOCHROME2", 8, 255, 1),
    ("OT", "RGB", 8, 255, 1),
    ("XA", "MONOCHROME2", 8, 255, 2),
]


def _image(kind: tuple, seed: int, lines=None) -> tuple[Dataset, list[TextBox]]:
    """A small body-like image with planted text, as a dataset, and the planted boxes."""
    modality, photometric, bits, top, frames = kind
    rng = np.random.default_rng(seed)
    rows, cols = 160, 176
    yy, xx = np.mgrid[:rows, :cols]
    body = (((yy - 80) / 60) ** 2 + ((xx - 88) / 70) ** 2 <= 1) * 0.5
    img = np.clip(body + rng.normal(0, 0.03, (rows, cols)), 0, 1)
    if photometric == "MONOCHROME1":
        img = 1 - 0.9 * img
    arr = np.round(img * top).astype(np.uint16 if bits == 16 else np.uint8)
    if photometric == "RGB":
        arr = np.repeat(arr[..., None], 3, axis=2)
    if frames > 1:
        arr = np.stack([arr] * frames)
    lines = lines or text_lines(FIELDS, rng)
    arr, boxes = burn_text(arr, lines, rng, top, photometric == "MONOCHROME1", frames > 1)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName = f"{FIELDS['family']}^{FIELDS['given']}"
    ds.PatientID, ds.Modality = FIELDS["pid"], modality
    ds.StudyDate, ds.PatientBirthDate = FIELDS["date"], "19610203"
    ds.AccessionNumber, ds.InstitutionName = FIELDS["accession"], FIELDS["institution"]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = (
        bits,
        top.bit_length(),
        top.bit_length() - 1,
    )
    ds.PixelRepresentation = 0
    ds.PixelData = arr.tobytes()
    return ds, boxes


def _frames(ds: Dataset) -> np.ndarray:
    arr = ds.pixel_array
    return arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[np.newaxis]


@pytest.fixture(scope="module")
def redacted() -> list[tuple[Dataset, np.ndarray, list[TextBox]]]:
    """Each kind, redacted with the default policy: (dataset after, frames before, boxes)."""
    out = []
    for i, kind in enumerate(KINDS):
        ds, boxes = _image(kind, seed=i)
        before = _frames(ds).copy()
        result = redact_pixels(ds, deid.PixelPolicy())
        assert result.mode == "all_text" and result.regions >= 1 and 0 < result.fraction < 0.5
        out.append((ds, before, boxes))
    return out


def test_every_planted_box_is_blanked_and_little_else_changes(redacted):
    for ds, before, boxes in redacted:
        after = _frames(ds)
        fill = blank_value(ds, after.dtype, after)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        planted = np.zeros(after.shape[:3], bool)
        for b in boxes:
            x0, y0, x1, y1 = b.box
            if b.phi:
                assert (after[b.frame, y0:y1, x0:x1] == fill).all(), (ds.Modality, b.text)
            # Margin: the policy grows each region; count changes beyond that as false blanks.
            h = y1 - y0
            planted[b.frame, max(0, y0 - h) : y1 + h, max(0, x0 - 2 * h) : x1 + 2 * h] = True
        changed = before != after
        if changed.ndim == 4:
            changed = changed.any(axis=3)
        assert changed[~planted].mean() < 0.05, ds.Modality


def test_independent_ocr_finds_no_planted_string(redacted, tmp_path):
    """Tesseract (another engine, another model) reads the redacted frames: nothing planted."""
    if shutil.which("tesseract") is None:
        pytest.fail("tesseract is not installed (.ci/run installs Debian's tesseract-ocr)")

    def read(view: np.ndarray, name: str) -> str:
        # Tesseract reads dark text on light best and needs glyphs > 20 px: invert, enlarge.
        path = tmp_path / f"{name}.png"
        big = Image.fromarray(255 - view).resize((view.shape[1] * 3, view.shape[0] * 3))
        big.save(path)
        done = subprocess.run(
            ["tesseract", str(path), "-", "--psm", "11"], capture_output=True, text=True
        )
        return re.sub(r"[^0-9A-Z]", "", done.stdout.upper())

    planted = {re.sub(r"[^0-9A-Z]", "", v) for v in (FIELDS["family"], FIELDS["given"], "004711")}
    found_before = 0
    for n, (ds, before, _) in enumerate(redacted):
        view_before = frames_8bit(ds, before if len(before) > 1 else before[0])[0]
        found_before += any(p in read(view_before, f"before{n}") for p in planted)
        text = read(frames_8bit(ds, ds.pixel_array)[0], f"after{n}")
        assert not [p for p in planted if p in text], ds.Modality
    assert found_before >= 2  # the scan reads planted text, so its silence means something


def test_identifying_text_keeps_markers_and_blanks_identifiers():
    lines = [("QUINTERO^ROSALIND", True), ("PORTABLE", False), ("17/03/2019", True)]
    ds, boxes = _image(KINDS[0], seed=7, lines=lines)
    policy = deid.PixelPolicy(redact="identifying_text")
    result = redact_pixels(ds, policy)
    after = _frames(ds)
    by_text = {b.text: b.box for b in boxes}
    for text in ("QUINTERO^ROSALIND", "17/03/2019"):
        x0, y0, x1, y1 = by_text[text]
        assert (after[0, y0:y1, x0:x1] == 0).all(), text
    x0, y0, x1, y1 = by_text["PORTABLE"]
    assert after[0, y0:y1, x0:x1].max() > 0  # kept: not an identifier
    assert result.mode == "identifying_text" and result.regions == 2


def test_what_counts_as_identifying():
    ds, _ = _image(KINDS[2], seed=1)
    tokens = identifiers(ds)
    assert {"QUINTERO", "ROSALIND", "PID004711", "AC99172", "03021961"} <= tokens
    assert is_identifying("Quintero R.", 0.99, tokens)
    for text in ("2019-03-17", "14:22", "MRN 1234567", "XR7731A", "SMITH, ANNA", "QUINT3RO"):
        assert is_identifying(text, 0.99 if text != "QUINT3RO" else 0.5, tokens), text
    for text in ("L", "R", "PORTABLE", "SUPINE", "AP"):
        assert not is_identifying(text, 0.95, tokens), text


class _StubbornOcr:
    """A detector that always sees text at one place: the check after redaction must refuse."""

    batch = 1

    def detect(self, frame, scale=None):
        return [(10, 10, 40, 20)] if frame.shape[0] > 20 else []

    def detect_many(self, frames, scale=None):
        return [self.detect(f, scale) for f in frames]


def test_text_left_after_redaction_is_a_dead_letter():
    ds, _ = _image(KINDS[2], seed=2)
    with pytest.raises(StageError) as caught:
        redact_pixels(ds, deid.PixelPolicy(), ocr=_StubbornOcr())
    assert caught.value.error_type == "burned_in_text_remaining"
    assert "QUINTERO" not in caught.value.message


def test_deidentify_redacts_by_default_and_marks_clean_pixel_data():
    ds, _ = _image(KINDS[2], seed=3)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    engine = deid.Deidentifier(deid.Profile.load(), deid.DeidConfig(), KEY)
    result, _ = deid.deidentify_object(buf.getvalue(), engine)
    assert result.redaction.mode == "all_text" and result.redaction.regions >= 2
    # The manifest's audit counts: the image once under its modality and once under each
    # size band of its regions (the planted lines are 11-20 px tall as detected).
    keys = deid.count_keys(result.net_counts)
    assert keys.count(("redacted_images_by_modality", "US")) == 1
    bands = [v for k, v in keys if k == "redacted_images_by_region_height"]
    assert bands == sorted(set(bands)) and set(bands) == set(result.redaction.bands)
    assert bands and set(bands) <= {"1-10", "11-20", "21-48", "49+"}
    out = pydicom.dcmread(io.BytesIO(result.data))
    assert "113101" in [c.CodeValue for c in out.DeidentificationMethodCodeSequence]
    assert out.PatientIdentityRemoved == "YES"
    exclude = deid.DeidConfig.from_yaml("pixels: {policy: exclude}")
    with pytest.raises(StageError, match="exclude"):
        deid.deidentify_object(buf.getvalue(), deid.Deidentifier(deid.Profile.load(), exclude, KEY))


def test_undecodable_pixels_are_a_dead_letter():
    ds, _ = _image(KINDS[2], seed=4)
    ds.PixelData = b"\0" * 10
    with pytest.raises(StageError) as caught:
        redact_pixels(ds, deid.PixelPolicy())
    assert caught.value.error_type == "redact_failed"


def test_region_bands_and_no_counts_without_redaction():
    assert [region_band(h) for h in (1, 10, 11, 20, 21, 48, 49, 400)] == [
        "1-10",
        "1-10",
        "11-20",
        "11-20",
        "21-48",
        "21-48",
        "49+",
        "49+",
    ]
    ds, _ = _image(KINDS[2], seed=3)
    assert redaction_counts(ds, None) == {}
    nothing = deid.Redaction("all_text", 0, 0, 0.0)
    assert redaction_counts(ds, nothing) == {}
    some = deid.Redaction("all_text", 3, 90, 0.01, ("1-10", "21-48"))
    counts = redaction_counts(ds, some)
    assert counts == {"redacted:US": 1, "redacted_height:1-10": 1, "redacted_height:21-48": 1}


def test_config_validates_redact_options():
    config = deid.DeidConfig.from_yaml("pixels: {redact: identifying_text, redact_margin: 0.5}")
    assert config.pixels.policy == "redact" and config.pixels.redact_margin == 0.5
    assert config.describe()["pixels"]["redact"] == "identifying_text"
    with pytest.raises(ValueError, match="all_text or identifying_text"):
        deid.DeidConfig.from_yaml("pixels: {redact: some_text}")
    with pytest.raises(ValueError, match="redact_margin"):
        deid.DeidConfig.from_yaml("pixels: {redact_margin: 5}")


def test_models_load_once_from_the_wheel():
    assert load_ocr() is load_ocr()  # cached per process: a worker loads it once
    assert load_ocr(4) is load_ocr()  # the first load's threads hold for the process
    assert load_ocr().provider in ("CPUExecutionProvider", "CUDAExecutionProvider")


# --- public files that did not converge, and photometric interpretations ----------------------

# (package, file, frame): the frame of a multi-frame file on which redaction used to give up.
PUBLIC = [
    ("pydicom-data", "US1_UNCI.dcm", None),
    ("pydicom-data", "JPGLosslessP14SV1_1s_1f_8b.dcm", None),
    ("pydicom-data", "color3d_jpeg_baseline.dcm", 0),
    ("deid-data", "ultrasounds/ultrasound-multiframe.dcm", 14),
    ("pydicom-data", "OT-PAL-8-face.dcm", None),
]


def _public(package: str, name: str, frame: int | None) -> Dataset:
    """A public test file (one frame of it where ``frame`` is given), as a dataset."""
    from pathlib import Path

    import deid_data
    from pydicom.data import get_testdata_file

    if package == "deid-data":
        path = str(Path(deid_data.__file__).parent / "data" / name)
    else:
        path = get_testdata_file(name)
    ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:  # OT-PAL-8-face.dcm has no meta header
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    if frame is not None:
        from pydicom.pixels import pixel_array

        from transforms.deid.pixels import store_frames

        store_frames(ds, pixel_array(path, index=frame)[np.newaxis])  # that frame alone
        ds.NumberOfFrames = 1
    return ds


def _tesseract_words(view: np.ndarray, path) -> set[str]:
    """Words of four or more letters or digits that Tesseract reads in an 8-bit frame."""
    big = Image.fromarray(255 - view).resize((view.shape[1] * 2, view.shape[0] * 2))
    big.save(path)
    done = subprocess.run(["tesseract", str(path), "-", "--psm", "11"], capture_output=True)
    words = re.split(r"\s+", done.stdout.decode("utf-8", "replace").upper())
    return {w for w in (re.sub(r"[^0-9A-Z]", "", w) for w in words) if len(w) >= 4}


@pytest.mark.parametrize("package,name,frame", PUBLIC, ids=[p[1] for p in PUBLIC])
def test_public_images_converge_with_their_text_blanked(package, name, frame, tmp_path):
    """Real screens from scanners: all their text blanked, no dead letter, and image
    structure (Doppler colour, ECG traces, sector edges) that the detector calls text once
    the real text is gone is left alone instead of blanked round after round."""
    ds = _public(package, name, frame)
    before = frames_8bit(ds, ds.pixel_array)[0]
    result = redact_pixels(ds, deid.PixelPolicy())
    assert result.regions >= 1 and result.fraction < 0.2, result
    after = frames_8bit(ds, ds.pixel_array)[0]
    read_before = _tesseract_words(before, tmp_path / "before.png")
    read_after = _tesseract_words(after, tmp_path / "after.png")
    if name != "OT-PAL-8-face.dcm":  # a photograph: its only text is two box symbols
        assert len(read_before) >= 3, read_before  # the independent reader sees the text
    assert not read_before & read_after, read_before & read_after


def test_palette_color_is_shown_through_its_palette_and_blanked_to_its_darkest_entry():
    ds = _public("pydicom-data", "OT-PAL-8-face.dcm", None)
    from pydicom.pixels import apply_color_lut

    view = frames_8bit(ds, ds.pixel_array)[0]
    rgb = apply_color_lut(ds.pixel_array, ds)
    assert view.shape == (*ds.pixel_array.shape, 3)
    assert np.corrcoef(view[..., 0].ravel(), rgb[..., 0].ravel())[0, 1] > 0.99
    fill = blank_value(ds, ds.pixel_array.dtype)
    assert apply_color_lut(np.array([fill], np.uint8), ds).sum() == rgb.reshape(-1, 3).sum(1).min()
    redact_pixels(ds, deid.PixelPolicy())
    assert ds.PhotometricInterpretation == "PALETTE COLOR"  # indices stay indices


# --- hard text, frames, providers ---------------------------------------------------------


def _hard_dataset(case) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "US", "MORALES^ANA", "PID123456"
    ds.Rows, ds.Columns = case.frames.shape[1:3]
    if len(case.frames) > 1:
        ds.NumberOfFrames = len(case.frames)
    ds.SamplesPerPixel = 3 if case.rgb else 1
    ds.PhotometricInterpretation = "RGB" if case.rgb else "MONOCHROME2"
    if case.rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = case.frames.tobytes()
    return ds


@pytest.mark.parametrize("kind", HARD_KINDS)
def test_hard_text_is_blanked_whole_and_frames_without_text_stay_untouched(kind):
    """Small, edge, low-contrast, inverted, coloured, textured, some-frames-only text:
    every line's box (antialiased edges included) blanked, little else changed, and in a
    run the frames without text are left as they were."""
    case = hard_case(kind, np.random.default_rng(HARD_KINDS.index(kind)), rows=320, cols=320)
    inside = np.zeros(case.ink.shape, bool)
    for b in case.boxes:
        inside[b.frame, b.box[1] : b.box[3], b.box[0] : b.box[2]] = True
    assert case.ink.any() and not (case.ink & ~inside).any()  # the boxes hold all the ink
    ds = _hard_dataset(case)
    redact_pixels(ds, deid.PixelPolicy())
    after = _frames(ds)
    allowed = np.zeros(after.shape[:3], bool)
    for b in case.boxes:
        x0, y0, x1, y1 = b.box
        assert (after[b.frame, y0:y1, x0:x1] == 0).all(), (kind, size_band(b.box), b.text)
        h = y1 - y0
        allowed[b.frame, max(0, y0 - h) : y1 + h, max(0, x0 - 2 * h) : x1 + 2 * h] = True
    changed = case.frames != after
    changed = changed.any(axis=3) if changed.ndim == 4 else changed
    assert changed[~allowed].mean() < 0.01, kind
    for f in set(range(len(after))) - {b.frame for b in case.boxes}:
        assert not changed[f].any(), f"frame {f} has no text and was changed"


def test_identical_frames_are_detected_once():
    ds, _boxes = _image(("XA", "MONOCHROME2", 8, 255, 4), seed=9)
    ocr = load_ocr()
    calls = []

    def counting(x):
        calls.append(x.shape)
        return ocr.detector(x)

    result = redact_pixels(ds, deid.PixelPolicy(), ocr=dataclasses.replace(ocr, detector=counting))
    single, _ = _image(("XA", "MONOCHROME2", 8, 255, 1), seed=9)
    once = []
    redact_pixels(
        single,
        deid.PixelPolicy(),
        ocr=dataclasses.replace(ocr, detector=lambda x: once.append(1) or ocr.detector(x)),
    )
    assert len(calls) == len(once)  # four identical frames cost what one does
    after = _frames(ds)
    assert result.regions == 4 * (result.regions // 4) and (after == after[0]).all()


def test_the_provider_is_cuda_where_onnxruntime_offers_it_and_frames_are_batched_there():
    from transforms.deid.ocr import providers

    assert providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers(gpu) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    ocr = load_ocr()
    assert ocr.provider == "CPUExecutionProvider" and ocr.batch == 1  # this machine
    # The batched path (as on CUDA) gives each frame the boxes it gets alone.
    batched = dataclasses.replace(ocr, provider="CUDAExecutionProvider")
    shapes = []
    batched.detector = lambda x: shapes.append(x.shape[0]) or ocr.detector(x)
    views = [frames_8bit(ds, ds.pixel_array)[0] for ds, _ in (_image(k, seed=5) for k in KINDS)]
    assert batched.detect_many(views) == [ocr.detect(v) for v in views]
    assert max(shapes) > 1  # frames of one shape went through together


def test_threads_per_worker_are_its_share_of_the_cores():
    from apache_beam.options.pipeline_options import PipelineOptions

    from transforms.deid.ocr import share_of_cores, usable_cores

    assert [share_of_cores(8, n) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    cores = usable_cores()
    assert cores >= 1
    assert deid.ocr_threads(PipelineOptions([])) == cores  # one local worker: every core
    local = PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert deid.ocr_threads(local) == max(1, cores // 2)
    assert deid.ocr_threads(PipelineOptions(["--direct_num_workers=0"])) == 1  # one per core
    assert deid.ocr_threads(PipelineOptions(["--runner=DataflowRunner"])) == 1


def test_large_frames_are_detected_in_tiles_where_text_may_be():
    """A 1280² frame (over TILE_ABOVE): the first detection sees only the tiles that
    text_cells selects, a small part of the frame that holds every line, and every line
    is blanked whole; an empty frame selects next to nothing."""
    from transforms.deid.redact import TILE_ABOVE, text_cells, tiles

    case = hard_case("small", np.random.default_rng(4), rows=1280, cols=1280)
    assert TILE_ABOVE < 1280**2
    view = np.repeat(case.frames[0][..., np.newaxis], 3, axis=2)
    parts = tiles(view)
    assert parts is not None
    covered = np.zeros(view.shape[:2], bool)
    for x0, y0, x1, y1 in parts:
        covered[y0:y1, x0:x1] = True
    assert covered.mean() < 0.3
    for b in case.boxes:
        assert covered[b.box[1] : b.box[3], b.box[0] : b.box[2]].all(), b.box
    noise = np.random.default_rng(5).normal(60, 6, view.shape[:2]).clip(0, 255).astype(np.uint8)
    assert text_cells(np.repeat(noise[..., np.newaxis], 3, axis=2)).mean() < 0.01
    ocr = load_ocr()
    seen = []

    def counting(x):
        seen.append(x.shape[2] * x.shape[3])
        return ocr.detector(x)

    ds = _hard_dataset(case)
    redact_pixels(ds, deid.PixelPolicy(), ocr=dataclasses.replace(ocr, detector=counting))
    after = _frames(ds)
    assert all(
        (after[0, y0:y1, x0:x1] == 0).all() for x0, y0, x1, y1 in (b.box for b in case.boxes)
    )
    assert max(seen) < 1280**2  # no whole-frame detection at full scale


def test_faint_text_on_a_flat_panel_is_stretched_for_the_detector():
    """Three 6-7 px lines 18-27 levels above a uniform panel (a rendered case of which the
    detector found none, before its view stretched panels): the detector sees them at
    least twice as far from the panel, finds them and every one is blanked; noise, where
    no 3 x 3 area is flat, is seen as it is."""
    from transforms.deid.ocr import panels_stretched

    case = hard_case("low_contrast", np.random.default_rng(37), rows=320, cols=320)
    view = np.repeat(case.frames[0][..., np.newaxis], 3, axis=2)
    seen = panels_stretched(view)
    for b in case.boxes:
        x0, y0, x1, y1 = b.box
        ink = case.ink[0, y0:y1, x0:x1]
        panel = np.median(view[y0:y1, x0:x1, 0][~ink])
        assert np.median(seen[y0:y1, x0:x1, 0][~ink]) == panel  # the panel keeps its value
        before = view[y0:y1, x0:x1, 0][ink].mean() - panel
        assert 0 < before < 32 and seen[y0:y1, x0:x1, 0][ink].mean() - panel > 2 * before
    noise = np.random.default_rng(5).normal(60, 6, view.shape[:2]).clip(0, 255).astype(np.uint8)
    noise = np.repeat(noise[..., np.newaxis], 3, axis=2)
    assert (panels_stretched(noise) == noise).all()
    ds = _hard_dataset(case)
    redact_pixels(ds, deid.PixelPolicy())
    after = _frames(ds)
    for b in case.boxes:
        x0, y0, x1, y1 = b.box
        assert (after[0, y0:y1, x0:x1] == 0).all(), (size_band(b.box), b.text)


def test_a_line_half_dropped_by_the_detector_is_completed_along_its_ink():
    """A rendered case with 8-10 px lines over textured anatomy: the detector's map holds
    the second half of the date line, but rapidocr scores that region over its tilted
    bounding rectangle (whose soft top and bottom rows are a large share of a line ten
    pixels high in the map) at 0.49, under its 0.5 threshold, and drops it: 3 of 5 lines
    were blanked whole. The first half's box grows along the line's ink over the rest,
    and every line is blanked. (Scoring over the region's outline instead found the half
    too, but let two staggered lines through as one tilted box, whose upright extent
    blanked 2.5 times the pixels outside the text of another such image.)"""
    from transforms.deid.ocr import ink_continued

    case = hard_case("textured", np.random.default_rng(30))
    date = case.boxes[2]
    assert date.text.startswith("2005") and size_band(date.box) == "6-10"
    view = np.repeat(case.frames[0][..., np.newaxis], 3, axis=2)
    x0, y0, x1, y1 = date.box
    ink = case.ink[0, y0:y1, x0:x1]
    for grow in (False, True):
        found = np.zeros(view.shape[:2], bool)
        for box in load_ocr().detect(view):
            b0, c0, b1, c1 = ink_continued(view, box) if grow else box
            found[c0:c1, b0:b1] = True
        covered = (found[y0:y1, x0:x1] & ink).sum() / ink.sum()
        assert covered > 0.95 if grow else covered < 0.7, (grow, covered)
    ds = _hard_dataset(case)
    redact_pixels(ds, deid.PixelPolicy())
    after = _frames(ds)
    for b in case.boxes:
        x0, y0, x1, y1 = b.box
        assert (after[0, y0:y1, x0:x1] == 0).all(), (size_band(b.box), b.text)


def test_a_line_grows_past_a_border_whose_colour_outnumbers_its_ink():
    """A thin 7 px line runs from a flat dark border onto a noisy panel, and the detector's
    box stops at the panel. Beside 1 px strokes the border's pixels are not flat, and they
    outnumber the ink: taken for the ink they ended the line at the border. The border is
    as common in the box's padding rows as in its middle, so it is not the ink."""
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    from transforms.deid.ocr import ink_continued

    rows, cols = 120, 240
    frame = np.full((rows, cols), 30, np.uint8)
    frame[:, 60:] = np.random.default_rng(3).normal(120, 30, (rows, cols - 60)).clip(0, 254)
    font_file = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSerif.ttf"
    font = ImageFont.truetype(str(font_file), 7)
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    text = "ST MARY HOSPITAL  ACC A7731"
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((-left, 50 - top), text, fill=255, font=font)
    view = np.repeat(np.asarray(image)[..., np.newaxis], 3, axis=2)
    height = bottom - top
    box = (0, 47, 61, 50 + height + 5)  # as the detector gives it: padded, cut at the panel
    grown = ink_continued(view, box)
    assert grown[1::2] == box[1::2]
    # to within a window of its end (the last glyphs, "31", hold too few full-ink
    # pixels; the margin around each blanked box covers them), never past it
    step = box[3] - box[1]  # the box's height: the width of the windows it grows by
    assert right - left - step <= grown[2] <= right - left + step, grown


def test_a_line_cut_short_grows_along_its_own_ink():
    """A rendered case with 6-10 px lines over textured anatomy, where the detector finds
    only "PETER" of "NAKAMURA, PETER" (the name crosses a bone as bright as its ink):
    the box grows along the row over the pixels of the line's own colour and covers the
    whole line, the other lines' boxes do not grow past their text, and every line is
    blanked (without it, a fifth of the name was left)."""
    from transforms.deid.ocr import ink_continued

    case = hard_case("textured", np.random.default_rng(8), rows=320, cols=320)
    view = np.repeat(case.frames[0][..., np.newaxis], 3, axis=2)
    name = case.boxes[0]
    assert name.text.startswith("NAKAMURA") and size_band(name.box) == "6-10"
    for box in load_ocr().detect(view):
        line = max((b.box for b in case.boxes), key=lambda b: min(b[3], box[3]) - max(b[1], box[1]))
        grown = ink_continued(view, box)
        height = box[3] - box[1]
        assert grown[1::2] == box[1::2] and grown[0] <= box[0] and grown[2] >= box[2]
        assert line[0] - height <= grown[0] and grown[2] <= line[2] + height
        if line == name.box:
            assert box[0] > line[0] + 40 and grown[0] <= line[0] and grown[2] >= line[2]
    noise = np.random.default_rng(5).normal(60, 6, view.shape[:2]).clip(0, 255).astype(np.uint8)
    noise = np.repeat(noise[..., np.newaxis], 3, axis=2)
    assert ink_continued(noise, (100, 100, 140, 112)) == (100, 100, 140, 112)
    ds = _hard_dataset(case)
    redact_pixels(ds, deid.PixelPolicy())
    after = _frames(ds)
    for b in case.boxes:
        x0, y0, x1, y1 = b.box
        assert (after[0, y0:y1, x0:x1] == 0).all(), (size_band(b.box), b.text)
