"""One DICOM instance as a model sees it: parse → de-identify → normalize pixels → ids.

Ingest and scoring share this code path, so an image scored straight from a bucket gets
the very uint8 bytes its TFRecord example holds: the same pseudonyms (under the same key),
the same pixel chain, the same quantization. ``convert`` is the pure core; ``ParseFn`` and
``ConvertFn`` are the Beam shell (counters and dead letters with stage ``parse``,
``deidentify`` or ``pixels``), and ``PrepareInstances`` the composite both pipelines apply.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from pydicom.dataset import Dataset

from models import features as f
from transforms import dicom_io
from transforms.composite import NamedOutputs
from transforms.deadletter import (
    DEAD_LETTER,
    STAGE_DEIDENTIFY,
    STAGE_PARSE,
    STAGE_PIXELS,
    DeadLetter,
    DeadLetterFn,
    StageError,
    at_stage,
)
from transforms.deid import (
    DeidConfig,
    Deidentifier,
    DeidResult,
    Profile,
    deidentify_dataset,
    ocr_threads,
    warm_ocr,
)
from transforms.deid.objects import encode_part10
from transforms.keys import KeySource
from transforms.labels import JoinLabels, LabelTable
from transforms.mask_classes import MaskClasses
from transforms.mask_geometry import fit_label_map
from transforms.mask_join import (
    CLASS_NAMES,
    ClassNames,
    JoinMasks,
    MaskLabel,
    NotAMaskFn,
    ReadMaskPartsFn,
    SegmentationObjectFn,
)
from transforms.masks import mask_kind
from transforms.pixels import NormalizedImage, PixelConfig, normalize
from transforms.tfrecord import quantize


class ConvertError(StageError):
    """A conversion failure and the stage it happened in (``deidentify`` or ``pixels``)."""

    def __init__(self, stage: str, error: StageError):
        super().__init__(error.error_type, error.message, stage)


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
    try:
        with at_stage(STAGE_DEIDENTIFY):
            result, _ = deidentify_dataset(ds, engine, encode=False)
        with at_stage(STAGE_PIXELS):
            if any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
                frames = dicom_io.parse.frame_count(ds) if pixels.frame_policy == "all" else 1
                dicom_io.check_decoded(ds, frames, limits)
            return result, normalize(ds, pixels)
    except StageError as e:
        raise ConvertError(e.stage or STAGE_DEIDENTIFY, e) from None


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
    deid_counts: tuple[tuple[str, int], ...] = ()  # de-id net and redaction counts, by name
    redaction: dict | None = None  # index columns of pixel redaction (counts only)
    # What evaluation slices by, read after de-identification (only what survives it).
    attributes: tuple[tuple[str, str | None], ...] = ()
    # Segmentation, one per image (aligned with ``images``): the label map of its frame in
    # the pixels' geometry (size x size uint8) and the share of the frame's own pixels it
    # marks; and where the masks came from (seg | rtstruct).
    mask: tuple[bytes, ...] | None = None
    mask_source: str | None = None
    foreground_fraction: tuple[float, ...] | None = None
    # The de-identified dataset without its pixels, as Part 10 bytes: only when asked
    # (scoring's DICOM SEG references it), since it would double what an instance carries.
    deid_header: bytes | None = None


# Index column → the de-identified dataset's keyword it is read from.
SLICE_ATTRIBUTES = ((f.MANUFACTURER, "Manufacturer"), (f.BODY_PART_EXAMINED, "BodyPartExamined"))


def slice_attributes(ds: Dataset) -> tuple[tuple[str, str | None], ...]:
    """The slicing attributes of a de-identified dataset (None when absent or empty)."""
    out = []
    for column, keyword in SLICE_ATTRIBUTES:
        value = str(ds.get(keyword, "") or "").strip()
        out.append((column, value[:64] or None))
    return tuple(out)


_PIXEL_GROUP = 0x7FE0  # Pixel Data, Float and Double Float Pixel Data, offset tables
_OVERLAY_DATA = 0x3000  # (60xx,3000) Overlay Data: a bit plane as large as a frame


def header_bytes(ds: Dataset) -> bytes:
    """A dataset without its pixel data and overlay planes, as Part 10 bytes (in its own
    transfer syntax's encoding; nothing in it is encapsulated)."""
    header = Dataset()
    header.file_meta = ds.file_meta
    for element in ds:
        group, number = element.tag.group, element.tag.element
        if group == _PIXEL_GROUP or (0x6000 <= group <= 0x601E and number == _OVERLAY_DATA):
            continue
        header.add(element)
    return encode_part10(header)


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


def redaction_columns(result: DeidResult) -> dict:
    """The index columns that say what burned-in text redaction did (nulls if nothing ran)."""
    r = result.redaction
    return {
        f.PIXEL_REDACTION: r.mode if r else None,
        f.REDACTED_REGIONS: r.regions if r else None,
        f.REDACTED_AREA: r.area if r else None,
        f.REDACTED_FRACTION: r.fraction if r else None,
    }


def instance_ids(result: DeidResult) -> dict[str, str]:
    return {
        f.SOP_INSTANCE_UID: result.sop_instance_uid,
        f.SERIES_INSTANCE_UID: result.series_instance_uid,
        f.STUDY_INSTANCE_UID: result.study_instance_uid,
        f.PATIENT_ID: result.patient_id,
        f.MODALITY: result.modality,
    }


class ParseFn(DeadLetterFn):
    """SourceObject → ((source, member), Dataset), or a parse dead letter."""

    stage = STAGE_PARSE

    def __init__(self, limits: dicom_io.Limits | None = None):
        super().__init__()
        self._limits = dicom_io.Limits.of(limits)

    def work(self, obj: dicom_io.SourceObject) -> Iterator[tuple[tuple[str, str | None], Dataset]]:
        yield (obj.source, obj.member), dicom_io.parse_dataset(obj.data, self._limits)


# ((source, member), (Dataset, label)): a parsed instance and its label (a class name, or
# a segmentation mask), if any.
Keyed = tuple[tuple[str, str | None], tuple[Dataset, str | MaskLabel | None]]


class ConvertFn(DeadLetterFn):
    """((source, member), (Dataset, label)) → an ``Instance``, or a dead letter.

    The de-identification engine (profile, options, key) is built once per worker in
    ``setup``; the key is resolved there from its source and never travels in the graph.
    Counters ``<prefix>_converted`` and ``<prefix>_dead_letters`` in namespace dicomflow.
    """

    stage = STAGE_DEIDENTIFY  # convert() names deidentify or pixels itself

    def __init__(
        self,
        deid_config: DeidConfig,
        key: KeySource,
        pixels: PixelConfig,
        prefix: str,
        limits: dicom_io.Limits | None = None,
        ocr_threads: int = 1,
        keep_header: bool = False,
    ):
        self._deid_config = deid_config
        self._key = key
        self._pixels = pixels
        self._prefix = prefix
        self.failed_counter = f"{prefix}_dead_letters"
        self._limits = dicom_io.Limits.of(limits)
        self._ocr_threads = ocr_threads
        self._keep_header = keep_header

    def setup(self):
        dicom_io.quiet_pydicom()  # datasets may arrive parsed in another process
        self._engine = Deidentifier(Profile.load(), self._deid_config, self._key.resolve())
        warm_ocr(self._deid_config, self._ocr_threads)
        self._converted = Metrics.counter(dicom_io.METRICS_NAMESPACE, f"{self._prefix}_converted")

    def where(self, element: Keyed) -> tuple[str, str | None]:
        return element[0]

    def work(self, element: Keyed) -> Iterator[Instance]:
        (source, member), (ds, label) = element
        mask = None
        if isinstance(label, MaskLabel):
            mask, label = label, None
        result, images = convert(ds, self._engine, self._pixels, self._limits)
        self._converted.inc()
        yield Instance(
            source,
            member,
            instance_ids(result),
            str(ds.file_meta.get("TransferSyntaxUID", "")),
            tuple(to_image(image) for image in images),
            label,
            result.net_counts,
            redaction_columns(result),
            slice_attributes(ds),
            *mask_columns(mask, images, self._pixels.size),
            deid_header=self._header(ds),
        )

    def _header(self, ds: Dataset) -> bytes | None:
        """The header when asked; None if it cannot be encoded (its SEG is then a dead
        letter of scoring's, never a reason not to score the image)."""
        if not self._keep_header:
            return None
        try:
            return header_bytes(ds)
        except Exception:
            return None


def mask_columns(
    mask: MaskLabel | None, images: list[NormalizedImage], size: int
) -> tuple[tuple[bytes, ...] | None, str | None, tuple[float, ...] | None]:
    """For each image, its frame's mask in the pixels' geometry and its foreground share;
    and the masks' source."""
    if mask is None:
        return None, None, None
    maps = [mask.frame(image.frame, image.rows, image.columns) for image in images]
    fitted = tuple(fit_label_map(label, size).tobytes() for label in maps)
    return fitted, mask.kind, tuple(float(np.mean(label > 0)) for label in maps)


def _mask_partition(element: tuple, partitions: int) -> int:
    """1 for a SEG or RTSTRUCT object, 0 for anything else."""
    return int(mask_kind(element[1]) is not None)


class Prepared(NamedTuple):
    """What ``PrepareInstances`` gives."""

    instances: beam.PCollection[Instance]
    dead_letters: beam.PCollection[DeadLetter]  # stages parse, masks, deidentify and pixels
    unmatched_labels: beam.PCollection[int] | None  # only when labels are joined
    # Only when masks are joined: one dict, class value → checked name (``ClassNames``).
    mask_classes: beam.PCollection[dict[str, str]] | None = None


class PrepareInstances(NamedOutputs):
    """SourceObjects → converted ``Instance``s: parse → join labels or masks → de-identify
    and normalize pixels. The chain ingest and scoring share, under one key and config, so
    both give the very same pseudonyms and pixel bytes. SEG and RTSTRUCT objects are never
    images: with ``masks`` they label the images they reference, else each is a dead
    letter ``segmentation_object``.

    Args:
        deid_config, key, pixels: de-identification options, the key's source (resolved
            on each worker) and pixel settings.
        prefix: names the counters ``<prefix>_converted`` and ``<prefix>_dead_letters``.
        labels: a one-element PCollection of ``LabelTable`` (``ReadLabels``) to join on
            the original identifiers before they are replaced; None for no labels.
        limits: what one object may cost to parse and decode (``dicom_io.Limits``).
        masks: join SEG and RTSTRUCT masks on the images they reference (segmentation).
        mask_classes: which segments and ROIs, by name, are which class (``MaskClasses``);
            None: their own numbers are the classes.
        mask_objects: more SourceObjects that should all be SEG or RTSTRUCT (``--masks``).
        keep_header: give each instance its de-identified header (``Instance.deid_header``).

    Returns:
        ``Prepared(instances, dead_letters, unmatched_labels, mask_classes)``;
        ``unmatched_labels`` (the number of label keys no instance matched, see
        ``JoinLabels``) is None without labels, ``mask_classes`` (the class names of the
        mask objects read) None without masks.
    """

    def __init__(
        self,
        deid_config: DeidConfig,
        key: KeySource,
        pixels: PixelConfig,
        prefix: str,
        labels: beam.PCollection[LabelTable] | None = None,
        limits: dicom_io.Limits | None = None,
        masks: bool = False,
        mask_objects: beam.PCollection[dicom_io.SourceObject] | None = None,
        keep_header: bool = False,
        mask_classes: MaskClasses | None = None,
    ):
        super().__init__()
        self._mask_classes = mask_classes
        self._keep_header = keep_header
        self._masks = masks
        self._mask_objects = mask_objects
        self._deid_config = deid_config
        self._key = key
        self._pixels = pixels
        self._prefix = prefix
        self._labels = labels
        self._limits = dicom_io.Limits.of(limits)

    def expand(self, objects: beam.PCollection[dicom_io.SourceObject]) -> Prepared:
        parse = beam.ParDo(ParseFn(self._limits))
        parsed = objects | "Parse" >> parse.with_outputs(DEAD_LETTER, main="ok")
        images, segmentations = parsed.ok | "SplitMaskObjects" >> beam.Partition(
            _mask_partition,  # type: ignore[arg-type]  # Beam wraps it
            2,
        )
        unmatched = classes = None
        dead = [parsed[DEAD_LETTER]]
        if self._masks:
            read = segmentations | "ReadMaskParts" >> beam.ParDo(
                ReadMaskPartsFn(self._mask_classes)
            ).with_outputs(DEAD_LETTER, CLASS_NAMES, main="parts")
            parts, dead = [read.parts], [*dead, read[DEAD_LETTER]]
            names = [read[CLASS_NAMES]]
            if self._mask_objects is not None:
                more = self._mask_objects | "ParseMasks" >> beam.ParDo(
                    ParseFn(self._limits)
                ).with_outputs(DEAD_LETTER, main="ok")
                kinds = more.ok | "SplitMasksInput" >> beam.Partition(
                    _mask_partition,  # type: ignore[arg-type]  # Beam wraps it
                    2,
                )
                extra = kinds[1] | "ReadMoreMaskParts" >> beam.ParDo(
                    ReadMaskPartsFn(self._mask_classes)
                ).with_outputs(DEAD_LETTER, CLASS_NAMES, main="parts")
                strays = kinds[0] | "NotMasks" >> beam.ParDo(NotAMaskFn()).with_outputs(
                    DEAD_LETTER, main="none"
                )
                parts.append(extra.parts)
                names.append(extra[CLASS_NAMES])
                dead += [more[DEAD_LETTER], extra[DEAD_LETTER], strays[DEAD_LETTER]]
            all_parts = parts | "AllMaskParts" >> beam.Flatten()
            joined, mask_dead = images | "JoinMasks" >> JoinMasks(all_parts)
            dead.append(mask_dead)
            classes = names | "AllClassNames" >> beam.Flatten() | "ClassNames" >> ClassNames()
        else:
            skipped = segmentations | "SegmentationObjects" >> beam.ParDo(
                SegmentationObjectFn()
            ).with_outputs(DEAD_LETTER, main="none")
            dead.append(skipped[DEAD_LETTER])
            if self._labels is not None:
                joined, unmatched = images | "JoinLabels" >> JoinLabels(self._labels)
            else:
                joined = images | "NoLabels" >> beam.Map(lambda kv: (kv[0], (kv[1], None)))
        threads = ocr_threads(objects.pipeline.options)
        converted = joined | "Convert" >> beam.ParDo(
            ConvertFn(
                self._deid_config,
                self._key,
                self._pixels,
                self._prefix,
                self._limits,
                threads,
                keep_header=self._keep_header,
            )
        ).with_outputs(DEAD_LETTER, main="instances")
        dead_letters = (*dead, converted[DEAD_LETTER]) | "DeadLetters" >> beam.Flatten()
        return Prepared(converted.instances, dead_letters, unmatched, classes)
