"""The training job: ingest TFRecords → a trained, evaluated, exported and gated model.

Runs in-process (``train(config)``), as ``python -m models.trainer --data URI --model-dir
URI [...]`` (the container entry point, and what the local launcher spawns), or on Vertex
AI with the same arguments. Needs TensorFlow, tf.Transform and Keras; no DICOM stack.

Checkpoints: ``<model-dir>/_work/<key>/`` (or ``--checkpoint-dir``), where ``key`` hashes
every argument that changes the trained weights. Each epoch writes the full model (with
optimizer state), the best weights so far and ``state.json``; a job restarted with the
same arguments continues after the last finished epoch, and a finished job removes the
folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
import tensorflow as tf

from models import export
from models import features as f
from models.checkpoints import Checkpoints, _local_copy
from models.inputs import DataInfo, join, read_info
from models.layout import new_run_id
from models.model_card import model_card
from models.tasks import Evaluation, Metrics, Task, get_task
from models.train_config import (
    TrainConfig,
    add_arguments,
    config_from_args,
)

EXIT_USAGE = 2


# Arguments that do not change the trained weights (the operating point is chosen after).


def device_plan(gpus: int, mixed_precision: str) -> tuple[str, str]:
    """(distribution strategy, Keras dtype policy) for the GPUs TensorFlow sees.

    Any GPU: MirroredStrategy over all of them (one replica per GPU). Mixed precision
    (float16 compute, float32 weights and output) when asked, or on "auto" with a GPU.
    """
    strategy = "mirrored" if gpus else "default"
    mixed = mixed_precision == "on" or (mixed_precision == "auto" and gpus > 0)
    return strategy, "mixed_float16" if mixed else "float32"


@dataclass
class TrainOutcome:
    run_id: str
    version: str
    version_dir: str
    promoted: bool
    reason: str
    metrics: Metrics
    resumed_from_epoch: int
    epochs_trained: int


def _optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(config.learning_rate, momentum=config.momentum)
    return keras.optimizers.Adam(config.learning_rate)


def _print(message: str) -> None:
    print(message, flush=True)


def train(
    config: TrainConfig,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    log: Callable[[str], None] = _print,
) -> TrainOutcome:
    """Trains, evaluates on the test split, exports a new version and applies the gate.

    Args:
        config: the arguments.
        callbacks: more Keras callbacks (after the checkpointing one).
        log: where progress lines go.

    Raises:
        ValueError: a bad argument or an ingest output that cannot be trained on.
    """
    config.validate()
    assert config.data and config.model_dir  # validate() refused them missing; narrows the type
    run_id = config.run_id or new_run_id("train-")
    task = get_task(config.task)
    started = time.time()
    info = read_info(config.data)
    labels = task.classes(info)
    if not info.labelled(f.TEST):
        raise ValueError(f"{config.data} has no labelled test examples to evaluate on")
    keras.utils.set_random_seed(config.seed)
    gpus = len(tf.config.list_physical_devices("GPU"))
    strategy_name, policy = device_plan(gpus, config.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    strategy = (
        tf.distribute.MirroredStrategy()
        if strategy_name == "mirrored"
        else tf.distribute.get_strategy()
    )
    global_batch = config.batch_size * strategy.num_replicas_in_sync
    log(
        f"train {run_id}: {info.labelled(f.TRAIN)} train / {info.labelled(f.EVAL)} eval / "
        f"{info.labelled(f.TEST)} test examples, {task.name}, labels {labels}, images "
        f"{'x'.join(map(str, info.image_shape))}; {gpus} GPU(s), {strategy_name} strategy, "
        f"{policy}, batch {global_batch}"
    )

    import tensorflow_transform as tft

    transform = tft.TFTransformOutput(info.transform_dir).transform_features_layer()
    datasets = task.datasets(config, info, transform, global_batch)
    work = config.checkpoint_dir or join(config.model_dir, export.WORK_DIR, config.key())
    checkpoints = Checkpoints(
        work, config.patience, info.labelled(f.TRAIN), log, task.monitor, task.metric_short
    )
    resumed_from = checkpoints.state.epoch
    with tempfile.TemporaryDirectory() as tmp, strategy.scope():
        if resumed_from:
            log(f"resuming after epoch {resumed_from} from {work}")
            model = keras.models.load_model(_local_copy(checkpoints.last_model, tmp))
        else:
            model = task.build_network(config, info.image_shape, len(labels))
            model.compile(
                optimizer=_optimizer(config),
                loss=task.loss(config),
                metrics=task.train_metrics(len(labels)),
            )
    if resumed_from < config.epochs and not checkpoints.state.stopped:
        model.fit(
            datasets[f.TRAIN],
            validation_data=datasets[f.EVAL],
            epochs=config.epochs,
            initial_epoch=resumed_from,
            callbacks=[checkpoints, *callbacks],
            shuffle=False,  # tf.data shuffles; Keras cannot shuffle a dataset
            verbose=0,
        )
    state = checkpoints.state
    if state.best_epoch:
        with tempfile.TemporaryDirectory() as tmp:
            model.load_weights(_local_copy(checkpoints.best_weights, tmp))
        log(f"best eval {task.metric_short} {state.best:.4f} after epoch {state.best_epoch}")

    evaluated = task.evaluate(model, datasets, info, config)
    metrics = evaluated.metrics
    metrics.update(
        {
            "split": f.TEST,
            "best_epoch": state.best_epoch,
            f"eval_{task.monitor}": state.best if state.best_epoch else None,
            "counts": info.counts,
        }
    )
    log(task.summary_line(metrics))
    run_config = {
        **dataclasses.asdict(config),
        "run_id": run_id,
        "key": config.key(),
        "image_shape": list(info.image_shape),
        "labels": labels,
        **task.run_notes(config, info),
        "device": {
            "gpus": gpus,
            "strategy": strategy_name,
            "policy": policy,
            "replicas": strategy.num_replicas_in_sync,
        },
        "global_batch_size": global_batch,
        "seconds": time.time() - started,
    }
    network = evaluated.wrap(float32_copy(model, config, info, task, len(labels)))
    version = _export(
        config, info, labels, network, transform, run_config, state.history, evaluated, task
    )
    version_dir = join(config.model_dir, version)
    promotion = export.promote(config.model_dir, version, task.minimum(config))
    record = task.read_metrics(metrics)
    outcome = TrainOutcome(
        run_id,
        version,
        version_dir,
        promotion.promoted,
        promotion.reason,
        record,
        resumed_from,
        state.epoch - resumed_from,
    )
    export.write_json(
        export.run_record_uri(config.model_dir, run_id),
        {
            "run_id": run_id,
            "version": version,
            "promoted": promotion.promoted,
            "reason": promotion.reason,
            "task": task.name,
            record.metric: record.value,
            f"{record.metric}_low": record.low,
            "finished_at": _now(),
        },
    )
    if tf.io.gfile.exists(work):
        tf.io.gfile.rmtree(work)
    verdict = "promoted to latest" if promotion.promoted else "kept as a candidate, not promoted"
    log(f"exported version {version} → {version_dir}; {verdict}: {promotion.reason}")
    return outcome


def float32_copy(
    model: keras.Model, config: TrainConfig, info: DataInfo, task: Task, classes: int
) -> keras.Model:
    """The network to export: computing in float32 whatever it trained in.

    Mixed precision pays on a GPU; a scorer on CPUs would pay for float16 instead. The
    weights are float32 either way (Keras keeps float32 variables under mixed precision).
    """
    if model.compute_dtype == "float32":
        return model
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = task.build_network(config, info.image_shape, classes)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    copy.set_weights(model.get_weights())
    return copy


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _export(
    config, info, labels, model, transform, run_config, history, evaluated: Evaluation, task: Task
) -> str:
    """Writes the version in a local staging folder, then publishes it; returns its name.

    ``model`` is the network to serve (a classifier's is calibrated): ``model.keras`` and
    the SavedModel both serve what it computes.
    """
    metrics = evaluated.metrics
    created = _now()
    with tempfile.TemporaryDirectory(prefix="dicomflow-export-") as staging:
        model.save(os.path.join(staging, export.MODEL_KERAS))
        export.save_serving(
            export.ServingModule(transform, model, info.image_shape),
            os.path.join(staging, export.SAVED_MODEL),
        )
        with open(os.path.join(staging, "labels.txt"), "w") as fh:
            fh.write("".join(f"{label}\n" for label in labels))
        export.write_json(os.path.join(staging, export.METRICS_JSON), metrics)
        export.write_json(os.path.join(staging, "config.json"), run_config)
        export.write_json(os.path.join(staging, "history.json"), {"epochs": history})
        evaluated.figures(staging)

        def finalize(folder: str, version: str) -> None:
            model_json = export.model_info(
                version,
                labels,
                info.image_shape,
                task.network_name(config),
                task.explain_layer(model),
                created,
                run_config["run_id"],
                info.pixels,
                threshold=evaluated.threshold,
                operating_point=evaluated.operating_point,
                calibration=evaluated.calibration,
                task=task.name,
                class_names=evaluated.class_names,
            )
            export.write_json(os.path.join(folder, export.MODEL_JSON), model_json.to_json())
            with open(os.path.join(folder, "MODEL_CARD.md"), "w") as fh:
                fh.write(model_card(model_json, metrics, info, run_config, task))

        return export.publish(staging, config.model_dir, finalize)


def main(argv: Sequence[str] | None = None) -> int:
    """The container entry point: 0 exported (promoted or not), 2 bad arguments, 1 failure."""
    parser = argparse.ArgumentParser(
        prog="python -m models.trainer", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    config = config_from_args(parser.parse_args(argv))
    try:
        config.validate()
        assert config.data  # validate() refused it missing; narrows the type
        from models.inputs import check_data

        check_data(config.data)
    except ValueError as e:
        print(f"trainer: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        train(config)
    except Exception as e:
        # One line with the cause; the traceback where someone asked for it.
        if os.environ.get("DICOMFLOW_DEBUG") or os.environ.get("DICOMFLOW_LOG"):
            traceback.print_exc()
        print(f"trainer: error: {e} ({type(e).__name__})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
