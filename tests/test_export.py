"""The model directory: version numbering, the promotion gate, resolving a model URI."""

import json
import threading
from pathlib import Path

import pytest

from models import export


def staged(tmp_path: Path, name: str = "staging") -> Path:
    folder = tmp_path / name
    (folder / "saved_model").mkdir(parents=True)
    (folder / "saved_model" / "saved_model.pb").write_bytes(b"graph")
    return folder


def write_version(model_dir: Path, version: str) -> None:
    export.write_json(str(model_dir / version / "model.json"), {"version": version})


def test_versions_count_up_and_are_never_overwritten(tmp_path):
    model_dir = tmp_path / "models"
    (model_dir / "5").mkdir(parents=True)  # a version from an earlier run
    (model_dir / "_work").mkdir()
    (model_dir / "notes").mkdir()
    versions = [
        export.publish(str(staged(tmp_path, name)), str(model_dir), write_version_in)
        for name in ("a", "b")
    ]
    assert versions == ["6", "7"]
    assert export.list_versions(str(model_dir)) == [5, 6, 7]
    for v in versions:
        assert json.loads((model_dir / v / "model.json").read_text())["version"] == v
        assert (model_dir / v / "saved_model" / "saved_model.pb").exists()
    assert not list(model_dir.glob(".publish-*"))


def write_version_in(folder: str, version: str) -> None:
    export.write_json(f"{folder}/model.json", {"version": version})


def test_concurrent_exports_never_share_a_version(tmp_path):
    model_dir = tmp_path / "models"
    results, barrier = [], threading.Barrier(6)

    def one(i: int) -> None:
        staging = staged(tmp_path, f"staging{i}")
        (staging / "who").write_text(str(i))
        barrier.wait()
        results.append((export.publish(str(staging), str(model_dir), write_version_in), i))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(int(v) for v, _ in results) == [1, 2, 3, 4, 5, 6]
    for version, i in results:  # each folder holds exactly the export that claimed it
        assert (model_dir / version / "who").read_text() == str(i)
        assert json.loads((model_dir / version / "model.json").read_text())["version"] == version


def test_gcs_claim_uses_a_does_not_exist_precondition(monkeypatch):
    """gs:// has no atomic rename: the version is claimed with ifGenerationMatch=0."""
    from google.api_core.exceptions import PreconditionFailed
    from google.cloud import storage

    created, calls = set(), []

    class Blob:
        def __init__(self, bucket, name):
            self.key = (bucket, name)

        def upload_from_string(self, data, **kwargs):
            calls.append((self.key, kwargs))
            if kwargs.get("if_generation_match") == 0 and self.key in created:
                raise PreconditionFailed("exists")
            created.add(self.key)

    class Client:
        def bucket(self, name):
            return type("Bucket", (), {"blob": lambda _, blob: Blob(name, blob)})()

    monkeypatch.setattr(storage, "Client", Client)
    assert export._claim_gcs("gs://models/cnn/3/.claim")
    assert not export._claim_gcs("gs://models/cnn/3/.claim")
    assert calls[0] == (("models", "cnn/3/.claim"), {"if_generation_match": 0})


def with_auc(model_dir: Path, version: str, auc: float | None) -> None:
    (model_dir / version).mkdir(parents=True)
    # A model.json from before tasks: no "task", so a classifier.
    export.write_json(str(model_dir / version / "model.json"), {"version": version})
    export.write_json(str(model_dir / version / "metrics.json"), {"roc_auc": auc})


def test_gate_promotes_only_a_model_at_least_as_good_as_latest_and_the_minimum(tmp_path):
    m = tmp_path / "models"
    for version, auc in (("1", 0.90), ("2", 0.85), ("3", 0.95), ("4", None), ("5", 0.92)):
        with_auc(m, version, auc)
    first = export.promote(str(m), "1", 0.8)
    assert first.promoted and export.latest_version(str(m)) == "1"
    worse = export.promote(str(m), "2", 0.8)
    assert not worse.promoted
    assert worse.reason == (
        "the lower 95% bound of its test ROC AUC, 0.8500 (AUC 0.8500), is below latest "
        "(version 1: 0.9000)"
    )  # a version without intervals: its point estimate stands for its lower bound
    below_min = export.promote(str(m), "3", 0.97)
    assert not below_min.promoted and "below the minimum 0.9700" in below_min.reason
    assert not export.promote(str(m), "4", 0.0).promoted  # undefined AUC: never promoted
    assert export.latest_version(str(m)) == "1"
    better = export.promote(str(m), "5", 0.8)
    assert better.promoted and "latest (version 1: 0.9000)" in better.reason
    assert (m / "latest").read_text() == "5\n"


def with_ci(model_dir: Path, version: str, auc: float, low: float) -> None:
    (model_dir / version).mkdir(parents=True)
    export.write_json(str(model_dir / version / "model.json"), {"task": "classification"})
    ci = {"roc_auc": {"value": auc, "low": low, "high": min(1.0, 2 * auc - low)}}
    export.write_json(str(model_dir / version / "metrics.json"), {"roc_auc": auc, "ci": ci})


def test_gate_compares_the_candidates_lower_bound_with_latests_auc(tmp_path):
    m = tmp_path / "models"
    with_ci(m, "1", 0.90, 0.80)
    with_ci(m, "2", 0.93, 0.86)  # a better point estimate, within the noise
    with_ci(m, "3", 0.97, 0.91)  # better beyond its interval
    assert export.promote(str(m), "1", 0.5).promoted
    within_noise = export.promote(str(m), "2", 0.5)
    assert not within_noise.promoted and export.latest_version(str(m)) == "1"
    assert "lower 95% bound of its test ROC AUC, 0.8600 (AUC 0.9300)" in within_noise.reason
    clearly_better = export.promote(str(m), "3", 0.5)
    assert clearly_better.promoted and export.latest_version(str(m)) == "3"
    assert "its lower 95% bound 0.9100 >= latest (version 1: 0.9000)" in clearly_better.reason
    assert export.version_metrics(str(m / "3")).lower_bound == 0.91


def test_resolve_model(tmp_path):
    m = tmp_path / "models"
    for version in ("1", "2"):
        write_version(m, version)
        (m / version / "saved_model").mkdir()
        (m / version / "saved_model" / "saved_model.pb").write_bytes(b"graph")
    with pytest.raises(ValueError, match="neither an exported model nor a promoted version"):
        export.resolve_model(str(m))
    with pytest.raises(ValueError, match="no model promoted"):
        export.resolve_model(f"{m}/latest")
    (m / "latest").write_text("1\n")
    assert export.resolve_model(str(m)) == f"{m}/1"
    assert export.resolve_model(f"{m}/") == f"{m}/1"
    assert export.resolve_model(f"{m}/latest") == f"{m}/1"
    assert export.resolve_model(f"{m}/2") == f"{m}/2"
    with pytest.raises(ValueError, match="neither"):
        export.resolve_model(f"{m}/9")
    (m / "latest").write_text("9\n")
    with pytest.raises(ValueError, match=f"no exported model at {m}/9"):
        export.resolve_model(str(m))


def test_json_files_are_strict(tmp_path):
    path = tmp_path / "m.json"
    export.write_json(str(path), {"auc": float("nan"), "curve": [1.0, float("-inf")]})
    assert json.loads(path.read_text(), parse_constant=pytest.fail) == {
        "auc": None,
        "curve": [1.0, None],
    }


@pytest.mark.parametrize(
    ("labels", "positive"),
    [(["0", "1"], "1"), (["1", "0"], "1"), (["neg", "pos"], "pos"), (["a", "b", "c"], None)],
)
def test_positive_label(labels, positive):
    assert export.positive_label(labels) == positive
