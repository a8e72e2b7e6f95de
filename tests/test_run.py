"""`dicomflow run`: planning, resuming and locking, with the stages recorded, then for real."""

import json
from pathlib import Path

import pytest
import yaml

from models.layout import LOCK_NAME, STATE_NAME
from pipelines import run as run_mod
from pipelines import state as st
from pipelines.options import UsageError


@pytest.fixture
def setup(tmp_path, monkeypatch):
    """An input folder, a config, and stage runners that record what they were asked."""
    (tmp_path / "in").mkdir()
    for name in ("a.dcm", "b.dcm"):
        (tmp_path / "in" / name).write_bytes(b"dicom " + name.encode())
    (tmp_path / "labels.csv").write_text("SOPInstanceUID,label\n1,0\n")
    config = run_mod.RunConfig.from_mapping(
        {
            "inputs": [str(tmp_path / "in")],
            "output": str(tmp_path / "out"),
            "labels": str(tmp_path / "labels.csv"),
            "key_env": "K",
            "ingest": {"min_new_objects": 2},
        }
    )
    monkeypatch.setenv("K", "k" * 64)
    calls: list[tuple[str, str, list[str]]] = []

    def fake(stage):
        def runner(config, record, objects):
            calls.append((stage, record["run_id"], sorted(Path(p).name for p in objects)))
            if fail.get(stage):
                raise run_mod.StageFailed(f"{stage} broke")
            return {"ok": True}

        return runner

    fail: dict[str, bool] = {}
    monkeypatch.setattr(run_mod, "RUNNERS", {s: fake(s) for s in run_mod.STAGES})
    return tmp_path, config, calls, fail


def quiet(config, **kw):
    return run_mod.execute_run(config, log=lambda m: None, **kw)


def test_first_run_ingests_trains_and_scores_everything(setup):
    tmp, config, calls, _ = setup
    assert quiet(config) == 0
    run_id = calls[0][1]
    assert calls == [(s, run_id, ["a.dcm", "b.dcm"]) for s in ("ingest", "train", "score")]
    state_text = (tmp / "out" / STATE_NAME).read_text()
    state = json.loads(state_text)
    assert state["current_run"] is None and len(state["processed"]) == 2
    record_text = (tmp / "out" / "runs" / run_id / "run.json").read_text()
    record = json.loads(record_text)
    for text in (state_text, record_text):  # object names may carry patient names
        assert "a.dcm" not in text and str(tmp / "in") not in text
    assert list(record["done"]) == ["ingest", "train", "score"] and record["finished_at"]
    assert not (tmp / "out" / LOCK_NAME).exists()


def test_later_runs_score_only_new_or_changed_objects(setup):
    tmp, config, calls, _ = setup
    quiet(config)
    calls.clear()
    quiet(config)  # nothing new: score runs with no objects
    assert [(c[0], c[2]) for c in calls] == [("score", [])]
    calls.clear()
    (tmp / "in" / "c.dcm").write_bytes(b"new")
    quiet(config)
    assert [(c[0], c[2]) for c in calls] == [("score", ["c.dcm"])]
    calls.clear()
    (tmp / "in" / "d.dcm").write_bytes(b"new")  # two new since the last ingest: retrain
    quiet(config)
    assert [(c[0], c[2]) for c in calls] == [(s, ["d.dcm"]) for s in ("ingest", "train", "score")]
    calls.clear()
    (tmp / "labels.csv").write_text("SOPInstanceUID,label\n1,1\n2,0\n")  # new labels: retrain
    quiet(config)
    assert [c[0] for c in calls] == ["ingest", "train", "score"]


def test_a_failed_stage_stops_the_chain_and_the_next_run_resumes_it(setup):
    tmp, config, calls, fail = setup
    fail["train"] = True
    assert quiet(config) == 1
    assert [c[0] for c in calls] == ["ingest", "train"]
    run_id = calls[0][1]
    state = json.loads((tmp / "out" / STATE_NAME).read_text())
    assert state["current_run"] == run_id and "processed" not in state  # nothing marked done
    fail.clear()
    calls.clear()
    (tmp / "in" / "late.dcm").write_bytes(b"arrived meanwhile")
    assert quiet(config) == 0
    # Same run id, same objects; ingest is not repeated; the late object waits its turn.
    assert calls == [(s, run_id, ["a.dcm", "b.dcm"]) for s in ("train", "score")]
    calls.clear()
    quiet(config)
    assert [(c[0], c[2]) for c in calls] == [("score", ["late.dcm"])]


def test_from_stage_reruns_that_stage_and_the_later(setup):
    _, config, calls, _ = setup
    quiet(config)
    calls.clear()
    quiet(config, from_stage="train")
    assert [c[0] for c in calls] == ["train", "score"]


def test_a_held_lock_refuses_the_run(setup, capsys):
    tmp, config, calls, _ = setup
    cfg = tmp / "run.yaml"
    cfg.write_text(
        yaml.safe_dump({"inputs": config.inputs, "output": config.output, "key_env": "K"})
    )
    with st.Lock(config.output, "someone-else"):
        assert run_mod.run(["--config", str(cfg)]) == 3
    assert "someone-else" in capsys.readouterr().err and calls == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"output": "/o", "key_env": "K"}, "missing inputs"),
        ({"inputs": ["/i"], "output": "/o"}, "exactly one of key_env and key_file"),
        ({"inputs": ["/i"], "output": "/o", "key_env": "K", "ouptut": 1}, "unknown keys"),
        ({"inputs": "/i", "output": "/o", "key_env": "K", "train": {"launcher": "x"}}, "launcher"),
        ({"inputs": "/i", "output": "/o", "key_env": "K", "score": {"beam": []}}, "score: unknown"),
    ],
)
def test_bad_configs_are_one_line_errors(tmp_path, data, message):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(data))
    with pytest.raises(UsageError, match=message):
        run_mod.run(["--config", str(cfg)])
    with pytest.raises(UsageError, match="required"):
        run_mod.run([])


# --- for real: ingest → train → score on DirectRunner, killed and resumed -----------------


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    from pipelines import synth

    root = tmp_path_factory.mktemp("run-corpus")
    argv = ["--output", str(root), "--patients", "16", "--seed", "5", "--positive-rate", "0.5"]
    assert synth.run(argv) == 0
    return root


def real_config(root: Path, export: Path, tmp: Path) -> Path:
    (tmp / "pixels.yaml").write_text("size: 32\n")
    # Burned-in text kept: what this chain checks (a killed run resumed, no duplicates, only
    # new objects scored) does not depend on OCR redaction, a third of its work (106 CPU s
    # with it, 69 without, 2026-12-07); the quiet chain and the demo redact (the default).
    (tmp / "deid.yaml").write_text("pixels:\n  policy: keep\n")
    config = {
        "inputs": [str(export / "export")],
        "output": str(root),
        "labels": str(export / "labels.csv"),
        "key_env": "DF_RUN_KEY",
        "pixel_config": str(tmp / "pixels.yaml"),
        "deid_config": str(tmp / "deid.yaml"),
        "ingest": {"args": ["--split", "0.5,0.25,0.25"]},
        "train": {"epochs": 1, "min_auc": 0.0, "batch_size": 16, "augment": "none"},
        "score": {"args": ["--batch-size", "8"]},
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_chain_killed_mid_way_resumes_without_duplicates(small_export, tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import read_table

    monkeypatch.setenv("DF_RUN_KEY", "r" * 64)
    root = tmp_path / "out"
    config = real_config(root, small_export, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    deadline = time.monotonic() + 300
    run_id = None
    while time.monotonic() < deadline and proc.poll() is None:
        state = st.read_json(str(root / STATE_NAME)) or {}
        run_id = state.get("current_run")
        record = st.read_json(str(root / "runs" / run_id / "run.json")) if run_id else None
        if record and "train" in record["done"]:
            break  # killed as the score stage starts
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_id, "the run never got going"
    assert (root / LOCK_NAME).exists()  # a killed run leaves its lock behind

    # Its process is gone, so its lock is taken over at once, fresh heartbeat or not.
    config_obj = run_mod.load_config(str(config))
    assert config_obj.lock_stale_minutes == 10
    assert run_mod.execute_run(config_obj, log=lambda m: None) == 0
    state = st.read_json(str(root / STATE_NAME))
    assert state["runs"] == [run_id] and state["current_run"] is None  # the same run resumed
    record = st.read_json(str(root / "runs" / run_id / "run.json"))
    assert list(record["done"]) == ["ingest", "train", "score"]
    score_out = root / "runs" / run_id / "score"
    manifest = json.loads((score_out / "manifest.json").read_text())
    rows = read_table(str(next((score_out / "scores").glob("model_version=*/run_id=*"))))
    keys = [(r["sop_instance_uid"], r["frame"]) for r in rows]
    assert rows and len(keys) == len(set(keys))  # no duplicates after the resume
    errors = read_table(str(score_out / "errors"))
    assert manifest["counts"]["seen"] >= len(record["objects"])
    assert len(errors) == manifest["counts"]["dead_lettered"]

    # A second run with one new file scores that file only, with the promoted model.
    new = small_export / "export" / "late-arrival.bin"
    new.write_bytes(b"not dicom at all")
    try:
        assert run_mod.execute_run(run_mod.load_config(str(config)), log=lambda m: None) == 0
    finally:
        new.unlink()
    state = st.read_json(str(root / STATE_NAME))
    second = st.read_json(str(root / "runs" / state["runs"][-1] / "run.json"))
    assert len(second["objects"]) == 1 and list(second["done"]) == ["score"]
    for path in (root / STATE_NAME, *root.glob("runs/*/run.json")):
        assert str(small_export) not in path.read_text()  # digests, never source paths
    errors = read_table(str(root / "runs" / state["runs"][-1] / "score" / "errors"))
    assert [e["error_type"] for e in errors] == ["not_dicom"]


def test_a_missing_key_is_refused_before_the_lock(setup, monkeypatch):
    tmp, config, calls, _ = setup
    monkeypatch.delenv("K")
    with pytest.raises(UsageError, match="K is not set"):
        quiet(config)
    assert calls == [] and not (tmp / "out").exists()


def test_the_task_is_set_once_and_reaches_ingest_train_and_score(tmp_path):
    base = {"inputs": [str(tmp_path)], "output": str(tmp_path / "out"), "key_env": "K"}
    config = run_mod.RunConfig.from_mapping(
        {
            **base,
            "task": "segmentation",
            "masks": str(tmp_path / "seg"),
            "mask_classes": "tumour=GTV*",
            "train": {"epochs": 2},
        }
    )
    assert config.train.config.task == "segmentation" and config.train.config.epochs == 2
    args, _ = run_mod.ingest_args(config)
    assert (args.task, args.masks) == ("segmentation", str(tmp_path / "seg"))
    assert args.mask_classes == "tumour=GTV*"
    score, _ = run_mod.score_args(config, "r1", [str(tmp_path / "a.dcm")], "m/latest")
    assert score.task == "segmentation"
    assert run_mod.RunConfig.from_mapping(base).train.config.task == "classification"
    for data, message in (
        ({"train": {"task": "segmentation"}}, "set once, at the top"),
        ({"task": "segmentation", "labels": "l.csv"}, "labels are for the classification"),
        ({"masks": "m/"}, "masks are for the segmentation"),
        ({"mask_classes": "GTV"}, "mask_classes are for the segmentation"),
        ({"task": "detection"}, "task must be one of"),
    ):
        with pytest.raises(ValueError, match=message):
            run_mod.RunConfig.from_mapping({**base, **data})


def test_a_new_task_or_new_mask_classes_ingest_again(tmp_path):
    """What ingest made no longer fits: the classes by name (or the task) changed."""
    base = {"inputs": [str(tmp_path)], "output": str(tmp_path / "out"), "key_env": "K"}
    seg = {**base, "task": "segmentation", "mask_classes": "liver=Liver"}
    last = {"objects": {}, "labels_version": None, "task": "segmentation"}
    state = {"last_ingest": {**last, "mask_classes": "liver=Liver"}}
    same = run_mod.plan(run_mod.RunConfig.from_mapping(seg), state, None, {})
    assert same["stages"] == ["score"] and same["mask_classes"] == "liver=Liver"
    other = {**seg, "mask_classes": "liver=Liver,tumour=GTV*"}
    moved = run_mod.plan(run_mod.RunConfig.from_mapping(other), state, None, {})
    assert moved["stages"] == ["ingest", "train", "score"]
    assert moved["retrain_because"] == ["the mask classes changed"]
    task = run_mod.plan(run_mod.RunConfig.from_mapping(base), state, None, {})
    assert task["retrain_because"] == ["the task changed"]
    old = {"last_ingest": {"objects": {}, "labels_version": None}}  # a state from before
    assert run_mod.plan(run_mod.RunConfig.from_mapping(base), old, None, {})["stages"] == ["score"]
