"""What the reading layer yields: SourceObject, object kinds and the read limits."""

import logging
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam
import pydicom
import pynetdicom  # noqa: F401  (see below)
from apache_beam.metrics import Metrics

from transforms.deadletter import (
    DEAD_LETTER,
    METRICS_NAMESPACE,
    DeadLetter,
)

# pynetdicom registers the transfer syntaxes newer than this pydicom (JPEG XL, ...) in
# pydicom's UID dictionary when imported. Imported here, below everything that reads DICOM,
# so a UID's name and ``is_transfer_syntax`` are the same in every process, not only in
# those that happened to load the DIMSE sources.

_pydicom_quiet = False


def quiet_pydicom() -> None:
    """Keeps pydicom (and highdicom, which logs the UIDs it reads) from quoting values in
    this process's logs: call before parsing.

    pydicom reports odd values through warnings and its logger, quoting the values; those
    are PHI, so neither may reach a worker's log. Not validating on read means the messages
    are never built; the logger and warning filters catch what other paths still say.
    These are pydicom's global settings, so they are changed by this explicit call (from
    ``parse_dataset`` and the DoFns that read datasets, in ``setup``), never on import.
    """
    global _pydicom_quiet
    if _pydicom_quiet:
        return
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
    # highdicom (SEG read in ingest, written in score) logs SOP Instance UIDs at WARNING.
    logging.getLogger("highdicom").setLevel(logging.CRITICAL + 1)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    warnings.filterwarnings("ignore", module=r"highdicom(\.|$)")
    _pydicom_quiet = True


DEFAULT_MAX_OBJECT_BYTES = 1 << 30  # 1 GiB: larger objects get a too_large error row
MAX_ARCHIVE_DEPTH = 2  # an archive inside an archive is expanded; deeper nesting is refused

_HEAD_BYTES = 512
_GLOB_CHARS = frozenset("*?[")
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_EXPLICIT_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL "
    b"UN UR US UT UV".split()
)
_LONG_EXPLICIT_VRS = frozenset(b"OB OD OF OL OV OW SQ UC UN UR UT SV UV".split())

# Code values the inventory reports as they are; anything else becomes "INVALID".
# Modalities: PS3.3 C.7.3.1.1.1 defined terms, current and retired.
MODALITIES = frozenset(
    """AR ASMT AU BDUS BI BMD CD CF CFM CP CR CS CT CTPROTOCOL DD DF DG DM DOC DS DX EC ECG
    EEG EMG EOG EPS ES FA FID FS GM HC HD IO IOL IVOCT IVUS KER KO LEN LP LS M3D MA MG MR MS
    NM OAM OCT OP OPM OPR OPT OPTBSV OPTENF OPV OSS OT PA PLAN POS PR PT PX REG RESP RF RG
    RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF
    ST STAIN TEXTUREMAP TG US VA VF XA XAPROTOCOL XC""".split()
)
PHOTOMETRIC_INTERPRETATIONS = frozenset(
    [
        *"""MONOCHROME1 MONOCHROME2 RGB YBR_FULL YBR_FULL_422 YBR_PARTIAL_422 YBR_PARTIAL_420
        YBR_ICT YBR_RCT HSV ARGB CMYK XYB""".split(),
        "PALETTE COLOR",
    ]
)
_YES_NO = frozenset({"YES", "NO"})

# Kinds of object, by content.
KIND_EMPTY = "empty"
KIND_DICOM = "dicom"
KIND_ZIP = "zip"
KIND_TAR = "tar"  # plain, or compressed with gzip/bz2/xz (tarfile sniffs which)
KIND_GZIP = "gzip"
KIND_UNKNOWN = "unknown"
_ARCHIVE_KINDS = frozenset({KIND_ZIP, KIND_TAR, KIND_GZIP})


@dataclass(frozen=True)
class SourceObject:
    """One DICOM candidate: a loose object, or a member of an archive at ``source``."""

    source: str
    member: str | None
    data: bytes


class ReadCounters:
    """Where a read item goes and what it counts: a ``SourceObject`` to the main output
    (counters ``objects`` and ``read_bytes``), a ``DeadLetter`` to ``DEAD_LETTER``
    (counter ``failed``). Built in a DoFn's ``__init__`` or ``setup``."""

    def __init__(self, objects: str, read_bytes: str, failed: str):
        self._objects = Metrics.counter(METRICS_NAMESPACE, objects)
        self._bytes = Metrics.counter(METRICS_NAMESPACE, read_bytes)
        self._failed = Metrics.counter(METRICS_NAMESPACE, failed)

    def route(self, item: "SourceObject | DeadLetter"):
        if isinstance(item, DeadLetter):
            self._failed.inc()
            return beam.pvalue.TaggedOutput(DEAD_LETTER, item)
        self._objects.inc()
        self._bytes.inc(len(item.data))
        return item


class ReadOutputs(NamedTuple):
    """What a reading composite gives: the objects, and the dead letters of getting them."""

    objects: beam.PCollection[SourceObject]
    dead_letters: beam.PCollection[DeadLetter]
