"""Reading layer: match inputs, stream archives member by member, recognise and parse DICOM.

Everything here works through Beam's FileSystems, so a local folder and ``gs://`` read the
same way on DirectRunner and on Dataflow. Loose objects and archive members become
``SourceObject``s (at most ``max_bytes`` each); whatever cannot be read becomes a
``DeadLetter``. Archives are never held in memory whole: zip members are read one at a
time through the central directory, tar (optionally gzip/bz2/xz compressed) as a stream.
"""

import functools
import gzip
import hashlib
import io
import logging
import os
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import apache_beam as beam
import pydicom
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator, read_partial
from pydicom.pixels import get_decoder
from pydicom.uid import UID, UID_dictionary

from models import features as f
from transforms.deadletter import (
    DEAD_LETTER,
    STAGE_PARSE,
    STAGE_READ,
    DeadLetter,
    StageError,
    unexpected,
)

DEFAULT_MAX_OBJECT_BYTES = 1 << 30  # 1 GiB: larger objects get a too_large error row
MAX_ARCHIVE_DEPTH = 2  # an archive inside an archive is expanded; deeper nesting is refused
METRICS_NAMESPACE = "dicomflow"

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

# pydicom reports odd values through warnings and its logger, quoting the values; those
# are PHI, so neither may reach a worker's log. Not validating on read means the messages
# are never built; the logger and warning filters catch what other paths still say.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)
warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")


@dataclass(frozen=True)
class SourceObject:
    """One DICOM candidate: a loose object, or a member of an archive at ``source``."""

    source: str
    member: str | None
    data: bytes


# ---------------------------------------------------------------------------------------
# Inputs


def normalize_uri(uri: str) -> str:
    """Turns ``file://`` URIs into plain local paths (Beam's local filesystem has no scheme)."""
    if uri.startswith("file://"):
        uri = uri[len("file://") :] or "/"
    if "://" in uri:
        return uri
    # One spelling per local file, so overlapping inputs are recognised as such.
    return os.path.abspath(uri) + ("/" if uri.endswith("/") and uri != "/" else "")


def has_glob(uri: str) -> bool:
    return any(c in _GLOB_CHARS for c in uri)


def to_pattern(uri: str) -> str:
    """Maps one input URI to a glob: a folder (or ``gs://`` prefix) means everything below it."""
    uri = normalize_uri(uri)
    if has_glob(uri):
        return uri
    if uri.endswith("/"):
        return uri + "**"
    if "://" not in uri:
        return os.path.join(uri, "**") if os.path.isdir(uri) else uri
    return uri if FileSystems.exists(uri) else uri + "/**"


def match_uri(uri: str) -> Iterator[tuple[str, int]]:
    """Yields ``(path, size)`` of every object an input URI stands for."""
    pattern = to_pattern(uri)
    for metadata in FileSystems.match([pattern])[0].metadata_list:
        path = metadata.path
        # Folder placeholders ("dir/" objects, or local directories matched by a glob).
        if path.endswith("/") or ("://" not in path and os.path.isdir(path)):
            continue
        yield path, metadata.size_in_bytes


def check_inputs(uris: list[str]) -> None:
    """Raises ValueError, naming the URI, when an input matches nothing: before any work."""
    for uri in uris:
        pattern = to_pattern(normalize_uri(uri))
        found = FileSystems.match([pattern], limits=[1000])[0].metadata_list
        if not any(not m.path.endswith("/") and not os.path.isdir(m.path) for m in found):
            raise ValueError(f"input matches no objects: {uri}")


class MatchInputs(beam.PTransform):
    """Input URIs (files, folders, prefixes, globs) → distinct ``(path, size)`` pairs.

    Matching runs inside the pipeline so that Dataflow lists the bucket on a worker; the
    per-path combine drops overlaps between inputs and spreads the paths across workers
    before the heavy reading starts.
    """

    def __init__(self, uris: list[str]):
        super().__init__()
        self._uris = [normalize_uri(u) for u in uris]

    def expand(self, pbegin):
        return (
            pbegin
            | "InputUris" >> beam.Create(self._uris)
            | "Match" >> beam.FlatMap(match_uri)
            | "OnePerPath" >> beam.CombinePerKey(max)
        )


# ---------------------------------------------------------------------------------------
# Objects and archive members


def sniff(head: bytes) -> str:
    """Recognises an object by its first bytes, never by its name."""
    if not head:
        return KIND_EMPTY
    if len(head) >= 132 and head[128:132] == b"DICM":
        return KIND_DICOM
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return KIND_ZIP
    if head.startswith(b"\x1f\x8b"):
        return KIND_GZIP  # a gzipped tar, or one gzipped object
    if head.startswith((b"BZh", b"\xfd7zXZ\x00")):
        return KIND_TAR
    if len(head) >= 262 and head[257:262] == b"ustar":
        return KIND_TAR
    if _looks_like_bare_dataset(head):
        return KIND_DICOM
    return KIND_UNKNOWN


def _looks_like_bare_dataset(head: bytes) -> bool:
    """A dataset written without preamble and file meta (old PACS exports do this)."""
    if len(head) < 8:
        return False
    for order in "<>":
        group, element = struct.unpack(order + "HH", head[:4])
        if group not in (0x0002, 0x0008) or element > 0x0020:
            continue
        if head[4:6] in _EXPLICIT_VRS:
            return True
        (length,) = struct.unpack(order + "I", head[4:8])  # implicit VR: a 4-byte length
        if length < 1024:
            return True
    return False


def iter_objects(
    path: str, size: int, max_bytes: int = DEFAULT_MAX_OBJECT_BYTES
) -> Iterator[SourceObject | DeadLetter]:
    """Yields every DICOM candidate in the object at ``path``, and a dead letter for the rest.

    Each member of an archive gets its own item; a loose archive is read in place (zip
    through its central directory, tar as a stream), never loaded whole.

    Args:
        path: the object's URI, as FileSystems names it.
        size: its size in bytes, from the listing.
        max_bytes: the cap for one loose object or one archive member.
    """
    if size == 0:
        yield DeadLetter(path, None, STAGE_READ, KIND_EMPTY, "object is empty (0 bytes)")
        return
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        head = f.read(_HEAD_BYTES)
        kind = sniff(head)
        if kind in _ARCHIVE_KINDS:
            f.seek(0)
            yield from _iter_archive(f, kind, path, None, max_bytes, depth=1)
        else:
            yield _leaf(f, head, kind, size, path, None, max_bytes)


@dataclass(frozen=True)
class _Nested:
    """An archive found inside an archive: its bytes (at most the cap) and its kind."""

    kind: str
    data: bytes


def _leaf(
    stream: BinaryIO,
    head: bytes,
    kind: str,
    size: int | None,
    source: str,
    member: str | None,
    max_bytes: int,
) -> SourceObject | DeadLetter:
    """A non-archive object: DICOM is read (up to the cap); anything else is refused unread."""
    if kind == KIND_EMPTY:
        return DeadLetter(source, member, STAGE_READ, KIND_EMPTY, "object is empty (0 bytes)")
    if kind == KIND_UNKNOWN:
        message = "content is not DICOM and not a known archive"
        return DeadLetter(source, member, STAGE_READ, "not_dicom", message)
    try:
        return SourceObject(source, member, _read_capped(stream, head, size, max_bytes))
    except StageError as e:
        return DeadLetter(source, member, STAGE_READ, e.error_type, e.message)


def _read_member(
    stream: BinaryIO, size: int | None, source: str, member: str, max_bytes: int, depth: int
) -> SourceObject | DeadLetter | _Nested:
    """Reads one archive member. Errors of the stream itself propagate to the caller."""
    head = stream.read(_HEAD_BYTES)
    kind = sniff(head)
    if kind not in _ARCHIVE_KINDS:
        return _leaf(stream, head, kind, size, source, member, max_bytes)
    if depth >= MAX_ARCHIVE_DEPTH:
        message = "archive nested deeper than supported"
        return DeadLetter(source, member, STAGE_READ, "nested_archive", message)
    try:
        return _Nested(kind, _read_capped(stream, head, size, max_bytes))
    except StageError as e:
        return DeadLetter(source, member, STAGE_READ, e.error_type, e.message)


def _expand(
    item: SourceObject | DeadLetter | _Nested, source: str, member: str, max_bytes: int, depth: int
) -> Iterator[SourceObject | DeadLetter]:
    if isinstance(item, _Nested):
        archive = io.BytesIO(item.data)
        yield from _iter_archive(archive, item.kind, source, member, max_bytes, depth + 1)
    else:
        yield item


def _read_capped(stream: BinaryIO, head: bytes, size: int | None, max_bytes: int) -> bytes:
    if size is not None and size > max_bytes:
        raise StageError("too_large", f"object is {size} bytes, over the cap of {max_bytes}")
    rest = stream.read(max_bytes + 1 - len(head))
    if len(head) + len(rest) > max_bytes:
        raise StageError("too_large", f"object is over the cap of {max_bytes} bytes")
    return head + rest


def _join_member(outer: str | None, inner: str) -> str:
    return inner if outer is None else f"{outer}!/{inner}"


def _iter_archive(
    archive: BinaryIO,
    kind: str,
    source: str,
    outer: str | None,
    max_bytes: int,
    depth: int,
) -> Iterator[SourceObject | DeadLetter]:
    """Every member of one archive; an archive with no files at all still gets a row."""
    if kind == KIND_ZIP:
        members = _iter_zip(archive, source, outer, max_bytes, depth)
    else:
        members = _iter_tar(archive, kind, source, outer, max_bytes, depth)
    empty = True
    for item in members:
        empty = False
        yield item
    if empty:
        yield DeadLetter(source, outer, STAGE_READ, "empty_archive", "archive holds no files")


def _iter_zip(
    archive: BinaryIO, source: str, outer: str | None, max_bytes: int, depth: int
) -> Iterator[SourceObject | DeadLetter]:
    try:
        zf = zipfile.ZipFile(archive)
    except Exception:  # BadZipFile, or the stream failing under it
        message = "zip central directory is unreadable"
        yield DeadLetter(source, outer, STAGE_READ, "corrupt_archive", message)
        return
    with zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            member = _join_member(outer, info.filename)
            if info.flag_bits & 0x1:
                message = "zip member is encrypted"
                yield DeadLetter(source, member, STAGE_READ, "encrypted_member", message)
                continue
            if info.file_size == 0:
                yield DeadLetter(source, member, STAGE_READ, KIND_EMPTY, "member is empty")
                continue
            # Read the member completely inside the try: zip checks the CRC at the end, and
            # any codec (deflate, bzip2, lzma) may fail on damaged bytes.
            try:
                with zf.open(info) as stream:
                    item = _read_member(stream, info.file_size, source, member, max_bytes, depth)
            except Exception as e:
                message = f"zip member cannot be decompressed ({type(e).__name__})"
                item = DeadLetter(source, member, STAGE_READ, "corrupt_archive_member", message)
            yield from _expand(item, source, member, max_bytes, depth)


def _iter_tar(
    archive: BinaryIO, kind: str, source: str, outer: str | None, max_bytes: int, depth: int
) -> Iterator[SourceObject | DeadLetter]:
    try:
        tar = tarfile.open(fileobj=archive, mode="r|*")  # noqa: SIM115 - closed below
    except Exception:
        if kind != KIND_GZIP:
            message = "archive cannot be opened"
            yield DeadLetter(source, outer, STAGE_READ, "corrupt_archive", message)
            return
        # Not a tarball: a single gzip-compressed object (e.g. IMG0001.dcm.gz).
        archive.seek(0)
        inner = _join_member(outer, os.path.basename(outer or source).removesuffix(".gz"))
        try:
            with gzip.GzipFile(fileobj=archive) as stream:
                item = _read_member(stream, None, source, inner, max_bytes, depth)
        except Exception as e:
            message = f"gzip stream is corrupt ({type(e).__name__})"
            item = DeadLetter(source, inner, STAGE_READ, "corrupt_archive", message)
        yield from _expand(item, source, inner, max_bytes, depth)
        return
    done = 0
    with tar:
        members = iter(tar)
        while True:
            member = None
            try:
                info = next(members, None)
                if info is None:
                    return
                if info.isdir():
                    continue
                member = _join_member(outer, info.name)
                if not info.isfile():
                    message = "tar member is a link or device, not a file"
                    item = DeadLetter(source, member, STAGE_READ, "unsupported_member", message)
                elif info.size == 0:
                    item = DeadLetter(source, member, STAGE_READ, KIND_EMPTY, "member is empty")
                else:
                    stream = tar.extractfile(info)
                    item = _read_member(stream, info.size, source, member, max_bytes, depth)
            except Exception as e:
                # A broken stream hides whatever follows it: one row stands for the rest.
                where = "inside this member" if member else "between members"
                message = (
                    f"archive stream breaks {where} after {done} members ({type(e).__name__}); "
                    "later members cannot be listed"
                )
                yield DeadLetter(source, member or outer, STAGE_READ, "corrupt_archive", message)
                return
            done += 1
            yield from _expand(item, source, member, max_bytes, depth)


class ReadObjects(beam.PTransform):
    """``(path, size)`` → SourceObjects, with a dead-letter output for what cannot be read."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_OBJECT_BYTES):
        super().__init__()
        self._max_bytes = max_bytes

    def expand(self, paths):
        results = paths | "Read" >> beam.ParDo(ReadObjectsFn(self._max_bytes)).with_outputs(
            DEAD_LETTER, main="objects"
        )
        return results.objects, results[DEAD_LETTER]


class ReadObjectsFn(beam.DoFn):
    def __init__(self, max_bytes: int):
        self._max_bytes = max_bytes
        self._objects = Metrics.counter(METRICS_NAMESPACE, "read_objects")
        self._failed = Metrics.counter(METRICS_NAMESPACE, "read_dead_letters")
        self._bytes = Metrics.counter(METRICS_NAMESPACE, "read_bytes")

    def process(self, path_size: tuple[str, int]):
        path, size = path_size
        yielded = 0
        try:
            for item in iter_objects(path, size, self._max_bytes):
                yielded += 1
                if isinstance(item, DeadLetter):
                    self._failed.inc()
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER, item)
                else:
                    self._objects.inc()
                    self._bytes.inc(len(item.data))
                    yield item
        except Exception as e:
            if yielded:
                # Part of this object is already out; a row now would count it twice. Let
                # the runner retry the bundle (its outputs are discarded and redone).
                raise
            self._failed.inc()
            message = unexpected(e).message
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER, DeadLetter(path, None, STAGE_READ, "read_failed", message)
            )


# ---------------------------------------------------------------------------------------
# The same instance twice


def _past_sop_instance_uid(tag, vr, length) -> bool:
    return tag > 0x00080018


def instance_digest(data: bytes) -> bytes | None:
    """A digest of the object's SOPInstanceUID, read from the header alone (no pixels).

    A digest, not the UID, so original identifiers never reach shuffle storage. Reading
    stops at the first element after (0008,0018): a third of a header-only ``dcmread``.
    """
    try:
        ds = read_partial(
            io.BytesIO(data),
            stop_when=_past_sop_instance_uid,
            force=True,
            specific_tags=[0x00080018],
        )
        uid = str(ds.get("SOPInstanceUID", "") or "").strip().rstrip("\0")
    except Exception:
        return None  # the main pass will dead-letter it, with a reason
    return hashlib.sha256(uid.encode()).digest()[:16] if uid else None


def _places(path_size: tuple[str, int], max_bytes: int):
    path, size = path_size
    try:
        for item in iter_objects(path, size, max_bytes):
            if isinstance(item, SourceObject):
                digest = instance_digest(item.data)
                if digest is not None:
                    yield digest, (item.source, item.member or "")
    except Exception:
        return  # unreadable now: the main pass reads it again and writes its row


def _later_copies(element):
    _, places = element
    yield from sorted(places)[1:]


class FindDuplicates(beam.PTransform):
    """``(path, size)`` → the places (source, member) holding an instance that an earlier
    place (in sorted order) holds too.

    A pre-pass over headers only: it reads the objects once more but keeps one small
    record each, so no image crosses a stage boundary and memory stays flat however large
    the corpus. The main pass drops the later copies with ``DropDuplicates``; every run and
    worker keeps the same copy.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_OBJECT_BYTES):
        super().__init__()
        self._max_bytes = max_bytes

    def expand(self, paths):
        return (
            paths
            | "ReadHeaders" >> beam.FlatMap(_places, self._max_bytes)
            | "GroupByInstance" >> beam.GroupByKey()
            | "LaterCopies" >> beam.FlatMap(_later_copies)
        )


class DropDuplicates(beam.PTransform):
    """SourceObjects → (the first copy of each instance, ``duplicate_instance`` rows)."""

    def __init__(self, duplicates):
        super().__init__()
        self._duplicates = duplicates

    def expand(self, objects):
        places = beam.pvalue.AsDict(self._duplicates | "AsKeys" >> beam.Map(lambda p: (p, True)))
        results = objects | "Drop" >> beam.ParDo(_DropFn(), places).with_outputs(
            DEAD_LETTER, main="objects"
        )
        return results.objects, results[DEAD_LETTER]


class _DropFn(beam.DoFn):
    def process(self, obj: SourceObject, duplicates):
        if (obj.source, obj.member or "") in duplicates:
            message = "the same SOP instance is also in another object; that one is used"
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER,
                DeadLetter(obj.source, obj.member, STAGE_READ, "duplicate_instance", message),
            )
        else:
            yield obj


class ReadInstances(beam.PTransform):
    """Input URIs → every DICOM candidate once, and the dead letters of getting there.

    Match, read (archives streamed), and drop later copies of an instance found twice.

    Returns:
        ``(objects, dead_letters)``.
    """

    def __init__(self, uris: list[str], max_bytes: int = DEFAULT_MAX_OBJECT_BYTES):
        super().__init__()
        self._uris = uris
        self._max_bytes = max_bytes

    def expand(self, pbegin):
        paths = pbegin | "MatchInputs" >> MatchInputs(self._uris)
        duplicates = paths | "FindDuplicates" >> FindDuplicates(self._max_bytes)
        # The reshuffle spreads the paths over workers, and it starts a new fused stage
        # with the read: without it the runner fuses the read into the match stage, which
        # runs before the duplicate check is known, so every object's bytes would be held
        # between the two stages.
        objects, read_errors = (
            paths | "Distribute" >> beam.Reshuffle() | "ReadObjects" >> ReadObjects(self._max_bytes)
        )
        objects, duplicate_errors = objects | "DropDuplicates" >> DropDuplicates(duplicates)
        return objects, (read_errors, duplicate_errors) | "ReadDeadLetters" >> beam.Flatten()


# ---------------------------------------------------------------------------------------
# Parsing


def parse_dataset(data: bytes) -> Dataset:
    """Parses a DICOM object completely (pixel data stays encoded).

    Raises:
        StageError: ``invalid_dicom`` when it does not parse, ``truncated`` when it ends
            inside an element.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except zlib.error:
        raise StageError("truncated", "deflated dataset is cut short or corrupt") from None
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, struct.error) as e:
        message = f"not a parsable DICOM dataset ({type(e).__name__})"
        raise StageError("invalid_dicom", message) from None
    if len(ds) == 0:
        raise StageError("truncated", "object ends before its dataset begins")
    _check_complete(ds, data)
    return ds


def _check_complete(ds: Dataset, data: bytes) -> None:
    """pydicom silently accepts a file cut short; make sure the dataset ends where the file
    does. Usually the last element tells (its offset and length); otherwise the top level
    is walked again."""
    if _ends_at_end_of_file(ds, data):
        return
    offset = _dataset_offset(data)
    body = data[offset:]
    implicit, little = ds.original_encoding
    if ds.file_meta.get("TransferSyntaxUID") == pydicom.uid.DeflatedExplicitVRLittleEndian:
        try:
            body = zlib.decompress(body, -zlib.MAX_WBITS)
        except zlib.error:
            raise StageError("truncated", "deflated dataset is cut short") from None
    fp = io.BytesIO(body)
    try:
        for elem in data_element_generator(fp, implicit, little, defer_size=256):
            # Sequences come back parsed (DataElement); raw ones keep the declared length.
            length = getattr(elem, "length", 0xFFFFFFFF)
            if length != 0xFFFFFFFF and elem.value is not None and len(elem.value) < length:
                raise StageError("truncated", f"object ends inside element {elem.tag}")
    except (EOFError, struct.error):
        raise StageError("truncated", "object ends inside an undefined-length element") from None
    except StageError:
        raise
    except Exception as e:  # a malformed nested item: pydicom read it leniently, we do not
        raise StageError("invalid_dicom", f"malformed dataset ({type(e).__name__})") from None
    if fp.tell() != len(body):
        raise StageError("truncated", "object ends inside an element")


def _ends_at_end_of_file(ds: Dataset, data: bytes) -> bool:
    """True when the last top-level element is complete and ends exactly at the end of data.

    pydicom drops an undefined-length element it cannot finish, and shortens a defined one,
    so a cut file never passes. False means "look closer", not "truncated".
    """
    if ds.file_meta.get("TransferSyntaxUID") == pydicom.uid.DeflatedExplicitVRLittleEndian:
        return False  # offsets refer to the inflated stream
    last = next(reversed(ds.keys()), None)
    raw = ds.get_item(last) if last is not None else None
    if not isinstance(raw, RawDataElement) or raw.value is None:
        return False
    undefined = raw.length == 0xFFFFFFFF
    if not undefined and len(raw.value) != raw.length:
        return False
    end = raw.value_tell + len(raw.value) + (8 if undefined else 0)  # + sequence delimiter
    return end == len(data)


def _dataset_offset(data: bytes) -> int:
    """Where the dataset starts: after preamble, 'DICM' and the group 0002 file meta."""
    pos = 132 if data[128:132] == b"DICM" else 0
    while pos + 8 <= len(data):
        group = struct.unpack_from("<H", data, pos)[0]
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_EXPLICIT_VRS:
            length = struct.unpack_from("<I", data, pos + 8)[0]
            pos += 12 + length
        elif vr in _EXPLICIT_VRS:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
        else:  # implicit VR file meta (non-conformant, but seen in the wild)
            pos += 8 + struct.unpack_from("<I", data, pos + 4)[0]
    return pos


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
    except (TypeError, ValueError):
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


class InspectDicom(beam.PTransform):
    """SourceObjects → inventory rows, with a dead-letter output for what does not parse."""

    def expand(self, objects):
        results = objects | "Inspect" >> beam.ParDo(InspectFn()).with_outputs(
            DEAD_LETTER, main="rows"
        )
        return results.rows, results[DEAD_LETTER]


class InspectFn(beam.DoFn):
    def setup(self):
        self._counters = {}
        self._failed = Metrics.counter(METRICS_NAMESPACE, "parse_dead_letters")

    def _count(self, status: str) -> None:
        if status not in self._counters:
            self._counters[status] = Metrics.counter(METRICS_NAMESPACE, f"inventoried_{status}")
        self._counters[status].inc()

    def process(self, obj: SourceObject):
        try:
            row = describe(obj, parse_dataset(obj.data))
        except StageError as e:
            error = e
        except Exception as e:  # one odd file must not stop the run
            error = unexpected(e)
        else:
            self._count(row[f.PARSE_STATUS])
            yield row
            return
        self._failed.inc()
        yield beam.pvalue.TaggedOutput(
            DEAD_LETTER,
            DeadLetter(obj.source, obj.member, STAGE_PARSE, error.error_type, error.message),
        )
