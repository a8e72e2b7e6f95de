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
import math
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from models import calibration, evaluation, export
from models import features as f
from models.assessment import Assessment
from models.checkpoints import Checkpoints, _local_copy
from models.inputs import (
    Augment,
    DataInfo,
    class_weights,
    join,
    make_dataset,
    read_info,
    split_slices,
)
from models.layout import new_run_id
from models.model_card import RELIABILITY_PNG, model_card
from models.networks import gradcam_layer
from models.operating_point import OperatingPoint
from models.tasks import Metrics, Task, get_task
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
    if len(info.labels) < 2:
        raise ValueError(f"the train split has {len(info.labels)} label(s); a classifier needs 2")
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
        f"{info.labelled(f.TEST)} test examples, labels {list(info.labels)}, images "
        f"{'x'.join(map(str, info.image_shape))}; {gpus} GPU(s), {strategy_name} strategy, "
        f"{policy}, batch {global_batch}"
    )

    import tensorflow_transform as tft

    transform = tft.TFTransformOutput(info.transform_dir).transform_features_layer()
    weights = class_weights(info) if config.class_weights else None
    datasets = _datasets(config, info, transform, global_batch, weights)
    work = config.checkpoint_dir or join(config.model_dir, export.WORK_DIR, config.key())
    checkpoints = Checkpoints(work, config.patience, info.labelled(f.TRAIN), log)
    resumed_from = checkpoints.state.epoch
    with tempfile.TemporaryDirectory() as tmp, strategy.scope():
        if resumed_from:
            log(f"resuming after epoch {resumed_from} from {work}")
            model = keras.models.load_model(_local_copy(checkpoints.last_model, tmp))
        else:
            model = task.build_network(
                config.network,
                info.image_shape,
                len(info.labels),
                dropout=config.dropout,
                weight_decay=config.weight_decay,
                weights=config.weights,
            )
            model.compile(
                optimizer=_optimizer(config),
                loss=task.loss(),
                metrics=task.train_metrics(len(info.labels)),
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
        log(f"best eval AUC {state.best_auc:.4f} after epoch {state.best_epoch}")

    labels = list(info.labels)
    eval_ids, eval_raw = _predict(model, datasets[f.EVAL])
    test_ids, test_raw = _predict(model, datasets[f.TEST])
    assessed = task.assess(
        eval_ids,
        eval_raw,
        test_ids,
        test_raw,
        labels,
        OperatingPoint.parse(config.operating_point),
        split_slices(info, f.TEST),
        seed=config.seed,
    )
    metrics = assessed.metrics
    metrics.update(
        {
            "split": f.TEST,
            "best_epoch": state.best_epoch,
            "eval_auc": state.best_auc if state.best_epoch else None,
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
        "class_weights": list(weights) if weights else None,
        "device": {
            "gpus": gpus,
            "strategy": strategy_name,
            "policy": policy,
            "replicas": strategy.num_replicas_in_sync,
        },
        "global_batch_size": global_batch,
        "seconds": time.time() - started,
    }
    network = calibration.calibrated_network(
        float32_copy(model, config, info, task), assessed.calibration
    )
    version = _export(config, info, network, transform, run_config, state.history, assessed, task)
    version_dir = join(config.model_dir, version)
    promotion = export.promote(config.model_dir, version, config.min_auc)
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
    model: keras.Model, config: TrainConfig, info: DataInfo, task: Task
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
        copy = task.build_network(
            config.network,
            info.image_shape,
            len(info.labels),
            dropout=config.dropout,
            weight_decay=config.weight_decay,
        )
    finally:
        keras.mixed_precision.set_global_policy(policy)
    copy.set_weights(model.get_weights())
    return copy


def _datasets(config, info: DataInfo, transform, batch: int, weights) -> dict[str, tf.data.Dataset]:
    example_bytes = math.prod(info.image_shape) * 4
    budget = config.cache_mb * 2**20

    def fits(split: str) -> bool:
        return info.labelled(split) * example_bytes <= budget

    return {
        f.TRAIN: make_dataset(
            info,
            f.TRAIN,
            transform,
            batch,
            training=True,
            augment=Augment.parse(config.augment),
            class_weights=weights,
            seed=config.seed,
            cache=fits(f.TRAIN),
        ),
        f.EVAL: make_dataset(info, f.EVAL, transform, batch, cache=fits(f.EVAL)),
        f.TEST: make_dataset(info, f.TEST, transform, batch),
    }


def _predict(model: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    ids, probabilities = [], []
    for image, onehot in dataset:
        probabilities.append(np.asarray(model(image, training=False), dtype=np.float32))
        ids.append(np.argmax(onehot.numpy(), axis=1))
    return np.concatenate(ids), np.concatenate(probabilities)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _export(
    config, info, model, transform, run_config, history, assessed: Assessment, task: Task
) -> str:
    """Writes the version in a local staging folder, then publishes it; returns its name.

    ``model`` is the calibrated network: ``model.keras`` and the SavedModel both serve the
    calibrated probabilities.
    """
    labels = list(info.labels)
    positive = export.positive_label(labels)
    k = labels.index(positive) if positive is not None else None
    metrics = assessed.metrics
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
        evaluation.plot_curves(
            assessed.test_ids,
            assessed.test_calibrated,
            labels,
            positive,
            os.path.join(staging, "roc.png"),
            os.path.join(staging, "pr.png"),
        )
        calibration.plot_reliability(
            assessed.test_ids,
            assessed.test_raw,
            assessed.test_calibrated,
            k,
            os.path.join(staging, RELIABILITY_PNG),
        )

        def finalize(folder: str, version: str) -> None:
            model_json = export.model_info(
                version,
                labels,
                info.image_shape,
                config.network,
                gradcam_layer(model),
                created,
                run_config["run_id"],
                info.pixels,
                threshold=assessed.threshold,
                operating_point=assessed.operating_point,
                calibration=assessed.calibration.describe(),
                task=task.name,
            )
            export.write_json(os.path.join(folder, export.MODEL_JSON), model_json.to_json())
            with open(os.path.join(folder, "MODEL_CARD.md"), "w") as fh:
                fh.write(model_card(model_json, metrics, info, run_config))

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
