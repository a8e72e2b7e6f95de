"""Inventory rows: what each object is, described without PHI, and its Beam transform."""

import functools
from collections.abc import Iterator
from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID, UID_dictionary

from models import features as f
from transforms.composite import NamedOutputs
from transforms.deadletter import (
    DEAD_LETTER,
    STAGE_PARSE,
    DeadLetter,
    DeadLetterFn,
)
from transforms.dicom_io.limits import Limits
from transforms.dicom_io.objects import (
    _DICOMDIR_SOP_CLASS,
    _YES_NO,
    METRICS_NAMESPACE,
    MODALITIES,
    PHOTOMETRIC_INTERPRETATIONS,
    SourceObject,
)
from transforms.dicom_io.parse import parse_dataset


def _code_string(ds: Dataset, keyword: str, allowed: frozenset[str]) -> str | None:
    """A code value only if it is one we know: a broken header cannot smuggle text out."""
    try:
        value = ds.get(keyword)
    except Exception:  # an unparsable value is as good as a missing one
        return "INVALID"
    if value is None or value == "":
        return None
    text = str(value).strip().upper()
    return text if text in allowed else "INVALID"


def _uid(value) -> str | None:
    """A UID only if it is one of DICOM's own (SOP class, transfer syntax): a malformed file
    could put an instance UID where a class UID belongs, and that would identify."""
    text = str(value).strip().rstrip("\0") if value else ""
    if not text:
        return None
    standard = text.startswith("1.2.840.10008.") and all(c.isdigit() or c == "." for c in text)
    return text if standard or text in UID_dictionary else "UNREGISTERED"


def _int(ds: Dataset, keyword: str) -> int | None:
    """A count that fits the int32 column, or None (a bogus value must not fail the table)."""
    try:
        value = ds.get(keyword)
        number = int(value) if value not in (None, "") else None
    except Exception:  # an unconvertible value (pydicom raises several kinds)
        return None
    return number if number is not None and 0 <= number < 2**31 else None


def describe(obj: SourceObject, ds: Dataset) -> dict:
    """The inventory row for a parsed object: non-identifying facts only."""
    meta = ds.file_meta
    sop_class = _uid(meta.get("MediaStorageSOPClassUID") or ds.get("SOPClassUID"))
    ts = _uid(meta.get("TransferSyntaxUID"))
    has_pixels = "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
    is_dicomdir = sop_class == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds
    if is_dicomdir:
        status = f.STATUS_DICOMDIR
    elif has_pixels:
        status = f.STATUS_IMAGE
    else:
        status = f.STATUS_NO_PIXEL_DATA
    decoder_available = _decoder_available(ts) if has_pixels else None
    frames = _int(ds, "NumberOfFrames")
    return {
        f.SOURCE: obj.source,
        f.MEMBER: obj.member,
        f.SIZE_BYTES: len(obj.data),
        f.PARSE_STATUS: status,
        f.HAS_PREAMBLE: obj.data[128:132] == b"DICM",
        f.SOP_CLASS_UID: sop_class,
        f.SOP_CLASS_NAME: _uid_name(sop_class),
        f.MODALITY: _code_string(ds, "Modality", MODALITIES),
        f.TRANSFER_SYNTAX_UID: ts,
        f.TRANSFER_SYNTAX_NAME: _uid_name(ts),
        f.ROWS: _int(ds, "Rows"),
        f.COLUMNS: _int(ds, "Columns"),
        # An image without NumberOfFrames has one frame; a bogus value stays unknown.
        f.FRAMES: 1 if has_pixels and "NumberOfFrames" not in ds else frames,
        f.SAMPLES_PER_PIXEL: _int(ds, "SamplesPerPixel"),
        f.BITS_ALLOCATED: _int(ds, "BitsAllocated"),
        f.PHOTOMETRIC_INTERPRETATION: _code_string(
            ds, "PhotometricInterpretation", PHOTOMETRIC_INTERPRETATIONS
        ),
        f.HAS_PIXEL_DATA: has_pixels,
        f.BURNED_IN_ANNOTATION: _code_string(ds, "BurnedInAnnotation", _YES_NO),
        f.DECODER_AVAILABLE: decoder_available,
    }


@functools.cache
def _decoder_available(ts: str | None) -> bool | None:
    if not ts or ts == "UNREGISTERED":
        return None
    try:
        return get_decoder(UID(ts)).is_available
    except NotImplementedError:
        return False


@functools.cache
def _uid_name(uid: str | None) -> str | None:
    if not uid or uid == "UNREGISTERED":
        return None
    name = UID(uid).name
    return name if name != uid else None  # unknown (private) classes have no name


class Inspected(NamedTuple):
    """What ``InspectDicom`` gives: inventory rows and parse dead letters."""

    rows: beam.PCollection[dict]
    dead_letters: beam.PCollection[DeadLetter]


class InspectDicom(NamedOutputs):
    """SourceObjects → inventory rows, with a dead-letter output for what does not parse
    (or is over a limit)."""

    def __init__(self, limits: Limits | None = None):
        super().__init__()
        self._limits = Limits.of(limits)

    def expand(self, objects: beam.PCollection[SourceObject]) -> Inspected:
        results = objects | "Inspect" >> beam.ParDo(InspectFn(self._limits)).with_outputs(
            DEAD_LETTER, main="rows"
        )
        return Inspected(results.rows, results[DEAD_LETTER])


class InspectFn(DeadLetterFn):
    stage = STAGE_PARSE
    failed_counter = "parse_dead_letters"

    def __init__(self, limits: Limits | None = None):
        super().__init__()
        self._limits = Limits.of(limits)

    def setup(self):
        self._counters = {}

    def _count(self, status: str) -> None:
        if status not in self._counters:
            self._counters[status] = Metrics.counter(METRICS_NAMESPACE, f"inventoried_{status}")
        self._counters[status].inc()

    def work(self, obj: SourceObject) -> Iterator[dict]:
        row = describe(obj, parse_dataset(obj.data, self._limits))
        self._count(row[f.PARSE_STATUS])
        yield row
