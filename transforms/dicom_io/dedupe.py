"""The same instance twice: header-only SOP Instance UID digests and dropping later copies."""

import hashlib
import io

import apache_beam as beam
from pydicom.filereader import read_partial

from transforms.composite import NamedOutputs
from transforms.deadletter import (
    DEAD_LETTER,
    STAGE_READ,
    DeadLetter,
)
from transforms.dicom_io.archives import iter_objects
from transforms.dicom_io.objects import DEFAULT_MAX_OBJECT_BYTES, ReadOutputs, SourceObject


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

    def expand(self, paths: beam.PCollection[tuple[str, int]]) -> beam.PCollection[tuple[str, str]]:
        return (
            paths
            | "ReadHeaders" >> beam.FlatMap(_places, self._max_bytes)
            | "GroupByInstance" >> beam.GroupByKey()
            | "LaterCopies" >> beam.FlatMap(_later_copies)
        )


class DropDuplicates(NamedOutputs):
    """SourceObjects → (the first copy of each instance, ``duplicate_instance`` rows)."""

    def __init__(self, duplicates: beam.PCollection[tuple[str, str]]):
        super().__init__()
        self._duplicates = duplicates

    def expand(self, objects: beam.PCollection[SourceObject]) -> ReadOutputs:
        places = beam.pvalue.AsDict(self._duplicates | "AsKeys" >> beam.Map(lambda p: (p, True)))
        results = objects | "Drop" >> beam.ParDo(_DropFn(), places).with_outputs(
            DEAD_LETTER, main="objects"
        )
        return ReadOutputs(results.objects, results[DEAD_LETTER])


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
