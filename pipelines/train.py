"""`dicomflow train`: train, evaluate, export and gate a model on an ingest output.

The job is ``models.trainer``; this command checks the arguments (one line, before any
work) and hands the job to a launcher: ``local`` (a child process on this machine, output
streamed) or ``vertex`` (a Vertex AI custom job; ``--dry-run`` prints the request).
"""

import dataclasses
import sys
from collections.abc import Sequence

import tensorflow as tf
from apache_beam.options.pipeline_options import GoogleCloudOptions

from models import launchers, trainer
from models.inputs import check_data
from pipelines.options import CommandOptions, UsageError, parse_options

LAUNCHERS = ("local", "vertex")


class TrainOptions(CommandOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        trainer.add_arguments(parser)
        parser.add_argument("--launcher", choices=LAUNCHERS, default="local")
        parser.add_argument("--image", help="vertex: trainer container image (deploy/)")
        parser.add_argument(
            "--machine-type", default=launchers.DEFAULT_MACHINE_TYPE, help="vertex: machine"
        )
        parser.add_argument(
            "--accelerator-type", default=launchers.DEFAULT_ACCELERATOR, help="vertex: GPU type"
        )
        parser.add_argument(
            "--accelerator-count", type=int, default=1, help="vertex: GPUs (0: CPU only)"
        )
        parser.add_argument("--service-account", help="vertex: the job's service account")
        parser.add_argument(
            "--dry-run", action="store_true", help="vertex: print the job request, submit nothing"
        )
        parser.add_argument(
            "--wait", action="store_true", help="vertex: wait for the job and report its result"
        )
        parser.add_argument(
            "--poll-seconds", type=float, default=60.0, help="vertex: state polling interval"
        )


def _config(opts: TrainOptions) -> trainer.TrainConfig:
    values = {f.name: getattr(opts, f.name) for f in dataclasses.fields(trainer.TrainConfig)}
    config = trainer.TrainConfig(**values)
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
    vertex = launchers.VertexConfig(
        project=cloud.project,
        region=cloud.region,
        image=opts.image,
        machine_type=opts.machine_type,
        accelerator_type=opts.accelerator_type,
        accelerator_count=opts.accelerator_count,
        service_account=opts.service_account,
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
    if opts.launcher == "vertex":
        vertex, request = _vertex(opts, beam_options, config)
        if opts.dry_run:
            print(launchers.request_json(request))
            return 0
        config = dataclasses.replace(config, run_id=request.custom_job.labels["dicomflow-run"])
        job = launchers.submit_vertex(config, vertex)
        print(f"train: submitted Vertex AI job {job.name} (run {job.run_id})", file=sys.stderr)
        if not opts.wait:
            return 0
        result = job.wait(opts.poll_seconds)
    else:
        if opts.dry_run or opts.wait or opts.image:
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
