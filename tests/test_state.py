"""The run lock (local and on the GCS emulator) and the processed-objects bookkeeping."""

import json
import os
import socket
import subprocess
import time

import pytest
from google.api_core import exceptions

from models.layout import LOCK_NAME, STATE_NAME
from pipelines import state as st


class FakeBlob:
    """GCS object semantics the lock relies on: generations and their preconditions.

    The GCS emulator ignores ifGenerationMatch, so the conditional requests are checked
    against this stand-in; the rest of the gs:// path (state files) uses the emulator.
    """

    store: dict[str, tuple[int, bytes]] = {}

    def __init__(self, name: str):
        self.name, self.generation = name, None

    def _check(self, want):
        have = self.store.get(self.name, (0, b""))[0]
        if want is not None and want != have:
            raise exceptions.PreconditionFailed(f"generation {have}, wanted {want}")

    def upload_from_string(self, data, if_generation_match=None):
        self._check(if_generation_match)
        self.generation = time.time_ns()
        self.store[self.name] = (self.generation, data)

    def reload(self):
        if self.name not in self.store:
            raise exceptions.NotFound(self.name)
        self.generation = self.store[self.name][0]

    def delete(self, if_generation_match=None):
        if self.name not in self.store:
            raise exceptions.NotFound(self.name)
        self._check(if_generation_match)
        del self.store[self.name]

    def download_as_bytes(self, if_generation_match=None):
        self.reload()
        self._check(if_generation_match)
        return self.store[self.name][1]


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path, monkeypatch):
    if request.param == "local":
        return str(tmp_path / "out")
    monkeypatch.setattr(FakeBlob, "store", {})
    monkeypatch.setattr(st, "_gcs_blob", FakeBlob)
    return f"gs://bucket/lock-test/{time.time_ns()}"


def plant(root: str, **holder) -> None:
    """Writes a lock as another run would have left it."""
    now = time.time()
    data = {
        "owner": "other-run",
        "token": "t-" + str(time.time_ns()),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": st.process_start(os.getpid()),
        "acquired_at": "then",
        "acquired_epoch": now,
        "heartbeat_epoch": now,
        **holder,
    }
    uri = f"{root}/{LOCK_NAME}"
    if root.startswith("gs://"):
        st._gcs_blob(uri).upload_from_string(json.dumps(data).encode(), if_generation_match=0)
    else:
        os.makedirs(root, exist_ok=True)
        with open(uri, "w") as fh:
            json.dump(data, fh)


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_second_run_is_refused_while_the_first_holds_the_lock(root):
    first = st.Lock(root, "run-a")
    first.acquire()
    with pytest.raises(st.LockHeld, match=r"run-a.*alive on this host"):
        st.Lock(root, "run-b").acquire()
    first.release()
    with st.Lock(root, "run-b") as lock:
        assert lock.holder()["owner"] == "run-b"
    assert st.Lock(root, "x").holder() is None  # released on leaving the block


def test_the_lock_records_holder_and_renews_its_heartbeat(root):
    lock = st.Lock(root, "run-a", heartbeat_seconds=0.05)
    with lock:
        first = lock.holder()
        assert first["host"] == socket.gethostname() and first["pid"] == os.getpid()
        assert first["pid_start"] and first["acquired_at"]
        time.sleep(0.4)
        later = lock.holder()
        assert later["heartbeat_epoch"] > first["heartbeat_epoch"]
        assert later["acquired_epoch"] == first["acquired_epoch"]
        assert not lock.lost


def test_a_live_holder_on_this_host_is_never_taken_over(root):
    """Before: a live run older than the stale time was taken over, and two runs wrote
    every score twice. Its heartbeat may be old (a long stall): it lives, it keeps it."""
    plant(root, heartbeat_epoch=0, acquired_epoch=0)
    with pytest.raises(st.LockHeld, match="alive on this host"):
        st.Lock(root, "late", stale_seconds=1).acquire()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(root):
    """Before: after a SIGKILL, re-runs were refused for six hours."""
    plant(root, pid=dead_pid())  # heartbeat just now, but its process is gone
    with st.Lock(root, "rerun", stale_seconds=3600) as lock:
        assert lock.holder()["owner"] == "rerun"


def test_a_reused_pid_is_not_the_holder(root):
    plant(root, pid=os.getpid(), pid_start="1")  # this pid, but another process's start
    with st.Lock(root, "rerun", stale_seconds=3600) as lock:
        assert lock.holder()["owner"] == "rerun"


def test_a_holder_elsewhere_is_taken_over_only_when_its_heartbeat_is_stale(root):
    plant(root, host="another-host", pid=1)
    with pytest.raises(st.LockHeld, match="last heartbeat 0 min ago"):
        st.Lock(root, "late", stale_seconds=60).acquire()
    st.Lock(root, "x")._read()  # readable as is
    uri_root = root
    if root.startswith("gs://"):
        FakeBlob.store.clear()
    else:
        os.remove(f"{root}/{LOCK_NAME}")
    plant(uri_root, host="another-host", pid=1, heartbeat_epoch=time.time() - 120)
    with st.Lock(root, "late", stale_seconds=60) as lock:
        assert lock.holder()["owner"] == "late"


def test_takeover_of_a_dead_lock_has_one_winner(root):
    plant(root, pid=dead_pid())
    contenders = [st.Lock(root, f"r{i}") for i in range(2)]
    seen = [c._read() for c in contenders]  # both judged the same lock dead
    assert contenders[0]._break(*seen[0]) is True
    contenders[0]._token = "winner"
    assert contenders[0]._try_create()
    assert contenders[1]._break(*seen[1]) is False  # that lock is gone: not the new one
    assert not contenders[1]._try_create()
    assert contenders[1].holder()["token"] == "winner"


def test_a_holder_that_was_taken_over_notices(root):
    lock = st.Lock(root, "slow", heartbeat_seconds=0.05)
    lock.acquire()
    lock._stop_heartbeat()
    holder, version = lock._read()
    assert lock._break(holder, version)
    st.Lock(root, "new")._try_create()
    assert lock.renew() is False
    lock.release()  # leaves the new holder's lock alone
    assert st.Lock(root, "x").holder()["owner"] == "new"


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_state_files_round_trip(where, tmp_path, request):
    root = str(tmp_path) if where == "local" else request.getfixturevalue("gcs") + "/state"
    uri = f"{root}/{STATE_NAME}"
    assert st.read_json(uri) is None
    st.write_json(uri, {"processed": {"a": "1:2"}})
    st.write_json(uri, {"processed": {"a": "1:3"}})
    assert st.read_json(uri) == {"processed": {"a": "1:3"}}


def test_new_and_changed_objects(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ("a.dcm", "sub/b.dcm"):
        (tmp_path / "in" / name).write_bytes(b"x")
    first = st.list_objects([str(tmp_path / "in")])
    assert sorted(os.path.basename(p) for p in first) == ["a.dcm", "b.dcm"]
    assert st.changed_objects(first, first) == []
    (tmp_path / "in" / "c.dcm").write_bytes(b"new")
    (tmp_path / "in" / "a.dcm").write_bytes(b"changed")
    changed = st.changed_objects(st.list_objects([str(tmp_path / "in")]), first)
    assert sorted(os.path.basename(p) for p in changed) == ["a.dcm", "c.dcm"]
    assert json.dumps(first)  # versions are plain strings, storable in state.json
