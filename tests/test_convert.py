"""The conversion ingest and scoring share: parse → de-identify → normalize → ids and bytes."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from models import features as f
from transforms import convert as cv
from transforms.deadletter import DEAD_LETTER
from transforms.deid import DeidConfig, Deidentifier, Profile
from transforms.dicom_io import SourceObject
from transforms.keys import KeySource
from transforms.pixels import PixelConfig, normalize
from transforms.tfrecord import quantize

KEY = "k" * 64


@pytest.fixture
def engine() -> Deidentifier:
    return Deidentifier(Profile.load(), DeidConfig(), KEY.encode())


def test_convert_pseudonymizes_and_normalizes_like_the_parts(engine):
    path = get_testdata_file("CT_small.dcm")
    original = pydicom.dcmread(path)
    result, images = cv.convert(pydicom.dcmread(path), engine, PixelConfig(size=32))
    assert result.sop_instance_uid == engine.pseudonyms.uid(original.SOPInstanceUID)
    assert result.patient_id.startswith("PAT") and result.modality == "CT"
    assert result.data is None  # not re-encoded: nobody writes it
    (image,) = images
    expected = normalize(original, PixelConfig(size=32))[0].pixels  # de-id keeps pixels
    np.testing.assert_array_equal(image.pixels, expected)
    stored = cv.to_image(image)
    assert stored.shape == (32, 32, 1) and stored.data == quantize(expected).tobytes()


@pytest.mark.parametrize(
    ("change", "stage", "error_type"),
    [
        (lambda ds: setattr(ds, "BurnedInAnnotation", "YES"), "deidentify", "burned_in_annotation"),
        (lambda ds: delattr(ds, "PixelData"), "pixels", "no_pixel_data"),
    ],
)
def test_convert_names_the_stage_that_failed(engine, change, stage, error_type):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    change(ds)
    with pytest.raises(cv.ConvertError) as caught:
        cv.convert(ds, engine, PixelConfig(size=32))
    assert (caught.value.stage, caught.value.error_type) == (stage, error_type)


def test_parse_and_convert_fns_route_dead_letters(monkeypatch):
    monkeypatch.setenv("DF_CONVERT_KEY", KEY)
    good = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    parse = cv.ParseFn()
    (ok,) = parse.process(SourceObject("gs://b/Doe^John/ct.dcm", None, good))
    (bad,) = parse.process(SourceObject("gs://b/x", "m", good[: len(good) // 2]))
    assert bad.tag == DEAD_LETTER and (bad.value.stage, bad.value.error_type) == (
        "parse",
        "truncated",
    )

    fn = cv.ConvertFn(DeidConfig(), KeySource(env="DF_CONVERT_KEY"), PixelConfig(size=16), "t")
    fn.setup()
    key, ds = ok
    (instance,) = fn.process((key, (ds, "1")))
    assert instance.source == "gs://b/Doe^John/ct.dcm" and instance.label == "1"
    assert instance.ids[f.MODALITY] == "CT" and len(instance.images) == 1
    assert instance.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    no_pixels = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del no_pixels.PixelData
    (letter,) = fn.process((("s", "m"), (no_pixels, None)))
    assert letter.tag == DEAD_LETTER
    assert (letter.value.stage, letter.value.error_type) == ("pixels", "no_pixel_data")
