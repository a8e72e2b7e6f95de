"""One DICOM instance as a model sees it: parse → de-identify → normalize pixels → ids.

Ingest and scoring share this code path, so an image scored straight from a bucket gets
the very uint8 bytes its TFRecord example holds: the same pseudonyms (under the same key),
the same pixel chain, the same quantization. ``convert`` is the pure core; ``ParseFn`` and
``ConvertFn`` are the Beam shell (counters and dead letters with stage ``parse``,
``deidentify`` or ``pixels``).
"""

from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
from apache_beam.metrics import Metrics
from pydicom.dataset import Dataset

from models import features as f
from transforms import dicom_io
from transforms.deadletter import (
    DEAD_LETTER,
    STAGE_DEIDENTIFY,
    STAGE_PARSE,
    STAGE_PIXELS,
    DeadLetter,
    StageError,
    unexpected,
)
from transforms.deid import DeidConfig, Deidentifier, DeidResult, Profile, deidentify_dataset
from transforms.keys import KeySource
from transforms.pixels import NormalizedImage, PixelConfig, normalize
from transforms.tfrecord import quantize


class ConvertError(StageError):
    """A conversion failure and the stage it happened in (``deidentify`` or ``pixels``)."""

    def __init__(self, stage: str, error: StageError):
        super().__init__(error.error_type, error.message)
        self.stage = stage


def convert(
    ds: Dataset,
    engine: Deidentifier,
    pixels: PixelConfig,
    limits: dicom_io.Limits | None = None,
) -> tuple[DeidResult, list[NormalizedImage]]:
    """De-identifies ``ds`` in place (not re-encoded) and normalizes its pixels; the frames
    the frame policy keeps are checked against ``limits`` before anything is decoded.

    Returns:
        The pseudonymous identifiers and one image per frame the frame policy keeps.

    Raises:
        ConvertError: with ``stage`` ``deidentify`` or ``pixels``; ``too_many_frames`` and
            ``too_large_decoded`` (stage ``pixels``) for frames over the limits; deep
            nesting found late is ``too_deep``; an unforeseen exception becomes
            ``unexpected_error`` naming only its type.
    """
    limits = dicom_io.Limits.of(limits)
    stage = STAGE_DEIDENTIFY
    try:
        result, _ = deidentify_dataset(ds, engine, encode=False)
        stage = STAGE_PIXELS
        if any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            frames = dicom_io.parse.frame_count(ds) if pixels.frame_policy == "all" else 1
            dicom_io.check_decoded(ds, frames, limits)
        return result, normalize(ds, pixels)
    except StageError as e:
        raise ConvertError(stage, e) from None
    except RecursionError:
        raise ConvertError(stage, StageError("too_deep", "sequences nested too deep")) from None
    except Exception as e:  # one odd file must not stop the run
        raise ConvertError(stage, unexpected(e)) from None


@dataclass(frozen=True)
class Image:
    """One model input: uint8 pixels as stored in TFRecords and served, and where from."""

    data: bytes  # height x width x channels, row-major
    shape: tuple[int, int, int]
    frame: int
    rows: int
    columns: int
    window_center: float
    window_width: float
    photometric: str


@dataclass(frozen=True)
class Instance:
    """A converted instance: pseudonymous ids, its images, and a caller's payload."""

    source: str
    member: str | None
    ids: dict[str, str]  # sop/series/study instance UID, patient_id, modality
    transfer_syntax_uid: str
    images: tuple[Image, ...]
    label: str | None = None  # ingest's label, carried through untouched


def to_image(image: NormalizedImage) -> Image:
    pixels = quantize(image.pixels)
    return Image(
        pixels.tobytes(),
        pixels.shape,
        image.frame,
        image.rows,
        image.columns,
        image.window_center,
        image.window_width,
        image.photometric,
    )


def instance_ids(result: DeidResult) -> dict[str, str]:
    return {
        f.SOP_INSTANCE_UID: result.sop_instance_uid,
        f.SERIES_INSTANCE_UID: result.series_instance_uid,
        f.STUDY_INSTANCE_UID: result.study_instance_uid,
        f.PATIENT_ID: result.patient_id,
        f.MODALITY: result.modality,
    }


class ParseFn(beam.DoFn):
    """SourceObject → ((source, member), Dataset), or a parse dead letter."""

    def __init__(self, limits: dicom_io.Limits | None = None):
        self._limits = dicom_io.Limits.of(limits)

    def process(self, obj: dicom_io.SourceObject):
        try:
            ds = dicom_io.parse_dataset(obj.data, self._limits)
        except StageError as e:
            error = e
        except Exception as e:
            error = unexpected(e)
        else:
            yield (obj.source, obj.member), ds
            return
        letter = DeadLetter(obj.source, obj.member, STAGE_PARSE, error.error_type, error.message)
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)


class ConvertFn(beam.DoFn):
    """((source, member), (Dataset, label)) → an ``Instance``, or a dead letter.

    The de-identification engine (profile, options, key) is built once per worker in
    ``setup``; the key is resolved there from its source and never travels in the graph.
    Counters ``<prefix>_converted`` and ``<prefix>_dead_letters`` in namespace dicomflow.
    """

    def __init__(
        self,
        deid_config: DeidConfig,
        key: KeySource,
        pixels: PixelConfig,
        prefix: str,
        limits: dicom_io.Limits | None = None,
    ):
        self._deid_config = deid_config
        self._key = key
        self._pixels = pixels
        self._prefix = prefix
        self._limits = dicom_io.Limits.of(limits)

    def setup(self):
        self._engine = Deidentifier(Profile.load(), self._deid_config, self._key.resolve())
        namespace = dicom_io.METRICS_NAMESPACE
        self._converted = Metrics.counter(namespace, f"{self._prefix}_converted")
        self._failed = Metrics.counter(namespace, f"{self._prefix}_dead_letters")

    def process(self, element):
        (source, member), (ds, label) = element
        try:
            result, images = convert(ds, self._engine, self._pixels, self._limits)
        except ConvertError as e:
            self._failed.inc()
            letter = DeadLetter(source, member, e.stage, e.error_type, e.message)
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
            return
        self._converted.inc()
        yield Instance(
            source,
            member,
            instance_ids(result),
            str(ds.file_meta.get("TransferSyntaxUID", "")),
            tuple(to_image(image) for image in images),
            label,
        )
