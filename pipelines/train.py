"""`dicomflow train`: train, evaluate, export and gate a model on an ingest output.

The job is ``models.trainer``; this command checks the arguments (one line, before any
work) and hands the job to a launcher: ``local`` (a child process on this machine, output
streamed) or ``vertex`` (a Vertex AI custom job; ``--dry-run`` prints the request).
"""

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import tensorflow as tf
from apache_beam.options.pipeline_options import GoogleCloudOptions

from models import configs, launchers, trainer
from models.configs import arg
from models.inputs import check_data
from pipelines.options import CommandOptions, UsageError, parse_options


@dataclass(frozen=True, kw_only=True)
class LaunchArgs:
    """How ``dicomflow train`` launches the job (``TrainConfig`` is the job itself,
    ``launchers.VertexConfig`` where a Vertex AI job runs)."""

    launcher: str = arg(
        "local",
        "local: a child process here; vertex: a Vertex AI job",
        choices=launchers.LAUNCHERS,
    )
    dry_run: bool = arg(False, "vertex: print the job request, submit nothing", switch=True)
    wait: bool = arg(False, "vertex: wait for the job and report its result", switch=True)
    poll_seconds: float = arg(60.0, "vertex: state polling interval")


class TrainOptions(CommandOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        for declared in (trainer.TrainConfig, LaunchArgs, launchers.VertexConfig):
            configs.add_arguments(parser, declared)


def _config(opts: TrainOptions) -> trainer.TrainConfig:
    config = configs.from_namespace(trainer.TrainConfig, opts)
    try:
        config.validate()
    except ValueError as e:
        raise UsageError(str(e)) from None
    return config


def _vertex(opts: TrainOptions, beam_options, config: trainer.TrainConfig):
    cloud = beam_options.view_as(GoogleCloudOptions)
    for flag, value in (("--image", opts.image), ("--project", cloud.project)):
        if not value:
            raise UsageError(f"{flag} is required with --launcher vertex")
    if not cloud.region:
        raise UsageError("--region is required with --launcher vertex")
    for flag, uri in (
        ("--data", config.data),
        ("--model-dir", config.model_dir),
        ("--weights", config.weights),
        ("--checkpoint-dir", config.checkpoint_dir),
    ):
        if uri and not uri.startswith(("gs://", "/gcs/")):
            raise UsageError(f"{flag} must be gs://... (or /gcs/...) for a Vertex AI job")
    vertex = configs.from_namespace(
        launchers.VertexConfig, opts, project=cloud.project, region=cloud.region
    )
    try:
        request = launchers.vertex_request(config, vertex)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return vertex, request


def report(result: launchers.TrainingResult, model_dir: str) -> None:
    if result.version is None:
        print(f"train: no model exported: {result.reason}", file=sys.stderr)
        return
    verdict = "promoted to latest" if result.promoted else "not promoted (kept as a candidate)"
    print(
        f"train: version {result.version} → {model_dir.rstrip('/')}/{result.version}; "
        f"{verdict}: {result.reason}",
        file=sys.stderr,
    )


def run(argv: Sequence[str]) -> int:
    opts, beam_options = parse_options("dicomflow train", argv, TrainOptions)
    config = _config(opts)
    launch = configs.from_namespace(LaunchArgs, opts)
    if launch.launcher == "vertex":
        vertex, request = _vertex(opts, beam_options, config)
        if launch.dry_run:
            print(launchers.request_json(request))
            return 0
        config = dataclasses.replace(config, run_id=request.custom_job.labels["dicomflow-run"])
        job = launchers.submit_vertex(config, vertex)
        print(f"train: submitted Vertex AI job {job.name} (run {job.run_id})", file=sys.stderr)
        if not launch.wait:
            return 0
        result = job.wait(launch.poll_seconds)
    else:
        if launch.dry_run or launch.wait or opts.image:
            raise UsageError("--dry-run, --wait and --image are for --launcher vertex")
        assert config.data  # _config validated it; narrows the type
        try:
            check_data(config.data)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if config.weights and not tf.io.gfile.exists(config.weights):
            raise UsageError(f"--weights {config.weights} does not exist")
        result = launchers.start_local(config).wait()
    assert config.model_dir  # _config validated it; narrows the type
    report(result, config.model_dir)
    return result.exit_status
