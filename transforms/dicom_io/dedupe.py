"""The same instance twice: header-only SOP Instance UID digests, one winner per instance.

Among copies of one instance a complete copy wins over a truncated or corrupt one (a
structural walk, no pixel decoding); among complete copies the largest (a copy cut exactly
between two elements is complete but lacks what followed, often the pixels); among equals,
the first place in sorted order, so every run and worker keeps the same copy.
"""

import hashlib
import io
import re
import struct

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from pydicom.filereader import read_partial
from pydicom.uid import UID

from transforms.composite import NamedOutputs
from transforms.deadletter import (
    DEAD_LETTER,
    STAGE_READ,
    DeadLetter,
)
from transforms.dicom_io.archives import iter_objects, sniff
from transforms.dicom_io.limits import Limits
from transforms.dicom_io.objects import (
    _EXPLICIT_VRS,
    _LONG_EXPLICIT_VRS,
    DEFAULT_MAX_OBJECT_BYTES,
    KIND_DICOM,
    ReadOutputs,
    SourceObject,
    quiet_pydicom,
)
from transforms.dicom_io.scan import check_structure

_SOP_INSTANCE_UID = 0x00080018
_UNDEFINED = 0xFFFFFFFF
_UID_VALUE = re.compile(rb"[0-9A-Za-z.+-]*")  # what a quick read accepts as pydicom would


def _past_sop_instance_uid(tag, vr, length) -> bool:
    return tag > 0x00080018


def instance_digest(data: bytes) -> bytes | None:
    """A digest of the object's SOPInstanceUID, read from the header alone (no pixels).

    A digest, not the UID, so original identifiers never reach shuffle storage. A Part 10
    file in a little-endian syntax is read by ``_quick_uid`` (a handful of elements,
    no pydicom); anything else by pydicom, stopping at the first element after
    (0008,0018). Both give the UID a full parse gives.
    """
    uid = _quick_uid(data)
    if uid is None:
        uid = _partial_read_uid(data)
    return hashlib.sha256(uid.encode()).digest()[:16] if uid else None


def _partial_read_uid(data: bytes) -> str | None:
    """The SOPInstanceUID as pydicom reads it, up to the first element past it."""
    quiet_pydicom()
    try:
        ds = read_partial(
            io.BytesIO(data),
            stop_when=_past_sop_instance_uid,
            force=True,
            specific_tags=[_SOP_INSTANCE_UID],
        )
        return str(ds.get("SOPInstanceUID", "") or "").strip().rstrip("\0")
    except Exception:
        return None  # the main pass will dead-letter it, with a reason


def _quick_uid(data: bytes) -> str | None:
    """The SOPInstanceUID ("" when absent) of a Part 10 file whose dataset is little
    endian and not deflated, from the raw bytes: the file meta, then the top-level elements
    before (0008,0018), skipped by their lengths. None wherever pydicom might read the
    file differently (no preamble, another syntax, a VR that contradicts the syntax, an
    undefined length, a value that is not one plain UID, a file cut short): the caller
    then asks pydicom.

    The duplicate pre-pass reads every object's header, so this is per-file cost: about
    a tenth of pydicom's partial read.
    """
    if data[128:132] != b"DICM":
        return None
    pos, end, syntax = 132, len(data), None
    try:
        while data[pos : pos + 2] == b"\x02\x00":  # file meta: explicit VR little endian
            vr = data[pos + 4 : pos + 6]
            if vr not in _EXPLICIT_VRS:
                return None
            if vr in _LONG_EXPLICIT_VRS:
                length, start = struct.unpack_from("<I", data, pos + 8)[0], pos + 12
            else:
                length, start = struct.unpack_from("<H", data, pos + 6)[0], pos + 8
            if length == _UNDEFINED or start + length > end:
                return None
            if data[pos + 2 : pos + 4] == b"\x10\x00":
                syntax = data[start : start + length].rstrip(b"\0 ").decode("ascii")
            pos = start + length
        ts = UID(syntax or "")
        if not ts.is_transfer_syntax or not ts.is_little_endian or ts.is_deflated:
            return None
        implicit = ts.is_implicit_VR
        while pos + 8 <= end:
            group, element = struct.unpack_from("<HH", data, pos)
            tag = group << 16 | element
            vr = data[pos + 4 : pos + 6]
            if implicit:
                if vr in _EXPLICIT_VRS:  # pydicom would switch to explicit VR here
                    return None
                length, start = struct.unpack_from("<I", data, pos + 4)[0], pos + 8
            elif vr not in _EXPLICIT_VRS:
                return None
            elif vr in _LONG_EXPLICIT_VRS:
                length, start = struct.unpack_from("<I", data, pos + 8)[0], pos + 12
            else:
                length, start = struct.unpack_from("<H", data, pos + 6)[0], pos + 8
            if tag > _SOP_INSTANCE_UID:
                return ""
            if length == _UNDEFINED or start + length > end:
                return None
            if tag == _SOP_INSTANCE_UID:
                if not implicit and vr != b"UI":
                    return None
                value = data[start : start + length].rstrip(b"\0 ")
                return value.decode("ascii") if _UID_VALUE.fullmatch(value) else None
            pos = start + length
    except (struct.error, UnicodeDecodeError, ValueError):
        return None
    return None


def copy_rank(data: bytes, limits: Limits) -> int:
    """0 for a copy that is structurally complete and within the limits, else 1."""
    try:
        check_structure(data, limits)
    except Exception:
        return 1
    return 0


# A loose object's header is read from its first bytes: the SOP Instance UID sits near the
# start of the dataset (after the file meta and a few group 0008 elements), and a prefix
# that cuts the header short sends the object down the full path.
_PREFIX_BYTES = 64 * 1024


def _quick_place(path: str, size: int, limits: Limits):
    """``(digest, place)`` of a loose Part 10 object from its first bytes, its rank left
    for later, or None when only a full read can say (an archive, an object over the cap,
    a header that is not in the prefix or not quickly readable)."""
    if not 0 < size <= limits.max_object_bytes:
        return None
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        head = f.read(min(size, _PREFIX_BYTES))
    if sniff(head) != KIND_DICOM:
        return None
    uid = _quick_uid(head)
    if not uid:  # unreadable here, or no UID: the full path decides (it may parse one)
        return None
    return hashlib.sha256(uid.encode()).digest()[:16], (path, "", path, size, None)


def _places(path_size: tuple[str, int], limits: Limits):
    """``(digest, (source, member, path, size, rank))`` for every instance in the object
    at ``path``. A loose object is read from its first bytes and ranked only if another
    copy turns up (rank None); an archive member, read whole anyway, is ranked here, so
    a duplicated archive is never read once per member."""
    path, size = path_size
    try:
        quick = _quick_place(path, size, limits)
        if quick is not None:
            yield quick
            return
        for item in iter_objects(path, size, limits):
            if isinstance(item, SourceObject):
                digest = instance_digest(item.data)
                if digest is not None:
                    rank = (copy_rank(item.data, limits), -len(item.data))
                    yield digest, (item.source, item.member or "", path, size, rank)
    except Exception:
        # Unreadable now: the main pass reads it again and writes its row. (A bare return
        # on its own line: Beam warns about a generator that returns a value.)
        return


def _rank_loose(path: str, size: int, limits: Limits) -> tuple[int, int]:
    """(completeness, minus length) of a loose object, read again whole."""
    try:
        for item in iter_objects(path, size, limits):
            if isinstance(item, SourceObject):
                return copy_rank(item.data, limits), -len(item.data)
    except Exception:
        pass
    return 1, 0  # gone or unreadable now: ranked last, the main pass writes its row


def _losers(element, limits: Limits):
    """Every copy but the winner, each with the winner's place: a complete copy before
    a broken one, then the largest, then the first place in sorted order."""
    _, places = element
    places = list(places)
    if len(places) < 2:
        return
    ranked = []
    for source, member, path, size, rank in places:
        completeness, length = rank if rank is not None else _rank_loose(path, size, limits)
        ranked.append((completeness, length, source, member))
    (_, _, *winner), *others = sorted(ranked)
    for _, _, *place in others:
        yield tuple(place), tuple(winner)


class FindDuplicates(beam.PTransform):
    """``(path, size)`` → ``(place, winner)`` for every place (source, member) holding an
    instance that a better copy (complete before broken, then sorted order) holds too.

    A pre-pass over headers only: it reads the objects once more (a loose object only its
    first 64 KiB) and keeps one small record each, so no image crosses a stage boundary
    and memory stays flat however large the corpus; only the copies of an instance held
    more than once are read whole again, to rank them. The main pass drops the later
    copies with ``DropDuplicates``; every run and worker keeps the same copy.
    """

    def __init__(self, limits: Limits | int = DEFAULT_MAX_OBJECT_BYTES):
        super().__init__()
        self._limits = Limits.of(limits)

    def expand(
        self, paths: beam.PCollection[tuple[str, int]]
    ) -> beam.PCollection[tuple[tuple[str, str], tuple[str, str]]]:
        return (
            paths
            | "ReadHeaders" >> beam.FlatMap(_places, self._limits)
            | "GroupByInstance" >> beam.GroupByKey()
            | "LaterCopies" >> beam.FlatMap(_losers, self._limits)
        )


class DropDuplicates(NamedOutputs):
    """SourceObjects → (the winning copy of each instance, ``duplicate_instance`` rows that
    name the winner's place: raw locations, so only ever in errors/)."""

    def __init__(self, duplicates: beam.PCollection[tuple[tuple[str, str], tuple[str, str]]]):
        super().__init__()
        self._duplicates = duplicates

    def expand(self, objects: beam.PCollection[SourceObject]) -> ReadOutputs:
        places = beam.pvalue.AsDict(self._duplicates)
        results = objects | "Drop" >> beam.ParDo(_DropFn(), places).with_outputs(
            DEAD_LETTER, main="objects"
        )
        return ReadOutputs(results.objects, results[DEAD_LETTER])


class _DropFn(beam.DoFn):
    def process(self, obj: SourceObject, duplicates):
        winner = duplicates.get((obj.source, obj.member or ""))
        if winner is not None:
            where = winner[0] + (f" member {winner[1]}" if winner[1] else "")
            message = f"the same SOP instance is also at {where}, which is used"
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER,
                DeadLetter(obj.source, obj.member, STAGE_READ, "duplicate_instance", message),
            )
        else:
            yield obj
