"""What a scheduled run needs between runs: a lock, the processed-objects state, run records.

Everything lives under the run's output root, local or ``gs://``:

- ``_lock``: one object created only if absent (an ``O_EXCL`` file locally, a GCS object
  written with ``if_generation_match=0``), holding who took it and when. A lock older
  than the stale timeout is taken over; the takeover is itself a conditional operation,
  so two runners cannot both win it.
- ``state.json``: every source object processed so far, with its version (size and
  modification time, which Beam's file systems give for every scheme). Objects are named
  by a keyed digest of their URI, never by the URI: object names often carry patient
  names, and docs/contracts.md allows raw locations only in errors/ (and inventory/).
- ``runs/<run_id>/run.json``: the plan of one run (the objects it scores) and the stages it
  has finished, so that a run killed at any moment resumes with the same run id and the
  same objects, and replaces rather than duplicates what it had written.
"""

import contextlib
import hashlib
import hmac
import json
import os
import socket
import time
from dataclasses import dataclass, field

from apache_beam.io.filesystems import FileSystems

from transforms import storage
from transforms.manifest import utc_now
from transforms.storage import read_json

LOCK_NAME = "_lock"
STATE_NAME = "state.json"
RUNS_DIR = "runs"
RUN_RECORD = "run.json"


class LockHeld(Exception):
    """Another run holds the lock and it is not stale."""


def write_json(uri: str, data: dict) -> None:
    """Writes a state file or run record whole, its keys in the order they were made."""
    storage.write_json(uri, data, sort_keys=False)


def _split_gs(uri: str) -> tuple[str, str]:
    bucket, _, name = uri[len("gs://") :].partition("/")
    return bucket, name


def _gcs_blob(uri: str):
    import google.cloud.storage as storage  # mypy: google.cloud is a partly typed namespace

    bucket, name = _split_gs(uri)
    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or "dicomflow"
    return storage.Client(project=project).bucket(bucket).blob(name)


@dataclass
class Lock:
    """A lock object under ``root``; ``with Lock(root, run_id):`` holds it for a block.

    Args:
        root: the output root (local path or gs://).
        owner: who takes it (the run id); written into the lock with host, pid and time.
        stale_seconds: a lock older than this is taken over (a killed run never releases).
    """

    root: str
    owner: str
    stale_seconds: float = 6 * 3600
    _generation: int | None = field(default=None, init=False)

    @property
    def uri(self) -> str:
        return FileSystems.join(self.root, LOCK_NAME)

    def _payload(self) -> bytes:
        holder = {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquired_at": utc_now(),
            "acquired_epoch": time.time(),
        }
        return json.dumps(holder).encode()

    def acquire(self) -> None:
        """Takes the lock, or a stale one over.

        Raises:
            LockHeld: naming the holder and since when, when the lock is fresh.
        """
        if self._try_create():
            return
        holder = self.holder() or {}
        age = time.time() - float(holder.get("acquired_epoch", 0))
        if age < self.stale_seconds:
            raise LockHeld(
                f"another run holds {self.uri}: {holder.get('owner', '?')} on "
                f"{holder.get('host', '?')} since {holder.get('acquired_at', '?')} "
                f"({age / 60:.0f} min ago; stale after {self.stale_seconds / 60:.0f} min)"
            )
        if not (self._break_stale() and self._try_create()):
            raise LockHeld(f"another run took over the stale lock {self.uri} first")

    def release(self) -> None:
        """Removes the lock if this holder still owns it."""
        if self.uri.startswith("gs://"):
            from google.api_core import exceptions

            with contextlib.suppress(exceptions.NotFound, exceptions.PreconditionFailed):
                _gcs_blob(self.uri).delete(if_generation_match=self._generation)
            return
        holder = self.holder()
        if holder and holder.get("owner") == self.owner and holder.get("pid") == os.getpid():
            os.remove(self.uri)

    def holder(self) -> dict | None:
        """Who holds the lock now, or None."""
        try:
            if self.uri.startswith("gs://"):
                from google.api_core import exceptions

                try:
                    return json.loads(_gcs_blob(self.uri).download_as_bytes())
                except exceptions.NotFound:
                    return None
            return read_json(self.uri)
        except (OSError, ValueError):
            return None

    def _try_create(self) -> bool:
        payload = self._payload()
        if self.uri.startswith("gs://"):
            from google.api_core import exceptions

            blob = _gcs_blob(self.uri)
            try:
                blob.upload_from_string(payload, if_generation_match=0)
            except exceptions.PreconditionFailed:
                return False
            self._generation = blob.generation
            return True
        os.makedirs(self.root, exist_ok=True)
        try:
            fd = os.open(self.uri, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        return True

    def _break_stale(self) -> bool:
        """Removes the stale lock; only one of several contenders succeeds."""
        if self.uri.startswith("gs://"):
            from google.api_core import exceptions

            blob = _gcs_blob(self.uri)
            try:
                blob.reload()
                blob.delete(if_generation_match=blob.generation)
            except (exceptions.NotFound, exceptions.PreconditionFailed):
                return False
            return True
        moved = f"{self.uri}.stale-{os.getpid()}-{time.time_ns()}"
        try:
            os.rename(self.uri, moved)  # atomic: a second contender finds nothing to move
        except FileNotFoundError:
            return False
        os.remove(moved)
        return True

    def __enter__(self) -> "Lock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def list_objects(inputs: list[str], dicomweb=None) -> dict[str, str]:
    """Every object under the inputs → its version (``size:mtime``), sorted by URI.

    A DICOMweb input (``dicomweb+http(s)://``) lists its instances by QIDO-RS, with the
    ``DicomwebSettings`` given: each instance's URL (study/series/instance UIDs) is the
    object, so a run retrieves only the instances it has not processed yet.
    """
    from transforms import dicom_io
    from transforms import dicomweb as web

    found: dict[str, str] = {}
    stores = [u for u in inputs if web.is_dicomweb(u)]
    if stores:
        found.update(web.list_instances(stores, dicomweb or web.DicomwebSettings()))
    for uri in inputs:
        if web.is_dicomweb(uri):
            continue
        for meta in FileSystems.match([dicom_io.to_pattern(uri)])[0].metadata_list:
            if meta.path.endswith("/") or ("://" not in meta.path and os.path.isdir(meta.path)):
                continue  # folder placeholders, as the reading layer skips them
            mtime = getattr(meta, "last_updated_in_seconds", 0) or 0
            found[meta.path] = f"{meta.size_in_bytes}:{mtime:.6f}"
    return dict(sorted(found.items()))


def object_digest(key: bytes, uri: str) -> str:
    """How state files name a source object: HMAC-SHA256 of its URI under the run's key."""
    return hmac.new(key, f"object\0{uri}".encode(), hashlib.sha256).hexdigest()[:32]


def digests(key: bytes, objects: dict[str, str]) -> dict[str, str]:
    """``{uri: version}`` → ``{digest: version}``, the form written to state files."""
    return {object_digest(key, uri): version for uri, version in objects.items()}


def changed_objects(current: dict[str, str], processed: dict[str, str]) -> list[str]:
    """The objects that are new or whose version changed since they were processed."""
    return [uri for uri, version in current.items() if processed.get(uri) != version]
