"""Dead letters: the row every object gets when a stage cannot take it further.

``DeadLetterFn`` is the one place that turns a failure into a dead letter: a DoFn
subclass writes only its work (``work``) and where an element came from (``where``).
"""

import abc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics

from models import features as f
from models.layout import ERRORS_TABLE
from transforms.composite import NamedOutputs
from transforms.manifest import error_keys
from transforms.parquet import WriteParquet, table_dir

# The tagged output that every stage routes its dead letters to.
DEAD_LETTER = "dead_letter"
METRICS_NAMESPACE = "dicomflow"

# Stages, as they appear in the errors table.
STAGE_READ = "read"
STAGE_PARSE = "parse"
STAGE_DEIDENTIFY = "deidentify"
STAGE_PIXELS = "pixels"
STAGE_SCORE = "score"
STAGE_WRITE = "write"


class StageError(Exception):
    """A failure with a stable type and a message that carries no PHI.

    Messages are written by us, never copied from a third-party exception, because
    those can quote dataset values or file names.
    """

    def __init__(self, error_type: str, message: str, stage: str | None = None):
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.stage = stage  # None: the stage of the DoFn that catches it


@dataclass(frozen=True)
class DeadLetter:
    """One errors-table row: where the object came from, which stage failed, and why."""

    source: str
    member: str | None
    stage: str
    error_type: str
    message: str

    def to_row(self) -> dict:
        return asdict(self)


def unexpected(exc: BaseException, stage: str | None = None) -> StageError:
    """Wraps an exception we did not foresee, keeping only its type name (never its text)."""
    return StageError("unexpected_error", f"unexpected {type(exc).__name__}", stage)


@contextmanager
def at_stage(stage: str) -> Iterator[None]:
    """Names the stage of what fails inside: a StageError gets ``stage`` unless it names
    one already; any other exception becomes ``unexpected_error`` of that stage."""
    try:
        yield
    except StageError as e:
        if e.stage is None:
            e.stage = stage
        raise
    except RecursionError:  # nesting that only a deeper walk finds (a UN read as SQ)
        raise StageError("too_deep", "sequences nested too deep", stage) from None
    except Exception as e:  # one odd file must not stop the run
        raise unexpected(e, stage) from None


class DeadLetterFn(beam.DoFn, metaclass=abc.ABCMeta):
    """A DoFn whose every failure becomes one dead letter on the ``DEAD_LETTER`` output.

    Subclasses set ``stage`` (used when the error names none) and ``failed_counter`` (a
    counter in namespace dicomflow, or None), and write ``where`` (source, member of an
    element) and ``work`` (the outputs for one element; raises StageError). An element's
    outputs are collected before any is emitted, so a failure half-way emits nothing but
    its dead letter: every element ends in exactly one place.
    """

    stage: ClassVar[str]
    failed_counter: str | None = None

    def where(self, element: Any) -> tuple[str, str | None]:
        """Where an element came from; a SourceObject (or anything with ``source`` and
        ``member``) says it itself."""
        return element.source, element.member

    @abc.abstractmethod
    def work(self, element: Any) -> Iterable[Any]:
        """The outputs for one element; raises StageError for a named failure."""

    def process(self, element: Any) -> Iterator[Any]:
        try:
            outputs = list(self.work(element))
        except StageError as e:
            error = e
        except Exception as e:  # one odd file must not stop the run
            error = unexpected(e)
        else:
            yield from outputs
            return
        if self.failed_counter:
            Metrics.counter(METRICS_NAMESPACE, self.failed_counter).inc()
        source, member = self.where(element)
        letter = DeadLetter(
            source, member, error.stage or self.stage, error.error_type, error.message
        )
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)


class Errors(NamedTuple):
    """What ``WriteErrors`` gives: the errors table's shard names, once it is complete, and
    each row's manifest count keys."""

    files: beam.PCollection[list[str]]
    keys: beam.PCollection[list]


class WriteErrors(NamedOutputs):
    """Every dead letter of a run → ``<output>/errors/`` (``ERRORS_SCHEMA``) and the keys the
    manifest counts them under (``error_keys``)."""

    def __init__(self, output: str):
        super().__init__()
        self._output = output

    def expand(self, dead_letters: beam.PCollection[DeadLetter]) -> Errors:
        rows = dead_letters | "ErrorRows" >> beam.Map(DeadLetter.to_row)
        files = rows | "Write" >> WriteParquet(
            table_dir(self._output, ERRORS_TABLE), f.ERRORS_SCHEMA
        )
        return Errors(files, rows | "ErrorKeys" >> beam.Map(error_keys))
