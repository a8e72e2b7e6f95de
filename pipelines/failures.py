"""Failures of a whole command, told in one line: what went wrong, never a traceback.

A command that fails because of its environment (an unwritable or full output, a bucket
that cannot be reached, a malformed YAML file) exits non-zero with one line naming the
cause, and leaves no manifest that would claim success. ``DICOMFLOW_DEBUG=1`` shows the
traceback as well. Messages name causes and the operator's own flags, never source object
names (those can carry patient names).
"""

import errno
import logging
import os

from apache_beam.io.filesystems import FileSystems

BEAM_TEMP = "beam-temp-"


class UsageError(Exception):
    """A wrong or missing argument: reported as one line, before any work starts."""


_WRITE_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EISDIR: "a folder is in the way",
    errno.EDQUOT: "disk quota exceeded",
}
# Beam re-raises worker errors as RuntimeError with the original text; match on that too.
_TEXTS = (
    ("No space left on device", "no space left on the device"),
    ("Disk quota exceeded", "disk quota exceeded"),
    ("Read-only file system", "read-only file system"),
    ("Permission denied", "permission denied"),
    ("Not a directory", "a path component is a file, not a folder"),
    ("Is a directory", "a folder is in the way"),
    ("Connection refused", "connection refused"),
    ("Max retries exceeded", "the service does not answer"),
)


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def describe_failure(exc: BaseException) -> str:
    """One line naming the cause of a failed command (no traceback, no source names)."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return "no space left on the device that holds the output"
        if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
            return f"cannot write: {_WRITE_ERRNOS[e.errno]}"
        if isinstance(e, MemoryError):
            return "out of memory (lower the limits, e.g. --max-decoded-bytes, or the workers)"
    text = " ".join(str(e) for e in _chain(exc))
    for needle, cause in _TEXTS:
        if needle in text:
            if cause.startswith(("connection", "the service")):
                return f"cannot reach the object store: {cause}"
            if cause.startswith("no space"):
                return "no space left on the device that holds the output"
            return f"cannot write: {cause}"
    return f"failed with {type(exc).__name__} (DICOMFLOW_DEBUG=1 shows the traceback)"


def yaml_error(flag: str, uri: str, exc: Exception) -> UsageError:
    """A malformed YAML file as one line with line and column (PyYAML counts from 0)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    if mark is None:
        return UsageError(f"{flag} {uri}: malformed YAML ({problem})")
    return UsageError(
        f"{flag} {uri}: malformed YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    )


def quiet_beam_errors() -> None:
    """Beam logs every failed bundle with its traceback before it raises; the command
    reports the cause itself, in one line."""
    if not os.environ.get("DICOMFLOW_DEBUG"):
        for name in ("apache_beam.runners.common", "apache_beam.runners.worker"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def check_buckets(argv: list[str], timeout: float = 15.0) -> None:
    """Every ``gs://`` bucket named in ``argv`` answers, before any work: otherwise Beam's
    client retries for minutes. A bucket that does not exist is named; one that refuses
    access is left for the command (object-level permissions may still allow it).

    Raises:
        UsageError: naming the bucket.
    """
    buckets = []
    for arg in argv:
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if value.startswith("gs://"):
            bucket = value[len("gs://") :].split("/", 1)[0]
            if bucket and bucket not in buckets:
                buckets.append(bucket)
    if not buckets:
        return
    from google.api_core import exceptions
    from google.cloud import storage

    try:
        client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT") or "dicomflow")
    except Exception:  # no credentials here: Beam falls back to anonymous access as well
        client = storage.Client.create_anonymous_client()
    for bucket in buckets:
        try:
            found = client.bucket(bucket).exists(timeout=timeout, retry=None)
        except exceptions.GoogleAPICallError:
            continue  # answered (403 and the like): reachable
        except Exception as e:
            raise UsageError(f"cannot reach gs://{bucket} ({type(e).__name__})") from None
        if not found:
            raise UsageError(f"bucket gs://{bucket} does not exist")


def remove_manifest(output: str) -> None:
    """Removes ``output``'s manifest, so that only a finished run leaves one."""
    from models.layout import MANIFEST_NAME

    uri = FileSystems.join(output, MANIFEST_NAME)
    if FileSystems.exists(uri):
        FileSystems.delete([uri])


def remove_beam_temp(output: str) -> list[str]:
    """Removes Beam's ``beam-temp-*`` folders that killed runs left under ``output``;
    called after a successful run, when none of them can be in use. Returns them."""
    found = set()
    for meta in FileSystems.match([FileSystems.join(output, "**")])[0].metadata_list:
        head, sep, tail = meta.path.partition("/" + BEAM_TEMP)
        if sep:
            found.add(head + sep + tail.split("/", 1)[0])
    for folder in sorted(found):
        if folder.startswith("gs://"):
            FileSystems.delete([folder + "/"])
        elif FileSystems.exists(folder):
            FileSystems.delete([folder])
    return sorted(found)
