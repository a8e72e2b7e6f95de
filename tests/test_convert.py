"""The conversion ingest and scoring share: parse → de-identify → normalize → ids and bytes."""

import io
from pathlib import Path

import apache_beam as beam
import numpy as np
import pydicom
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from pydicom.data import get_testdata_file

from models import features as f
from transforms import convert as cv
from transforms.deadletter import DEAD_LETTER
from transforms.deid import DeidConfig, Deidentifier, Profile
from transforms.dicom_io import SourceObject
from transforms.keys import KeySource
from transforms.labels import LabelTable
from transforms.pixels import PixelConfig, normalize
from transforms.tfrecord import quantize

KEY = "k" * 64


@pytest.fixture
def engine() -> Deidentifier:
    return Deidentifier(Profile.load(), DeidConfig(), KEY.encode())


EXCLUDE = DeidConfig.from_yaml("pixels: {policy: exclude}")


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
def test_convert_names_the_stage_that_failed(change, stage, error_type):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    change(ds)
    engine = Deidentifier(Profile.load(), EXCLUDE, KEY.encode())
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


# --- PrepareInstances: the composite ingest and score share ----------------------------------


def _objects() -> tuple[list[SourceObject], str]:
    """Three in-memory objects: one that converts, one that does not parse, one without
    pixels (parses and de-identifies, then fails at the pixel stage)."""
    good = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer)
    objects = [
        SourceObject("gs://b/ct.dcm", None, good),
        SourceObject("gs://b/a.zip", "cut.dcm", good[: len(good) // 2]),
        SourceObject("gs://b/no-pixels.dcm", None, buffer.getvalue()),
    ]
    return objects, str(ds.SOPInstanceUID)


def test_prepare_instances_names_its_outputs_and_routes_every_object(monkeypatch):
    monkeypatch.setenv("DF_CONVERT_KEY", KEY)
    objects, original_uid = _objects()
    engine = Deidentifier(Profile.load(), DeidConfig(), KEY.encode())
    uid = engine.pseudonyms.uid(original_uid)
    with TestPipeline() as p:
        prepared = (
            p
            | beam.Create(objects)
            | cv.PrepareInstances(
                DeidConfig(), KeySource(env="DF_CONVERT_KEY"), PixelConfig(size=16), "t"
            )
        )
        assert isinstance(prepared, cv.Prepared) and prepared.unmatched_labels is None
        assert_that(
            prepared.instances
            | "Ids" >> beam.Map(lambda i: (i.source, i.ids[f.SOP_INSTANCE_UID], i.label)),
            equal_to([("gs://b/ct.dcm", uid, None)]),
            label="Instances",
        )
        assert_that(
            prepared.dead_letters
            | "Letters" >> beam.Map(lambda d: (d.source, d.member, d.stage, d.error_type)),
            equal_to(
                [
                    ("gs://b/a.zip", "cut.dcm", "parse", "truncated"),
                    ("gs://b/no-pixels.dcm", None, "pixels", "no_pixel_data"),
                ]
            ),
            label="DeadLetters",
        )


def test_prepare_instances_joins_labels_on_the_original_uid(monkeypatch):
    monkeypatch.setenv("DF_CONVERT_KEY", KEY)
    objects, uid = _objects()
    table = LabelTable("SOPInstanceUID", {uid: "1", "1.2.3.nobody": "0"}, 0, 2)
    with TestPipeline() as p:
        labels = p | "Labels" >> beam.Create([table])
        prepared = (
            p
            | beam.Create(objects[:1])
            | cv.PrepareInstances(
                DeidConfig(), KeySource(env="DF_CONVERT_KEY"), PixelConfig(size=16), "t", labels
            )
        )
        assert_that(
            prepared.instances | "Labels Of" >> beam.Map(lambda i: i.label),
            equal_to(["1"]),
            label="Labeled",
        )
        assert_that(prepared.unmatched_labels, equal_to([1]), label="Unmatched")
        assert_that(prepared.dead_letters, equal_to([]), label="NoDeadLetters")


def test_prepare_instances_checks_its_input_type():
    from apache_beam.typehints.decorators import TypeCheckError

    with pytest.raises(TypeCheckError), TestPipeline() as p:
        _ = (
            p
            | beam.Create([1, 2])
            | cv.PrepareInstances(DeidConfig(), KeySource(env="X"), PixelConfig(), "t")
        )
