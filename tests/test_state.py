"""The run lock (local and on the GCS emulator) and the processed-objects bookkeeping."""

import json
import os
import time

import pytest
from google.api_core import exceptions

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

    def download_as_bytes(self):
        self.reload()
        return self.store[self.name][1]


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path, monkeypatch):
    if request.param == "local":
        return str(tmp_path / "out")
    monkeypatch.setattr(FakeBlob, "store", {})
    monkeypatch.setattr(st, "_gcs_blob", FakeBlob)
    return f"gs://bucket/lock-test/{time.time_ns()}"


def test_a_second_run_is_refused_while_the_first_holds_the_lock(root):
    first = st.Lock(root, "run-a")
    first.acquire()
    with pytest.raises(st.LockHeld, match="run-a") as info:
        st.Lock(root, "run-b").acquire()
    assert "stale after 360 min" in str(info.value)
    first.release()
    with st.Lock(root, "run-b") as lock:
        assert lock.holder()["owner"] == "run-b"
    assert st.Lock(root, "x").holder() is None  # released on leaving the block


def test_a_stale_lock_is_taken_over_once(root):
    killed = st.Lock(root, "killed-run")
    killed.acquire()  # never released: the run was killed
    time.sleep(1.1)
    contenders = [st.Lock(root, f"run-{i}", stale_seconds=1) for i in range(2)]
    contenders[0].acquire()
    assert contenders[0].holder()["owner"] == "run-0"
    with pytest.raises(st.LockHeld):  # run-0's lock is fresh for run-1
        st.Lock(root, "run-1", stale_seconds=3600).acquire()
    contenders[0].release()


def test_stale_takeover_race_has_one_winner(tmp_path):
    root = str(tmp_path)
    st.Lock(root, "dead").acquire()
    os.utime(tmp_path / st.LOCK_NAME)
    late = [st.Lock(root, f"r{i}", stale_seconds=0) for i in range(2)]
    assert late[0]._break_stale() is True
    assert late[1]._break_stale() is False  # nothing left to break
    assert late[0]._try_create() and not late[1]._try_create()


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_state_files_round_trip(where, tmp_path, request):
    root = str(tmp_path) if where == "local" else request.getfixturevalue("gcs") + "/state"
    uri = f"{root}/{st.STATE_NAME}"
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
