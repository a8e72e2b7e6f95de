"""Launchers: the Vertex AI request (the service is mocked), and the local child process."""

import io
import json

import pytest
from google.cloud import aiplatform_v1 as aip

from models import export, launchers
from models.train_config import TrainConfig

CONFIG = TrainConfig(
    data="gs://bucket/ingest/2026-11-21",
    model_dir="gs://bucket/models/chest",
    epochs=12,
    network="resnet50",
    run_id="train-20261121-120000-abcdef12",
)
VERTEX = launchers.VertexConfig(
    project="imaging-prod",
    region="europe-west4",
    image="europe-west4-docker.pkg.dev/imaging-prod/dicomflow/trainer:0.1.0",
    machine_type="g2-standard-8",
    accelerator_type="NVIDIA_L4",
    accelerator_count=1,
    service_account="trainer@imaging-prod.iam.gserviceaccount.com",
)


def test_vertex_request_runs_the_trainer_with_the_same_arguments():
    request = launchers.vertex_request(CONFIG, VERTEX)
    assert request.parent == "projects/imaging-prod/locations/europe-west4"
    job = request.custom_job
    (pool,) = job.job_spec.worker_pool_specs
    assert pool.machine_spec.machine_type == "g2-standard-8"
    assert pool.machine_spec.accelerator_type == aip.AcceleratorType.NVIDIA_L4
    assert pool.machine_spec.accelerator_count == 1 and pool.replica_count == 1
    assert pool.container_spec.image_uri == VERTEX.image
    assert list(pool.container_spec.command) == ["python", "-m", "models.trainer"]
    assert list(pool.container_spec.args) == CONFIG.to_argv()
    assert "--network" in pool.container_spec.args and "resnet50" in pool.container_spec.args
    assert job.job_spec.service_account == VERTEX.service_account
    assert job.job_spec.scheduling.restart_job_on_worker_restart  # resumes from checkpoints
    assert job.labels["dicomflow-run"] == CONFIG.run_id
    printed = json.loads(launchers.request_json(request))
    spec = printed["customJob"]["jobSpec"]["workerPoolSpecs"][0]
    assert spec["machineSpec"]["acceleratorType"] == "NVIDIA_L4"
    assert spec["containerSpec"]["args"] == CONFIG.to_argv()


def test_a_cpu_only_job_names_no_accelerator():
    request = launchers.vertex_request(
        CONFIG,
        launchers.VertexConfig(project="p", region="us-central1", image="img", accelerator_count=0),
    )
    machine = request.custom_job.job_spec.worker_pool_specs[0].machine_spec
    assert machine.accelerator_count == 0
    assert machine.accelerator_type == aip.AcceleratorType.ACCELERATOR_TYPE_UNSPECIFIED


def test_an_unknown_accelerator_is_refused():
    with pytest.raises(ValueError, match="unknown accelerator type 'NVIDIA_GTX_1080'"):
        launchers.vertex_request(
            CONFIG,
            launchers.VertexConfig(
                project="p", region="r", image="img", accelerator_type="NVIDIA_GTX_1080"
            ),
        )


class FakeJobService:
    """Stands in for aiplatform_v1.JobServiceClient: records requests, replays states."""

    def __init__(self, states, error=""):
        self.requests, self.gets = [], 0
        self._states, self._error = list(states), error

    def create_custom_job(self, request):
        self.requests.append(request)
        return aip.CustomJob(name="projects/1/locations/europe-west4/customJobs/42")

    def get_custom_job(self, name):
        state = self._states[min(self.gets, len(self._states) - 1)]
        self.gets += 1
        job = aip.CustomJob(name=name, state=aip.JobState[state])
        if self._error:
            job.error.message = self._error
        return job


def test_submit_then_poll_until_done_and_read_the_run_record(tmp_path):
    config = TrainConfig(data="/gcs/bucket/ingest", model_dir=str(tmp_path), run_id="r-1")
    service = FakeJobService(["JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"])
    job = launchers.submit_vertex(config, VERTEX, client=service)
    (request,) = service.requests
    assert request == launchers.vertex_request(config, VERTEX)
    assert job.name.endswith("/customJobs/42") and job.run_id == "r-1"
    assert not job.done()
    record = {"version": "3", "promoted": False, "reason": "its test ROC AUC is below"}
    export.write_json(export.run_record_uri(str(tmp_path), "r-1"), record)
    result = job.wait(poll_seconds=0)
    assert service.gets == 3
    assert result == launchers.TrainingResult(0, "3", False, "its test ROC AUC is below", "r-1")


def test_a_failed_vertex_job_reports_why(tmp_path):
    config = TrainConfig(data="gs://b/i", model_dir=str(tmp_path), run_id="r-2")
    service = FakeJobService(["JOB_STATE_FAILED"], error="The replica workerpool0-0 exited 1")
    result = launchers.submit_vertex(config, VERTEX, client=service).wait(poll_seconds=0)
    assert (result.exit_status, result.version, result.promoted) == (1, None, False)
    assert result.reason.endswith("ended JOB_STATE_FAILED: The replica workerpool0-0 exited 1")


def test_a_run_id_is_made_when_none_is_given():
    request = launchers.vertex_request(TrainConfig(data="gs://b/i", model_dir="gs://b/m"), VERTEX)
    run_id = request.custom_job.labels["dicomflow-run"]
    assert run_id.startswith("train-") and run_id == run_id.lower()
    args = list(request.custom_job.job_spec.worker_pool_specs[0].container_spec.args)
    assert args[args.index("--run-id") + 1] == run_id


@pytest.mark.slow
def test_local_job_streams_the_trainer_output_and_returns_its_status(tmp_path):
    output = io.StringIO()
    config = TrainConfig(data=str(tmp_path), model_dir=str(tmp_path / "m"))
    job = launchers.start_local(config, output)
    result = job.wait()
    assert job.done() and result.exit_status == 2 and result.version is None
    assert result.reason == "the trainer exited with status 2"
    assert f"trainer: error: {tmp_path} is not an ingest output" in output.getvalue()
