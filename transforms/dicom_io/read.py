"""Reading as Beam transforms: objects from paths, and every DICOM candidate once."""

import apache_beam as beam

from transforms.composite import NamedOutputs
from transforms.deadletter import (
    DEAD_LETTER,
    STAGE_READ,
    DeadLetter,
    unexpected,
)
from transforms.dicom_io.archives import iter_objects
from transforms.dicom_io.dedupe import DropDuplicates, FindDuplicates
from transforms.dicom_io.limits import Limits
from transforms.dicom_io.match import MatchInputs
from transforms.dicom_io.objects import (
    DEFAULT_MAX_OBJECT_BYTES,
    ReadCounters,
    ReadOutputs,
)


class ReadObjects(NamedOutputs):
    """``(path, size)`` → SourceObjects, with a dead-letter output for what cannot be read."""

    def __init__(self, limits: Limits | int = DEFAULT_MAX_OBJECT_BYTES):
        super().__init__()
        self._limits = Limits.of(limits)

    def expand(self, paths: beam.PCollection[tuple[str, int]]) -> ReadOutputs:
        results = paths | "Read" >> beam.ParDo(ReadObjectsFn(self._limits)).with_outputs(
            DEAD_LETTER, main="objects"
        )
        return ReadOutputs(results.objects, results[DEAD_LETTER])


class ReadObjectsFn(beam.DoFn):
    def __init__(self, limits: Limits | int):
        self._limits = Limits.of(limits)
        self._counters = ReadCounters("read_objects", "read_bytes", "read_dead_letters")

    def process(self, path_size: tuple[str, int]):
        path, size = path_size
        yielded = 0
        try:
            for item in iter_objects(path, size, self._limits):
                yielded += 1
                yield self._counters.route(item)
        except Exception as e:
            if yielded:
                # Part of this object is already out; a row now would count it twice. Let
                # the runner retry the bundle (its outputs are discarded and redone).
                raise
            message = unexpected(e).message
            yield self._counters.route(DeadLetter(path, None, STAGE_READ, "read_failed", message))


class ReadInstances(NamedOutputs):
    """Input URIs → every DICOM candidate once, and the dead letters of getting there.

    Match, read (archives streamed), and keep one copy of an instance found twice: a
    complete copy before a truncated or corrupt one.

    Returns:
        ``ReadOutputs(objects, dead_letters)``.
    """

    def __init__(self, uris: list[str], limits: Limits | int = DEFAULT_MAX_OBJECT_BYTES):
        super().__init__()
        self._uris = uris
        self._limits = Limits.of(limits)

    def expand(self, pbegin: beam.pvalue.PBegin) -> ReadOutputs:
        paths = pbegin | "MatchInputs" >> MatchInputs(self._uris)
        duplicates = paths | "FindDuplicates" >> FindDuplicates(self._limits)
        # The reshuffle spreads the paths over workers, and it starts a new fused stage
        # with the read: without it the runner fuses the read into the match stage, which
        # runs before the duplicate check is known, so every object's bytes would be held
        # between the two stages.
        objects, read_errors = (
            paths | "Distribute" >> beam.Reshuffle() | "ReadObjects" >> ReadObjects(self._limits)
        )
        objects, duplicate_errors = objects | "DropDuplicates" >> DropDuplicates(duplicates)
        dead_letters = (read_errors, duplicate_errors) | "ReadDeadLetters" >> beam.Flatten()
        return ReadOutputs(objects, dead_letters)
