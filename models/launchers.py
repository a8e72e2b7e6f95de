"""Launchers: start the training job as a local process or as a Vertex AI custom job.

Both take a ``TrainConfig`` and return a job handle with ``done()`` (poll) and ``wait()``
(block) giving a ``TrainingResult``; ``dicomflow train`` and ``dicomflow run`` use them
alike. The job itself is always ``python -m models.trainer`` with ``config.to_argv()``:
the result (version, promoted, why) is read back from the run record the trainer writes
under ``<model-dir>/_runs/``.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, TextIO

from models.configs import REQUIRED, arg
from models.layout import new_run_id
from models.train_config import TrainConfig

TRAINER_COMMAND = ["python", "-m", "models.trainer"]  # inside the container image
DEFAULT_MACHINE_TYPE = "n1-standard-8"
DEFAULT_ACCELERATOR = "NVIDIA_TESLA_T4"
_TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


@dataclass(frozen=True)
class TrainingResult:
    """How a training job ended.

    exit_status: 0 when a version was exported (promoted or not), else non-zero.
    version: the exported version's name, or None.
    promoted: whether the gate made it ``latest``.
    reason: the gate's reason, or what went wrong.
    """

    exit_status: int
    version: str | None
    promoted: bool
    reason: str
    run_id: str


def _with_run_id(config: TrainConfig) -> TrainConfig:
    return config if config.run_id else dataclasses.replace(config, run_id=new_run_id("train-"))


def _result(config: TrainConfig, exit_status: int, failure: str) -> TrainingResult:
    assert config.model_dir and config.run_id  # validated, and _with_run_id set the run id
    from models import export  # TensorFlow: only once a job has finished

    record = export.read_run_record(config.model_dir, config.run_id) if exit_status == 0 else None
    if record is None:
        reason = failure if exit_status else "the trainer finished without a run record"
        return TrainingResult(exit_status or 1, None, False, reason, config.run_id)
    return TrainingResult(0, record["version"], record["promoted"], record["reason"], config.run_id)


class LocalJob:
    """``python -m models.trainer`` in a child process, its output streamed line by line.

    The child inherits the environment, so TensorFlow in it uses the GPUs this machine
    has (restrict them with ``CUDA_VISIBLE_DEVICES``).
    """

    def __init__(self, config: TrainConfig, output: TextIO | None = None):
        self.config = _with_run_id(config)
        self._output = output or sys.stderr
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ info lines
        self.process = subprocess.Popen(
            [sys.executable, "-m", "models.trainer", *self.config.to_argv()],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=env,
        )
        self._streamer = threading.Thread(target=self._stream, daemon=True)
        self._streamer.start()

    @property
    def run_id(self) -> str:
        assert self.config.run_id  # _with_run_id set it
        return self.config.run_id

    def _stream(self) -> None:
        assert self.process.stdout is not None  # stdout=PIPE
        for line in self.process.stdout:
            self._output.write(line)
            self._output.flush()

    def done(self) -> bool:
        return self.process.poll() is not None

    def wait(self) -> TrainingResult:
        status = self.process.wait()
        self._streamer.join()
        assert self.process.stdout is not None  # stdout=PIPE
        self.process.stdout.close()
        return _result(self.config, status, f"the trainer exited with status {status}")


def start_local(config: TrainConfig, output: TextIO | None = None) -> LocalJob:
    """Starts the training job as a local process; returns at once."""
    return LocalJob(config, output)


LAUNCHERS = ("local", "vertex")  # where a training job runs: a child process, Vertex AI


@dataclass(frozen=True, kw_only=True)
class VertexConfig:
    """Where and on what a Vertex AI custom job runs: run.yaml's ``train.vertex`` section
    and ``dicomflow train``'s vertex flags (a declared config, ``models.configs``; on the
    command line the project and region are Beam's ``--project`` and ``--region``)."""

    project: str = arg(REQUIRED, "Google Cloud project", cli=False)
    region: str = arg(REQUIRED, "Vertex AI region", cli=False)
    image: str = arg(REQUIRED, "vertex: trainer container image (deploy/)")
    machine_type: str = arg(DEFAULT_MACHINE_TYPE, "vertex: machine")
    accelerator_type: str = arg(DEFAULT_ACCELERATOR, "vertex: GPU type")
    accelerator_count: int = arg(1, "vertex: GPUs (0: CPU only)")
    service_account: str | None = arg(None, "vertex: the job's service account")


def vertex_request(config: TrainConfig, vertex: VertexConfig):
    """The ``CreateCustomJobRequest`` that runs the trainer with ``config`` on Vertex AI.

    Raises:
        ValueError: an unknown accelerator type or a negative count.
    """
    from google.cloud import aiplatform_v1 as aip

    config = _with_run_id(config)
    machine = aip.MachineSpec(machine_type=vertex.machine_type)
    if vertex.accelerator_count < 0:
        raise ValueError("the accelerator count must be >= 0")
    if vertex.accelerator_count:
        names = [n for n in aip.AcceleratorType.__members__ if n != "ACCELERATOR_TYPE_UNSPECIFIED"]
        if vertex.accelerator_type not in names:
            raise ValueError(
                f"unknown accelerator type {vertex.accelerator_type!r} (one of {', '.join(names)})"
            )
        machine.accelerator_type = aip.AcceleratorType.__members__[vertex.accelerator_type]
        machine.accelerator_count = vertex.accelerator_count
    job = aip.CustomJob(
        display_name=f"dicomflow-{config.run_id}",
        labels={"dicomflow-run": config.run_id},
        job_spec=aip.CustomJobSpec(
            worker_pool_specs=[
                aip.WorkerPoolSpec(
                    machine_spec=machine,
                    replica_count=1,
                    container_spec=aip.ContainerSpec(
                        image_uri=vertex.image, command=TRAINER_COMMAND, args=config.to_argv()
                    ),
                )
            ],
            # A restarted worker runs the same arguments again and so resumes from the
            # checkpoints under the model dir.
            scheduling=aip.Scheduling(restart_job_on_worker_restart=True),
            service_account=vertex.service_account or "",
        ),
    )
    return aip.CreateCustomJobRequest(
        parent=f"projects/{vertex.project}/locations/{vertex.region}", custom_job=job
    )


def request_json(request) -> str:
    """The request as JSON, enums by name and unset fields left out (what ``--dry-run`` prints)."""
    return type(request).to_json(
        request,
        indent=2,
        use_integers_for_enums=False,
        always_print_fields_with_no_presence=False,
    )


def job_client(region: str):
    from google.cloud import aiplatform_v1 as aip

    return aip.JobServiceClient(
        client_options={"api_endpoint": f"{region}-aiplatform.googleapis.com"}
    )


class VertexJob:
    """A submitted custom job: ``done()`` polls its state, ``wait()`` until it ends."""

    def __init__(self, config: TrainConfig, name: str, client):
        self.config = config
        self.name = name
        self._client = client
        self._job: Any = None  # the last CustomJob read by state()

    @property
    def run_id(self) -> str:
        assert self.config.run_id  # _with_run_id set it
        return self.config.run_id

    def state(self) -> str:
        self._job = self._client.get_custom_job(name=self.name)
        return self._job.state.name

    def done(self) -> bool:
        return self.state() in _TERMINAL

    def wait(self, poll_seconds: float = 60.0) -> TrainingResult:
        while not self.done():
            time.sleep(poll_seconds)
        state = self._job.state.name
        failure = f"Vertex AI job {self.name} ended {state}"
        if self._job.error.message:
            failure += f": {self._job.error.message}"
        return _result(self.config, 0 if state == "JOB_STATE_SUCCEEDED" else 1, failure)


def submit_vertex(config: TrainConfig, vertex: VertexConfig, client=None) -> VertexJob:
    """Submits the custom job; returns at once. ``client``: a ``JobServiceClient``."""
    config = _with_run_id(config)
    request = vertex_request(config, vertex)
    client = client or job_client(vertex.region)
    job = client.create_custom_job(request=request)
    return VertexJob(config, job.name, client)
