"""What a scheduled run needs between runs: a lock, the processed-objects state, run records.

Everything lives under the run's output root, local or ``gs://``:

- ``_lock``: one object created only if absent (an ``O_EXCL`` file locally, a GCS object
  written with ``if_generation_match=0``), holding who took it, when, and a heartbeat the
  holder renews while it lives. A lock whose holder is dead (on this host) or silent for
  the stale time is taken over; the takeover is itself conditional, so two runners cannot
  both win it, and a live holder is never taken over.
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
import threading
import time
import uuid
from dataclasses import dataclass, field

from apache_beam.io.filesystems import FileSystems

from models.layout import LOCK_NAME
from transforms import storage
from transforms.manifest import utc_now
from transforms.storage import read_json


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


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None when it
    does not exist; with the pid it names one process, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except FileNotFoundError:
        return None
    except OSError:
        return ""  # exists, but unreadable
    return stat.rsplit(b")", 1)[-1].split()[19].decode()


def holder_alive(holder: dict) -> bool | None:
    """Whether the lock's holder still runs: True or False on this host, None elsewhere."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return None
    pid = holder["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    started = process_start(pid)
    if started is None:
        return False
    recorded = holder.get("pid_start")
    return not (recorded and started and started != recorded)  # a reused pid is not it


@dataclass
class Lock:
    """A lock object under ``root``; ``with Lock(root, run_id):`` holds it for a block.

    The lock records host, pid (with the process's start time), when it was taken and a
    heartbeat that a background thread renews every ``heartbeat_seconds`` while the holder
    lives. Another run takes it over only when its holder is dead (same host: the pid is
    gone or reused) or its heartbeat is older than ``stale_seconds`` (any host); a live
    holder on this host is never taken over, whatever its age. The takeover is
    conditional on the very lock judged dead (its token locally, its generation on GCS), so
    of several contenders exactly one wins.

    Args:
        root: the output root (local path or gs://).
        owner: who takes it (the run id).
        stale_seconds: a heartbeat older than this marks a holder on another host dead.
        heartbeat_seconds: how often the holder renews it (default: a quarter of the stale
            time, at most a minute).
    """

    root: str
    owner: str
    stale_seconds: float = 10 * 60
    heartbeat_seconds: float | None = None
    lost: bool = field(default=False, init=False)
    _generation: int | None = field(default=None, init=False)
    _token: str = field(default="", init=False)
    _acquired: tuple[str, float] = field(default=("", 0.0), init=False)
    _stop: threading.Event | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    @property
    def uri(self) -> str:
        return FileSystems.join(self.root, LOCK_NAME)

    def _payload(self) -> bytes:
        now = time.time()
        holder = {
            "owner": self.owner,
            "token": self._token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": process_start(os.getpid()),
            "acquired_at": self._acquired[0],
            "acquired_epoch": self._acquired[1],
            "heartbeat_at": utc_now(),
            "heartbeat_epoch": now,
        }
        return json.dumps(holder).encode()

    def acquire(self) -> None:
        """Takes the lock, or takes over one whose holder is dead or silent.

        Raises:
            LockHeld: naming the holder, since when and its last heartbeat.
        """
        self._token = uuid.uuid4().hex
        self._acquired = (utc_now(), time.time())
        if self._try_create():
            self._start_heartbeat()
            return
        holder, version = self._read()
        if holder is None:  # released meanwhile: one more try, no more
            if not self._try_create():
                raise LockHeld(f"another run took {self.uri} first")
            self._start_heartbeat()
            return
        alive = holder_alive(holder)
        beat = float(holder.get("heartbeat_epoch", holder.get("acquired_epoch", 0)) or 0)
        age = time.time() - beat
        who = (
            f"{holder.get('owner', '?')} on {holder.get('host', '?')} (pid "
            f"{holder.get('pid', '?')}) since {holder.get('acquired_at', '?')}"
        )
        if alive:
            raise LockHeld(f"another run holds {self.uri}: {who}, alive on this host")
        if alive is None and age < self.stale_seconds:
            raise LockHeld(
                f"another run holds {self.uri}: {who}; last heartbeat {age / 60:.0f} min "
                f"ago (stale after {self.stale_seconds / 60:.0f} min)"
            )
        if not (self._break(holder, version) and self._try_create()):
            raise LockHeld(f"another run took over the dead lock {self.uri} first")
        self._start_heartbeat()

    def release(self) -> None:
        """Stops the heartbeat and removes the lock if this holder still owns it."""
        self._stop_heartbeat()
        if self.uri.startswith("gs://"):
            from google.api_core import exceptions

            with contextlib.suppress(exceptions.NotFound, exceptions.PreconditionFailed):
                _gcs_blob(self.uri).delete(if_generation_match=self._generation)
            return
        holder = self.holder()
        if holder and holder.get("token") == self._token:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.uri)

    def holder(self) -> dict | None:
        """Who holds the lock now, or None."""
        return self._read()[0]

    def _read(self) -> tuple[dict | None, object]:
        """The holder and the version to make a takeover conditional on (GCS generation,
        or the holder's token locally)."""
        try:
            if self.uri.startswith("gs://"):
                from google.api_core import exceptions

                blob = _gcs_blob(self.uri)
                try:
                    blob.reload()
                    generation = blob.generation
                    data = blob.download_as_bytes(if_generation_match=generation)
                except (exceptions.NotFound, exceptions.PreconditionFailed):
                    return None, None
                return json.loads(data), generation
            holder = read_json(self.uri)
            return holder, (holder or {}).get("token")
        except (OSError, ValueError):
            return None, None

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

    def _break(self, holder: dict, version) -> bool:
        """Removes the lock judged dead, only if it is still that lock; one contender wins."""
        if self.uri.startswith("gs://"):
            from google.api_core import exceptions

            try:
                _gcs_blob(self.uri).delete(if_generation_match=version)
            except (exceptions.NotFound, exceptions.PreconditionFailed):
                return False
            return True
        # The first to create the marker for this very token may remove that lock; the
        # token is checked again after, so a late contender cannot remove a newer lock.
        marker = f"{self.uri}.takeover-{version}"
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return False
        try:
            if (read_json(self.uri) or {}).get("token") != version:
                return False
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.uri)
            return True
        finally:
            os.remove(marker)

    def _start_heartbeat(self) -> None:
        interval = self.heartbeat_seconds or min(60.0, self.stale_seconds / 4)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(self._stop, interval), name="dicomflow-lock", daemon=True
        )
        self._thread.start()

    def _stop_heartbeat(self) -> None:
        if self._stop is not None:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self._stop = self._thread = None

    def _beat(self, stop: threading.Event, interval: float) -> None:
        while not stop.wait(interval):
            try:
                if not self.renew():
                    self.lost = True
                    return
            except Exception:  # a failed renewal is retried; staleness is the backstop
                continue

    def renew(self) -> bool:
        """Writes a fresh heartbeat; False when the lock is no longer this holder's."""
        payload = self._payload()
        if self.uri.startswith("gs://"):
            from google.api_core import exceptions

            blob = _gcs_blob(self.uri)
            try:
                blob.upload_from_string(payload, if_generation_match=self._generation)
            except (exceptions.PreconditionFailed, exceptions.NotFound):
                return False
            self._generation = blob.generation
            return True
        if (read_json(self.uri) or {}).get("token") != self._token:
            return False
        write_json(self.uri, json.loads(payload))
        return True

    def __enter__(self) -> "Lock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def list_objects(inputs: list[str], sources=None) -> dict[str, str]:
    """Every object under the inputs → its version, sorted by URI, as each source lists
    it (``sources``: the SourceSettings): a file's ``size:mtime``; a store's instances
    by their URLs, so a run retrieves only the instances it has not processed yet.

    Raises:
        ListingFailed: a source could not list its inputs.
    """
    from transforms.sources import registry

    settings = sources or registry.SourceSettings()
    return registry.list_objects(registry.configure_inputs(inputs, settings))


def object_digest(key: bytes, uri: str) -> str:
    """How state files name a source object: HMAC-SHA256 of its URI under the run's key."""
    return hmac.new(key, f"object\0{uri}".encode(), hashlib.sha256).hexdigest()[:32]


def digests(key: bytes, objects: dict[str, str]) -> dict[str, str]:
    """``{uri: version}`` → ``{digest: version}``, the form written to state files."""
    return {object_digest(key, uri): version for uri, version in objects.items()}


def changed_objects(current: dict[str, str], processed: dict[str, str]) -> list[str]:
    """The objects that are new or whose version changed since they were processed."""
    return [uri for uri, version in current.items() if processed.get(uri) != version]
