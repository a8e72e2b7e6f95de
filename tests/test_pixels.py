"""Tests for transforms.pixels: each step on tiny datasets, then real and synthetic corpora."""

import functools
import io
import tarfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space, get_decoder
from pydicom.sequence import Sequence

from transforms import testing as synth
from transforms.deadletter import StageError
from transforms.pixels import (
    NormalizedImage,
    PixelConfig,
    PixelError,
    apply_window,
    choose_window,
    decode,
    frame_indices,
    invert_monochrome1,
    modality_lut,
    normalize,
    percentiles,
    resize_pad,
    to_channels,
)

SIZE = 32


def voi_window(arr, ds, config, frame=0):
    """Modality values to [0, 1] as normalize windows them: the chosen window, applied."""
    return apply_window(arr, choose_window(arr, ds, config, frame), ds)


def _dataset(arr: np.ndarray, photometric: str = "MONOCHROME2", **attrs: object) -> Dataset:
    """An uncompressed in-memory image; a 3-D grey or 4-D colour array is multi-frame."""
    samples = 1 if photometric.startswith("MONO") else 3
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SamplesPerPixel, ds.PhotometricInterpretation = samples, photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    if arr.ndim == (3 if samples == 1 else 4):
        ds.NumberOfFrames = arr.shape[0]
    ds.Rows, ds.Columns = arr.shape[-3:-1] if samples == 3 else arr.shape[-2:]
    bits = arr.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = int(arr.dtype.kind == "i")
    ds.PixelData = arr.tobytes()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def _lut_item(descriptor: list[int], data: list[int]) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = descriptor
    item.add_new("LUTData", "US", data)
    return item


def _error(ds: Dataset, config: PixelConfig | None = None) -> PixelError:
    with pytest.raises(PixelError) as info:
        normalize(ds, config or PixelConfig(size=SIZE))
    return info.value


# ---------------------------------------------------------------- config


def test_config_from_mapping_normalizes_windows():
    config = PixelConfig.from_mapping(
        {"size": 64, "windows": {"ct": [40, 400], "CT/Head ": [1, 2]}}
    )
    assert config == PixelConfig(size=64, windows={"CT": (40.0, 400.0), "CT/HEAD": (1.0, 2.0)})
    assert PixelConfig.from_mapping(None) == PixelConfig()


def test_config_unknown_keys_are_named():
    with pytest.raises(ValueError, match="unknown pixel config keys: colour, sise"):
        PixelConfig.from_mapping({"sise": 1, "colour": True, "channels": 3})


BAD_CONFIGS = [
    {"size": 0},
    {"size": True},
    {"channels": 2},
    {"frame_policy": "last"},
    {"windows": {"CT": (40, 0)}},
    {"windows": {"CT": (float("nan"), 10)}},
]


@pytest.mark.parametrize("bad", BAD_CONFIGS)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        PixelConfig.from_mapping(bad)


# ---------------------------------------------------------------- steps


def test_decode_adds_frame_axis_and_native_byte_order():
    little = decode(pydicom.dcmread(get_testdata_file("MR_small.dcm")))
    big = decode(pydicom.dcmread(get_testdata_file("MR_small_bigendian.dcm")))
    assert little.shape == big.shape == (1, 64, 64)
    assert big.dtype.isnative and np.array_equal(little, big)


def test_modality_lut_rescale_gives_hu():
    ds = _dataset(np.array([[1024, 0], [2048, 1000]], np.uint16))
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    out = modality_lut(decode(ds)[0], ds)
    assert out.dtype == np.float32
    assert out.tolist() == [[0, -1024], [1024, -24]]


def test_modality_lut_sequence():
    ds = _dataset(np.array([[0, 1], [2, 9]], np.uint16))
    ds.ModalityLUTSequence = Sequence([_lut_item([3, 1, 16], [100, 200, 300])])
    assert modality_lut(decode(ds)[0], ds).tolist() == [[100, 100], [200, 300]]


def test_modality_lut_enhanced_functional_groups():
    def group(**values: str) -> Dataset:
        item = Dataset()
        item.PixelValueTransformationSequence = Sequence([Dataset()])
        for keyword, value in values.items():
            setattr(item.PixelValueTransformationSequence[0], keyword, value)
        return item

    ds = _dataset(np.full((2, 2, 2), 10, np.uint16))
    ds.SharedFunctionalGroupsSequence = Sequence([group(RescaleSlope="2", RescaleIntercept="0")])
    ds.PerFrameFunctionalGroupsSequence = Sequence([Dataset(), group(RescaleIntercept="-5")])
    frames = decode(ds)
    assert modality_lut(frames[0], ds, frame=0).max() == 20
    assert modality_lut(frames[1], ds, frame=1).max() == 15  # slope shared, intercept per frame


def test_window_maps_edges_to_zero_and_one():
    ds = _dataset(np.zeros((1, 1), np.uint16), Modality="CT")
    ds.WindowCenter, ds.WindowWidth = ["40", "300"], ["400", "1500"]  # first value counts
    values = np.array([-500, -160, 40, 240, 900], np.float32)
    assert voi_window(values, ds, PixelConfig()).tolist() == [0, 0, 0.5, 1, 1]


def test_sigmoid_and_enhanced_frame_window():
    ds = _dataset(np.zeros((2, 1, 1), np.uint16))
    item = Dataset()
    item.WindowCenter, item.WindowWidth, item.VOILUTFunction = "100", "50", "SIGMOID"
    per_frame = Dataset()
    per_frame.FrameVOILUTSequence = Sequence([item])
    ds.PerFrameFunctionalGroupsSequence = Sequence([Dataset(), per_frame])
    values = np.array([75, 100, 125], np.float32)
    expected = 1 / (1 + np.exp([2, 0, -2]))  # PS3.3 C.11.2.1.3.1
    np.testing.assert_allclose(voi_window(values, ds, PixelConfig(), frame=1), expected, 1e-6)
    assert choose_window(values, ds, PixelConfig(), frame=0).function == "LINEAR"  # min/max


def test_explicit_preset_wins_and_body_part_beats_modality():
    ds = _dataset(np.zeros((1, 1), np.uint16), Modality="CT", BodyPartExamined="Head")
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    values = np.array([0, 50, 100], np.float32)
    assert voi_window(values, ds, PixelConfig(windows={"CT": (50, 100)})).tolist() == [0, 0.5, 1]
    both = PixelConfig(windows={"CT": (50, 100), "ct/head": (0, 200)})
    assert voi_window(values, ds, both).tolist() == [0.5, 0.75, 1]


def test_voi_lut_sequence():
    ds = _dataset(np.zeros((1, 1), np.uint16))
    ds.VOILUTSequence = Sequence([_lut_item([3, 10, 8], [0, 51, 255])])
    out = voi_window(np.array([5, 10, 11, 12, 99], np.float32), ds, PixelConfig())
    assert out.tolist() == pytest.approx([0, 0, 0.2, 1, 1])
    window = choose_window(np.zeros(1), ds, PixelConfig())
    assert (window.center, window.width, window.function) == (11.5, 3.0, "LUT")


def test_min_max_uses_robust_percentiles():
    values = np.append(np.arange(1000, dtype=np.float32), 1e6)  # one wild outlier
    ds = _dataset(np.zeros((1, 1), np.uint16))
    window = choose_window(values, ds, PixelConfig())
    lo, hi = np.percentile(values, [0.5, 99.5])
    assert (window.center, window.width) == pytest.approx(((lo + hi) / 2, hi - lo))
    out = voi_window(values, ds, PixelConfig())
    assert out.min() == 0 and out.max() == 1 and out[500] == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint16])
@pytest.mark.parametrize("size", [1, 2, 7, 200, 16384])
def test_percentiles_are_numpys(dtype, size):
    rng = np.random.default_rng(size)
    values = rng.normal(0, 1000, size) + (0 if dtype in (np.float32, np.float64) else 5000)
    values = values.astype(dtype)
    qs = (0.0, 0.5, 37.3, 99.5, 100.0)
    np.testing.assert_array_equal(percentiles(values, qs), np.percentile(values, qs))


def test_sparse_mask_keeps_its_foreground():
    mask = np.zeros((40, 40), np.uint8)
    mask[0, :3] = 1  # 3 of 1600 pixels: the 99.5th percentile alone would be 0
    (image,) = normalize(_dataset(mask), PixelConfig(size=40))
    assert image.pixels[..., 0].max() == 1 and image.window_width == 1


def test_float_pixel_data_with_nan():
    ds = _dataset(np.zeros((2, 3), np.uint8))
    del ds.PixelData
    ds.BitsAllocated = 32
    for keyword in ("BitsStored", "HighBit", "PixelRepresentation"):
        delattr(ds, keyword)
    ds.FloatPixelData = np.float32([[0, 1, np.nan], [2, 3, 4]]).tobytes()
    (image,) = normalize(ds, PixelConfig(size=3))
    assert np.isfinite(image.pixels).all() and image.pixels[0, 2, 0] == 0
    assert image.pixels.max() == 1


def test_constant_image_gives_zeros():
    (image,) = normalize(_dataset(np.full((8, 6), 700, np.uint16)), PixelConfig(size=SIZE))
    assert np.isfinite(image.pixels).all() and not image.pixels.any()
    assert (image.window_center, image.window_width) == (700, 0)


def test_monochrome1_is_inverted():
    ramp = np.arange(16, dtype=np.uint16).reshape(4, 4)
    grey = normalize(_dataset(ramp), PixelConfig(size=4))[0].pixels
    inverted = normalize(_dataset(ramp, "MONOCHROME1"), PixelConfig(size=4))[0].pixels
    np.testing.assert_allclose(inverted, 1 - grey, atol=1e-6)
    assert inverted[0, 0, 0] == 1 and inverted[-1, -1, 0] == 0
    mono2 = _dataset(ramp)
    assert invert_monochrome1(np.float32([0.25]), mono2).tolist() == [0.25]


def test_rgb_to_grey_and_grey_to_rgb():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[1, 1] = (255, 255, 255)
    ds = _dataset(rgb, "RGB")
    grey = normalize(ds, PixelConfig(size=2))[0]
    assert grey.pixels.shape == (2, 2, 1)
    np.testing.assert_allclose(grey.pixels[..., 0], [[0.299, 0], [0, 1]], atol=1e-6)
    colour = normalize(ds, PixelConfig(size=2, channels=3))[0]
    np.testing.assert_allclose(colour.pixels, rgb / 255, atol=1e-6)
    mono = _dataset(np.zeros((2, 2), np.uint8))
    three = to_channels(np.float32([[0.1, 0.2], [0.3, 0.4]]), mono, 3)
    assert three.shape == (2, 2, 3) and (three == three[..., :1]).all()
    with pytest.raises(ValueError, match="does not fit"):
        to_channels(np.zeros((2, 2, 3), np.float32), mono, 1)


def test_ybr_ends_as_rgb():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    (image,) = normalize(_dataset(ybr, "YBR_FULL"), PixelConfig(size=8, channels=3))
    assert image.photometric == "YBR_FULL"  # the source's, while the pixels are RGB
    np.testing.assert_allclose(image.pixels[1:7], rgb / 255, atol=2.5 / 255)  # 6 rows padded to 8


def test_frame_policies():
    frames = np.stack([np.full((4, 4), 10 * f, np.uint16) for f in range(5)])
    ds = _dataset(frames, WindowCenter="20", WindowWidth="40")
    assert [frames[i][0, 0] for i in frame_indices(len(frames), "all")] == [0, 10, 20, 30, 40]
    assert [frames[i][0, 0] for i in frame_indices(len(frames), "middle")] == [20]
    assert decode(ds, index=2).shape == (1, 4, 4)
    for policy, expected in [("first", [0]), ("middle", [2]), ("all", [0, 1, 2, 3, 4])]:
        images = normalize(ds, PixelConfig(size=4, frame_policy=policy))
        assert [i.frame for i in images] == expected
        assert [float(i.pixels.mean()) for i in images] == pytest.approx([f / 4 for f in expected])


def test_resize_pad_keeps_aspect_ratio_centred():
    tall = resize_pad(np.ones((100, 50, 1), np.float32), 64)
    assert tall.shape == (64, 64, 1) and tall.dtype == np.float32
    np.testing.assert_allclose(tall[:, 16:48], 1, atol=1e-6)
    assert not tall[:, :16].any() and not tall[:, 48:].any()
    wide = resize_pad(np.ones((50, 100, 3), np.float32), 64)
    np.testing.assert_allclose(wide[16:48], 1, atol=1e-6)
    assert not wide[:16].any() and not wide[48:].any()
    ramp = np.random.default_rng(1).random((37, 23, 1), dtype=np.float32)
    assert np.array_equal(resize_pad(ramp, 64), resize_pad(ramp, 64))


# ---------------------------------------------------------------- failures


def test_no_pixel_data():
    ds = _dataset(np.zeros((2, 2), np.uint8))
    del ds.PixelData
    error = _error(ds)
    assert isinstance(error, StageError)  # routes through the dead-letter code as it is
    assert (error.error_type, error.message) == ("no_pixel_data", "dataset has no pixel data")


def _no_decoder_syntaxes() -> list[uid.UID]:
    out = []
    for value in vars(uid).values():
        if isinstance(value, uid.UID) and value.is_transfer_syntax:
            try:
                get_decoder(value)
            except NotImplementedError:
                out.append(value)
    return sorted(out)


@pytest.mark.parametrize("syntax", _no_decoder_syntaxes())
def test_syntax_without_decoder_is_undecodable(syntax):
    # No pydicom test file uses one, so a real encapsulated file is relabelled.
    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PatientName = "SECRET^PATIENT"
    error = _error(ds)
    assert error.error_type == "undecodable"
    assert (
        error.message
        == f"cannot decode transfer syntax {syntax} ({syntax.name}): no decoder exists"
    )


def test_syntax_whose_plugins_are_missing_is_undecodable(monkeypatch):
    # Every plugin is installed here; an installation without them is simulated.
    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    decoder_class = type(get_decoder(uid.JPEG2000))
    monkeypatch.setattr(decoder_class, "is_available", property(lambda self: False))
    error = _error(ds)
    assert (error.error_type, error.message) == (
        "undecodable",
        f"cannot decode transfer syntax {uid.JPEG2000} (JPEG 2000 Image Compression): "
        "no decoder plugin installed",
    )


def test_ybr_without_rgb_conversion_is_refused():
    error = _error(_dataset(np.zeros((4, 4, 3), np.uint8), "YBR_PARTIAL_422"))
    assert (error.error_type, error.message) == (
        "unsupported_photometric",
        "no RGB conversion for YBR_PARTIAL_422",
    )


def test_missing_transfer_syntax_is_undecodable():
    ds = _dataset(np.zeros((2, 2), np.uint8))
    del ds.file_meta.TransferSyntaxUID
    error = _error(ds)
    assert (error.error_type, error.message) == (
        "undecodable",
        "cannot decode: no transfer syntax (file meta lacks it)",
    )


def test_unexpected_failure_is_typed_without_values():
    ds = _dataset(np.zeros((2, 2), np.uint16))
    # pydicom builds a "uint12" LUT dtype from this descriptor, which numpy refuses.
    ds.ModalityLUTSequence = Sequence([_lut_item([3, 0, 12], [0, 1, 2])])
    error = _error(ds)
    assert (error.error_type, error.message) == ("normalize_failed", "cannot normalize (TypeError)")
    assert error.__cause__ is None and error.__suppress_context__


# ---------------------------------------------------------------- pydicom's test files

TEST_FILES = Path(get_testdata_file("CT_small.dcm")).parent
# Broken on purpose in pydicom's corpus (see its test_files/README.txt): every decoder fails.
KNOWN_BROKEN = {
    "JPEG-lossy.dcm": ("undecodable", "non-conformant JPEG (bad SOS); JPGExtended.dcm is fixed"),
    "JPEG2000-embedded-sequence-delimiter.dcm": ("undecodable", "J2K bytes overwritten"),
    "MR_truncated.dcm": ("undecodable", "pixel data shorter than Rows x Columns"),
    "nested_priv_SQ.dcm": ("undecodable", "Pixel Data without an Image Pixel module"),
    "meta_missing_tsyntax.dcm": ("undecodable", "no Transfer Syntax UID"),
    "badVR.dcm": ("normalize_failed", "Number of Frames '1A'"),
}


def _has_pixels(path: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return "PixelData" in pydicom.dcmread(path)
        except Exception:
            return False


def _corpus_paths() -> list[str]:
    """pydicom's own test files that it can read and that hold pixels (others have no image).

    ``get_testdata_files()`` also lists the files of other data sources when they are installed
    (pydicom-data's data_store); those are left out so that the corpus, its ids and
    KNOWN_BROKEN are the same on every machine.
    """
    return sorted(
        p
        for p in get_testdata_files()
        if Path(p).is_relative_to(TEST_FILES) and Path(p).is_file() and _has_pixels(p)
    )


def test_the_public_corpus_is_large():
    assert len(_corpus_paths()) >= 90


@functools.cache
def _outcome(path: str) -> tuple[str, str | None, object]:
    """("ok", syntax, (ds, images)) | ("error", syntax, PixelError); ``path`` holds pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # odd files on purpose: padding, bad VRs, ...
        ds = pydicom.dcmread(path)  # readable and with pixels: _corpus_paths checked
        ts = ds.file_meta.get("TransferSyntaxUID")
        try:
            config = PixelConfig(size=SIZE, channels=3, frame_policy="all")
            return "ok", ts, (ds, normalize(ds, config))
        except PixelError as e:
            return "error", ts, e


def _claimed(ts: str | None) -> bool:
    try:
        return ts is not None and get_decoder(ts).is_available
    except NotImplementedError:
        return False


@pytest.mark.parametrize(
    "path",
    _corpus_paths(),
    ids=lambda p: str(
        Path(p).relative_to(TEST_FILES) if Path(p).is_relative_to(TEST_FILES) else Path(p).name
    ),
)
def test_pydicom_test_file(path):
    status, ts, result = _outcome(path)
    name = Path(path).name
    if name in KNOWN_BROKEN or not _claimed(ts):
        assert status == "error", f"{name} decoded; update KNOWN_BROKEN"
        assert result.error_type == KNOWN_BROKEN.get(name, ("undecodable",))[0]
        if ts is not None and result.error_type == "undecodable":
            assert f"cannot decode transfer syntax {ts} ({ts.name})" in result.message
        return
    assert status == "ok", f"{result.error_type}: {result.message}"
    ds, images = result
    assert len(images) == int(ds.get("NumberOfFrames") or 1)
    for image in images:
        assert isinstance(image, NormalizedImage)
        assert image.pixels.shape == (SIZE, SIZE, 3) and image.pixels.dtype == np.float32
        assert np.isfinite(image.pixels).all()
        assert image.pixels.min() >= 0 and image.pixels.max() <= 1
        assert (image.rows, image.columns) == (ds.Rows, ds.Columns)


def test_pydicom_corpus_coverage(record_property):
    outcomes = [_outcome(p) for p in _corpus_paths()]
    ok = [ts for status, ts, _ in outcomes if status == "ok"]
    record_property("files_normalized", len(ok))
    record_property("syntaxes_normalized", sorted({str(ts) for ts in ok}))
    expected = {
        uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.ExplicitVRBigEndian,
        uid.DeflatedExplicitVRLittleEndian, uid.RLELossless, uid.JPEGBaseline8Bit,
        uid.JPEGExtended12Bit, uid.JPEGLosslessSV1, uid.JPEG2000Lossless, uid.JPEG2000,
        uid.JPEGLSLossless, uid.JPEGLSNearLossless,
    }  # fmt: skip
    assert expected <= set(ok)
    assert len(ok) >= 80


# ---------------------------------------------------------------- synthetic corpus


def _members(part: synth.CorpusPart) -> Iterator[tuple[str, bytes]]:
    for f in part.files:
        if f.path.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(f.data)) as zf:
                yield from ((n, zf.read(n)) for n in zf.namelist() if not n.endswith("/"))
        elif f.path.endswith(".tar.gz"):
            with tarfile.open(fileobj=io.BytesIO(f.data)) as tf:
                yield from ((m.name, tf.extractfile(m).read()) for m in tf if m.isfile())
        else:
            yield f.path, f.data


def _content(image: NormalizedImage, size: int) -> np.ndarray:
    """The resized image without the padding around it."""
    scale = size / max(image.rows, image.columns)
    rows, cols = max(1, round(image.rows * scale)), max(1, round(image.columns * scale))
    top, left = (size - rows) // 2, (size - cols) // 2
    return image.pixels[top : top + rows, left : left + cols, 0]


def test_synthetic_corpus():
    config = PixelConfig(size=64, frame_policy="all")
    modalities, syntaxes, photometrics = set(), set(), set()
    for index in range(7):
        for name, data in _members(synth.synth_patient(index, 0)):
            ds = pydicom.dcmread(io.BytesIO(data))
            images = normalize(ds, config)
            assert len(images) == int(ds.get("NumberOfFrames") or 1), name
            modalities.add(ds.Modality)
            syntaxes.add(ds.file_meta.TransferSyntaxUID)
            photometrics.add(ds.PhotometricInterpretation)
            for image in images:
                pixels = image.pixels
                assert pixels.shape == (64, 64, 1) and np.isfinite(pixels).all(), name
                assert pixels.min() >= 0 and pixels.max() <= 1, name
                content = _content(image, 64)
                r, c = content.shape[0] // 2, content.shape[1] // 2
                centre = content[r - 2 : r + 2, c - 2 : c + 2].mean()
                corners = np.concatenate([content[-3:, :3], content[-3:, -3:]]).mean()
                # The phantom body is bright (MONOCHROME1 CR included, once inverted);
                # angiography shows it dark.
                brighter = centre < corners if ds.Modality == "XA" else centre > corners
                assert brighter, f"{name} {ds.Modality}"
                if ds.Modality == "CT":
                    assert (image.window_center, image.window_width) == (40, 400)
    assert modalities == {"CT", "CR", "DX", "MR", "US", "XA", "OT"}
    assert syntaxes == set(synth.available_transfer_syntaxes())  # all 8 where every codec is in
    assert photometrics == {"MONOCHROME1", "MONOCHROME2", "RGB"}


def test_synthetic_junk():
    files = {f.path: f.data for f in synth.synth_extras(0).files}
    unsupported = pydicom.dcmread(io.BytesIO(files["export/junk/unsupported.dcm"]))
    error = _error(unsupported)
    assert error.error_type == "undecodable"
    assert error.message == (
        f"cannot decode transfer syntax {synth.UNSUPPORTED_TS} (JPEG XL): no decoder exists"
    )
    no_pixels = pydicom.dcmread(io.BytesIO(files["export/junk/no_pixels.dcm"]))
    assert _error(no_pixels).error_type == "no_pixel_data"
