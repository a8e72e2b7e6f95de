"""The same instance twice: header-only SOP Instance UID digests, one winner per instance.

Among copies of one instance a complete copy wins over a truncated or corrupt one (a
structural walk, no pixel decoding); among complete copies the largest (a copy cut exactly
between two elements is complete but lacks what followed, often the pixels); among equals,
the first place in sorted order, so every run and worker keeps the same copy.
"""

import hashlib
import io

import apache_beam as beam
from pydicom.filereader import read_partial

from transforms.deadletter import (
    DEAD_LETTER,
    STAGE_READ,
    DeadLetter,
)
from transforms.dicom_io.archives import iter_objects
from transforms.dicom_io.limits import Limits
from transforms.dicom_io.objects import DEFAULT_MAX_OBJECT_BYTES, SourceObject
from transforms.dicom_io.scan import check_structure


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


def copy_rank(data: bytes, limits: Limits) -> int:
    """0 for a copy that is structurally complete and within the limits, else 1."""
    try:
        check_structure(data, limits)
    except Exception:
        return 1
    return 0


def _places(path_size: tuple[str, int], limits: Limits):
    path, size = path_size
    try:
        for item in iter_objects(path, size, limits):
            if isinstance(item, SourceObject):
                digest = instance_digest(item.data)
                if digest is not None:
                    rank = copy_rank(item.data, limits)
                    yield digest, (rank, -len(item.data), item.source, item.member or "")
    except Exception:
        return  # unreadable now: the main pass reads it again and writes its row


def _losers(element):
    """Every copy but the winner, each with the winner's place."""
    _, copies = element
    (_, _, *winner), *others = sorted(copies)
    for _, _, *place in others:
        yield tuple(place), tuple(winner)


class FindDuplicates(beam.PTransform):
    """``(path, size)`` → ``(place, winner)`` for every place (source, member) holding an
    instance that a better copy (complete before broken, then sorted order) holds too.

    A pre-pass over headers only: it reads the objects once more but keeps one small
    record each, so no image crosses a stage boundary and memory stays flat however large
    the corpus. The main pass drops the later copies with ``DropDuplicates``; every run and
    worker keeps the same copy.
    """

    def __init__(self, limits: Limits | int = DEFAULT_MAX_OBJECT_BYTES):
        super().__init__()
        self._limits = Limits.of(limits)

    def expand(self, paths):
        return (
            paths
            | "ReadHeaders" >> beam.FlatMap(_places, self._limits)
            | "GroupByInstance" >> beam.GroupByKey()
            | "LaterCopies" >> beam.FlatMap(_losers)
        )


class DropDuplicates(beam.PTransform):
    """SourceObjects → (the winning copy of each instance, ``duplicate_instance`` rows that
    name the winner's place: raw locations, so only ever in errors/)."""

    def __init__(self, duplicates):
        super().__init__()
        self._duplicates = duplicates

    def expand(self, objects):
        places = beam.pvalue.AsDict(self._duplicates)
        results = objects | "Drop" >> beam.ParDo(_DropFn(), places).with_outputs(
            DEAD_LETTER, main="objects"
        )
        return results.objects, results[DEAD_LETTER]


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
