"""Dead letters: the row every object gets when a stage cannot take it further."""

from dataclasses import asdict, dataclass

# The tagged output that every stage routes its dead letters to.
DEAD_LETTER = "dead_letter"

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

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type
        self.message = message


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


def unexpected(exc: BaseException) -> StageError:
    """Wraps an exception we did not foresee, keeping only its type name (never its text)."""
    return StageError("unexpected_error", f"unexpected {type(exc).__name__}")
