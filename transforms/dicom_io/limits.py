"""Resource limits for one object, checked before anything of that size is allocated.

A few kilobytes of hostile input can declare gigabytes: a deflated dataset or a gzip member
that inflates 1000-fold, Rows x Columns x NumberOfFrames far beyond the bytes present, or
sequences nested until the parser's recursion fails. Every limit here is checked against
declared sizes or counted while streaming, never after the allocation, and each has its
own dead-letter type, so an operator can tell what to raise.

The defaults keep a 2-core, 24 GB machine safe with two workers of any runner mode (about
3 GB peak for the whole run): see docs/limits.md.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, fields

from models.configs import arg
from transforms.deadletter import StageError

# Dead-letter types, one per limit.
TOO_LARGE = "too_large"  # the object or archive member itself (bytes as stored)
TOO_LARGE_DECODED = "too_large_decoded"
TOO_MANY_FRAMES = "too_many_frames"
INFLATE_LIMIT = "inflate_limit"
TOO_DEEP = "too_deep"
PARSE_TIMEOUT = "parse_timeout"

MiB = 1 << 20


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one object may cost; a declared config (``models.configs``): its fields are the
    limit flags of every reading command and the ``limits:`` section of run.yaml.

    Attributes:
        max_object_bytes: bytes of one loose object or archive member, as read.
        max_inflated_bytes: bytes that one compressed stream may inflate to: a deflated
            dataset, a gzip object, a compressed archive member; counted while inflating.
        max_archive_bytes: inflated bytes of one compressed tar stream, all members
            together (streamed, so this bounds time, not memory).
        max_decoded_bytes: decoded pixel bytes of the frames one instance has decoded.
        max_frame_bytes: decoded bytes of one frame (Rows x Columns x Samples x Bits).
        max_frames: Number of Frames.
        max_sequence_depth: nesting of sequences (an item inside a sequence is one level).
        parse_seconds: CPU seconds the structural check of one object may take.
    """

    max_object_bytes: int = arg(
        1024 * MiB,
        "objects and archive members above this size get a too_large error row",
        positive=True,
    )
    max_inflated_bytes: int = arg(
        256 * MiB,
        "bytes one deflated dataset, gzip object or compressed archive member may inflate "
        "to (counted while inflating): inflate_limit (default %(default)s)",
        positive=True,
    )
    max_archive_bytes: int = arg(
        64 * 1024 * MiB,
        "inflated bytes of one compressed archive, all members together: inflate_limit "
        "(default %(default)s)",
        positive=True,
    )
    max_decoded_bytes: int = arg(
        512 * MiB,
        "decoded pixel bytes of the frames one instance decodes at once: too_large_decoded "
        "(default %(default)s)",
        positive=True,
    )
    max_frame_bytes: int = arg(
        128 * MiB,
        "decoded bytes of one frame (Rows x Columns x Samples x Bits): too_large_decoded "
        "(default %(default)s)",
        positive=True,
    )
    max_frames: int = arg(
        4096,
        "Number of Frames of one instance: too_many_frames (default %(default)s)",
        positive=True,
    )
    max_sequence_depth: int = arg(
        32, "nesting of sequences in one object: too_deep (default %(default)s)", positive=True
    )
    parse_seconds: float = arg(
        20.0,
        "CPU seconds the structural check of one object may take: parse_timeout "
        "(default %(default)s)",
        positive=True,
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{f.name} must be a positive number, got {value!r}")

    @classmethod
    def of(cls, value: Limits | int | None) -> Limits:
        """``Limits`` as given, the defaults for None, or the defaults with an object cap."""
        if value is None:
            return cls()
        if isinstance(value, Limits):
            return value
        return cls(max_object_bytes=int(value))

    def describe(self) -> dict:
        """Plain values for manifests."""
        return asdict(self)


class Deadline:
    """A CPU-time budget for the current thread (other workers' load does not count)."""

    def __init__(self, seconds: float):
        self._seconds = seconds
        self._end = time.thread_time() + seconds

    def check(self) -> None:
        if time.thread_time() > self._end:
            raise StageError(
                PARSE_TIMEOUT, f"parsing took over the budget of {self._seconds:g} CPU seconds"
            )


class InflateLimitExceeded(Exception):
    """Raised by a ``CountingReader`` when its stream yields more than its limit."""


class CountingReader(io.RawIOBase):
    """A read-only stream over another that raises once more than ``limit`` bytes came out.

    Wraps a decompressing stream (gzip, bz2, lzma) so that the bytes it inflates are counted
    as they are produced; no caller ever holds more than it asked for.
    """

    def __init__(self, raw, limit: int):
        super().__init__()
        self._raw = raw
        self._limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self._limit + 1 - self.count)
        if want <= 0:
            raise InflateLimitExceeded
        data = self._raw.read(want)
        n = len(data)
        buffer[:n] = data
        self.count += n
        if self.count > self._limit:
            raise InflateLimitExceeded
        return n


def inflate_message(limit: int) -> str:
    return f"inflates to more than the limit of {limit} bytes"
