"""`dicomflow train`: the command as users run it, local and Vertex AI (dry run, mocked)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models import export, launchers
from pipelines import train
from pipelines.options import UsageError

DICOMFLOW = str(Path(sys.executable).parent / "dicomflow")
QUICK = ["--epochs", "2", "--batch-size", "16"]
VERTEX = [
    "--launcher",
    "vertex",
    "--data",
    "gs://bucket/ingest/2026-11-21",
    "--model-dir",
    "gs://bucket/models/chest",
    "--image",
    "europe-west4-docker.pkg.dev/imaging/dicomflow/trainer:0.1.0",
    "--project",
    "imaging",
    "--region",
    "europe-west4",
    "--machine-type",
    "a2-highgpu-2g",
    "--accelerator-type",
    "NVIDIA_TESLA_A100",
    "--accelerator-count",
    "2",
]


def dicomflow_train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DICOMFLOW, "train", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def first_run(train_data, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("cli") / "models"
    argv = ["--data", str(train_data), "--model-dir", str(model_dir), *QUICK, "--min-auc", "0"]
    return model_dir, dicomflow_train(*argv, "--operating-point", "sensitivity=0.9")


def test_train_locally_exports_and_promotes_from_a_fresh_ingest_output(first_run):
    model_dir, done = first_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert "epoch 1: loss" in done.stderr and "epoch 2: loss" in done.stderr  # streamed
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(f"train: version 1 → {model_dir}/1; promoted to latest: test ROC AUC ")
    )
    assert (model_dir / "latest").read_text() == "1\n"
    served = export.load_serving(export.resolve_model(str(model_dir)))
    assert served.info.version == "1" and served.info.task == "classification"
    assert served.info.operating_point == "sensitivity=0.9" and (served.info.threshold or 0) > 0
    assert served.predict([bytes(64 * 64)]).shape == (1, 2)  # a black raw image


def test_a_model_below_the_gate_stays_a_candidate(first_run, train_data):
    model_dir, _ = first_run
    done = dicomflow_train(
        "--data", str(train_data), "--model-dir", str(model_dir), *QUICK, "--min-auc", "0.99"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train: version 2 → {model_dir}/2; not promoted (kept as a candidate)")
    assert "below the minimum 0.9900" in last
    assert (model_dir / "latest").read_text() == "1\n"
    assert export.list_versions(str(model_dir)) == [1, 2]


def test_vertex_dry_run_prints_the_job_and_submits_nothing(monkeypatch, capsys):
    monkeypatch.setattr(launchers, "job_client", lambda region: pytest.fail("submitted"))
    assert train.run([*VERTEX, "--dry-run", "--epochs", "40", "--network", "resnet50"]) == 0
    request = json.loads(capsys.readouterr().out)
    assert request["parent"] == "projects/imaging/locations/europe-west4"
    (pool,) = request["customJob"]["jobSpec"]["workerPoolSpecs"]
    assert pool["machineSpec"] == {
        "machineType": "a2-highgpu-2g",
        "acceleratorType": "NVIDIA_TESLA_A100",
        "acceleratorCount": 2,
    }
    container = pool["containerSpec"]
    assert container["imageUri"] == "europe-west4-docker.pkg.dev/imaging/dicomflow/trainer:0.1.0"
    args = container["args"]
    for flag, value in (
        ("--data", "gs://bucket/ingest/2026-11-21"),
        ("--model-dir", "gs://bucket/models/chest"),
        ("--epochs", "40"),
        ("--network", "resnet50"),
    ):
        assert args[args.index(flag) + 1] == value
    assert "--launcher" not in args and "--image" not in args  # the launcher's own flags


def test_vertex_submits_the_same_request(monkeypatch, capsys):
    from test_launchers import FakeJobService

    service = FakeJobService(["JOB_STATE_RUNNING"])
    monkeypatch.setattr(launchers, "job_client", lambda region: service)
    assert train.run(VERTEX) == 0
    (request,) = service.requests
    assert request.custom_job.job_spec.worker_pool_specs[0].machine_spec.accelerator_count == 2
    assert "submitted Vertex AI job projects/1/locations/europe-west4/customJobs/42" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model-dir", "m"], "--data is required"),
        (["--data", "d"], "--model-dir is required"),
        (["--data", "d", "--model-dir", "m", "--network", "vgg"], "invalid choice: 'vgg'"),
        (["--data", "d", "--model-dir", "m", "--epochs", "0"], "--epochs"),
        (["--data", "d", "--model-dir", "m", "--operating-point", "f1"], "--operating-point"),
        (["--data", "d", "--model-dir", "m", "--dry-run"], "for --launcher vertex"),
        (["--data", "d", "--model-dir", "m"], "d is not an ingest output"),
        (["--data", "d", "--model-dir", "m", "--colour", "red"], "unrecognized arguments"),
        (VERTEX[:6] + VERTEX[8:], "--image is required with --launcher vertex"),
        ([*VERTEX, "--data", "/data/ingest"], "--data must be gs://"),
        ([*VERTEX, "--accelerator-type", "NVIDIA_GTX_1080"], "unknown accelerator type"),
    ],
)
def test_bad_arguments_fail_before_any_work(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=message):
        train.run(argv)
    assert not (tmp_path / "m").exists()
