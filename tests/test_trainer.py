"""The training job on a real ingest output: train, evaluate, export, gate, resume."""

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from models import calibration, checkpoints, export, inputs, trainer
from models import features as f
from models.tasks import get_task

EPOCHS = 15
TASK = get_task("classification")


@pytest.fixture(scope="module")
def trained(train_data, tmp_path_factory):
    # A private copy of the shared ingest output: a test here hides its transform folder.
    data = tmp_path_factory.mktemp("data") / "ingest"
    shutil.copytree(train_data, data)
    model_dir = tmp_path_factory.mktemp("models")
    config = trainer.TrainConfig(
        data=str(data), model_dir=str(model_dir), epochs=EPOCHS, patience=EPOCHS
    )
    lines = []
    return config, trainer.train(config, log=lines.append), lines


def raw_test_images(data) -> list[bytes]:
    """The test split's raw image bytes exactly as ingest wrote them, in file order."""
    spec = {f.IMAGE: f.raw_feature_spec()[f.IMAGE]}
    records = tf.data.TFRecordDataset(inputs.shard_files(str(data), "test"), "GZIP")
    return [tf.io.parse_single_example(r, spec)[f.IMAGE].numpy() for r in records]


def test_the_cnn_clearly_beats_chance_on_the_test_split(trained):
    config, outcome, lines = trained
    record = outcome.metrics
    assert record.task == "classification" and record.metric == "roc_auc"
    assert record.value is not None and record.value >= 0.8, record
    assert record.low is not None and record.low <= record.value <= (record.high or 1.0)
    assert record.details["pr_auc"] > 0.6 and record.details["accuracy"] > 0.65
    assert outcome.version == "1" and outcome.promoted
    assert (export.resolve_model(config.model_dir)) == f"{config.model_dir}/1"
    assert sum(line.startswith("epoch ") for line in lines) == EPOCHS
    assert any(line.startswith("test: ROC AUC") for line in lines)


def test_the_version_folder_holds_the_contract(trained, train_data):
    config, outcome, _ = trained
    version = Path(outcome.version_dir)
    names = {p.name for p in version.iterdir()}
    assert names >= {
        "saved_model", "model.keras", "model.json", "labels.txt", "metrics.json",
        "config.json", "history.json", "MODEL_CARD.md", "roc.png", "pr.png", "reliability.png",
    }  # fmt: skip
    info = json.loads((version / "model.json").read_text())
    labels = (version / "labels.txt").read_text().split()
    assert info["labels"] == labels and sorted(labels) == ["0", "1"]
    assert info["positive_label"] == "1" and info["version"] == "1"
    assert (info["image_height"], info["image_width"], info["image_channels"]) == (64, 64, 1)
    assert info["network"] == "cnn" and info["gradcam_layer"] == "block4_pool"
    metrics = json.loads((version / "metrics.json").read_text())
    test_count = inputs.read_info(str(train_data)).labelled("test")
    assert metrics["examples"] == test_count == sum(map(sum, metrics["confusion_matrix"]))
    history = json.loads((version / "history.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    assert all({"loss", "auc", "val_loss", "val_auc"} <= set(h) for h in history)
    saved = json.loads((version / "config.json").read_text())
    assert saved["epochs"] == EPOCHS and saved["device"]["policy"] == "float32"
    card = (version / "MODEL_CARD.md").read_text()
    assert "## Intended use" in card and f"{metrics['ci']['roc_auc']['value']:.3f}" in card
    # The operating point, chosen on eval, is the one model.json serves and metrics use.
    assert info["threshold"] == metrics["threshold"] == metrics["operating_point"]["threshold"]
    assert info["operating_point"] == "youden" and 0 < info["threshold"] < 1
    assert info["calibration"]["method"] == "platt" == metrics["calibration"]["method"]
    assert f"predicted at a score of {info['threshold']:.4f} or more" in card
    for name in ("roc_auc", "accuracy", "recall", "specificity", "f1", "precision"):
        ci = metrics["ci"][name]
        assert ci["low"] <= ci["value"] <= ci["high"], name
    assert metrics["accuracy"] == pytest.approx(metrics["ci"]["accuracy"]["value"])
    cal = metrics["calibration"]["test"]
    assert {"ece_before", "ece_after", "brier_before", "brier_after"} <= set(cal)
    slices = metrics["slices"]
    assert set(slices) == {"modality", "manufacturer", "body_part_examined", "label_source"}
    assert sum(r["examples"] for r in slices["modality"]) == test_count
    assert "## Slices (test split)" in card and "![Reliability diagram](reliability.png)" in card
    for png in ("roc.png", "pr.png", "reliability.png"):
        assert (version / png).read_bytes()[:4] == b"\x89PNG"
    record = export.read_run_record(config.model_dir, outcome.run_id)
    assert record["version"] == "1" and record["promoted"] is True
    assert not list((version.parent / export.WORK_DIR).iterdir())  # checkpoints cleaned up


def test_serving_takes_raw_ingest_bytes_and_sees_what_training_saw(trained, train_data):
    _, outcome, _ = trained
    served = export.load_serving(outcome.version_dir)
    images = raw_test_images(train_data)
    probabilities = served.predict(images)
    assert probabilities.shape == (len(images), 2) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # The training input path (tf.data + transform layer) into the bare network gives
    # the same numbers as the exported model on raw bytes.
    info = inputs.read_info(str(train_data))
    layer = tft.TFTransformOutput(info.transform_dir).transform_features_layer()
    network = keras.models.load_model(f"{outcome.version_dir}/model.keras")
    batches = inputs.make_dataset(info, "test", layer, 32)
    direct = np.concatenate([network(x, training=False).numpy() for x, _ in batches])
    np.testing.assert_allclose(probabilities, direct, atol=1e-6)


def test_the_served_probabilities_are_the_calibrated_ones(trained, train_data):
    _, outcome, _ = trained
    info = json.loads((Path(outcome.version_dir) / "model.json").read_text())
    network = keras.models.load_model(f"{outcome.version_dir}/model.keras")
    raw_network = keras.Model(network.input, network.get_layer("calibration").input)
    data = inputs.read_info(str(train_data))
    layer = tft.TFTransformOutput(data.transform_dir).transform_features_layer()
    x = np.concatenate([x.numpy() for x, _ in inputs.make_dataset(data, "test", layer, 32)])
    raw = raw_network(x, training=False).numpy()
    c = info["calibration"]
    expected = calibration.Calibration(c["method"], c["scale"], tuple(c["bias"])).apply(raw)
    served = export.load_serving(outcome.version_dir).predict(raw_test_images(train_data))
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert not np.allclose(raw, expected, atol=1e-3)  # calibration changed something


def test_the_export_loads_in_a_fresh_process_without_the_ingest_output(trained, tmp_path):
    config, outcome, _ = trained
    train_data = Path(config.data)
    copy = tmp_path / "elsewhere" / "7"
    shutil.copytree(outcome.version_dir, copy)
    images = raw_test_images(train_data)[:5]
    (tmp_path / "images.bin").write_bytes(b"".join(images))
    expected = export.load_serving(outcome.version_dir).predict(images)
    child = (
        "import json, sys, tensorflow as tf\n"
        "data = open(sys.argv[2], 'rb').read(); n = 64 * 64\n"
        "images = [data[i:i + n] for i in range(0, len(data), n)]\n"
        "serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
        "out = serve(image=tf.constant(images))['probabilities'].numpy()\n"
        "print(json.dumps(out.tolist()))\n"
    )
    hidden = train_data.parent / "transform-hidden"
    (train_data / "transform").rename(hidden)  # the model must not reach back for it
    try:
        done = subprocess.run(
            [sys.executable, "-c", child, str(copy / "saved_model"), str(tmp_path / "images.bin")],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        hidden.rename(train_data / "transform")
    assert done.returncode == 0, done.stderr[-2000:]
    got = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(got, expected, atol=1e-6)


class Crash(keras.callbacks.Callback):
    """Fails the job after an epoch, as a preempted machine would."""

    def __init__(self, after_epoch: int):
        super().__init__()
        self.after_epoch = after_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.after_epoch:
            self.weights = [w.numpy().copy() for w in self.model.weights]
            self.steps = int(self.model.optimizer.iterations)
            raise RuntimeError("simulated crash")


class Start(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = [w.numpy().copy() for w in self.model.weights]
        self.steps = int(self.model.optimizer.iterations)


def test_a_restarted_job_resumes_from_the_last_epoch(train_data, tmp_path):
    config = trainer.TrainConfig(
        data=str(train_data), model_dir=str(tmp_path / "m"), epochs=3, patience=10, seed=2
    )
    crash, lines = Crash(after_epoch=2), []
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.train(config, callbacks=[crash], log=lines.append)
    work = tmp_path / "m" / export.WORK_DIR / config.key()
    assert json.loads((work / checkpoints.STATE_JSON).read_text())["epoch"] == 2
    assert export.list_versions(config.model_dir) == []

    start = Start()
    outcome = trainer.train(config, callbacks=[start], log=lines.append)
    assert "resuming after epoch 2 from" in "\n".join(lines)
    assert (outcome.resumed_from_epoch, outcome.epochs_trained) == (2, 1)
    assert start.steps == crash.steps > 0  # the optimizer state came back too
    for got, want in zip(start.weights, crash.weights, strict=True):
        np.testing.assert_array_equal(got, want)
    history = json.loads((tmp_path / "m" / "1" / "history.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert not work.exists()


def test_early_stopping_survives_a_restart(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    model.stop_training = False  # as fit() sets it
    logged = []

    def epochs(checkpoints, aucs, first=0):
        checkpoints.set_model(model)
        for epoch, auc in enumerate(aucs, start=first):
            checkpoints.on_epoch_begin(epoch)
            checkpoints.on_epoch_end(epoch, {"loss": 1.0, "auc": 0.5, "val_auc": auc})

    first = checkpoints.Checkpoints(str(tmp_path), 3, 10, logged.append)
    epochs(first, [0.5, 0.7, 0.6])
    assert (first.state.best_epoch, first.state.wait, model.stop_training) == (2, 1, False)
    resumed = checkpoints.Checkpoints(str(tmp_path), 3, 10, logged.append)  # a new process
    assert (resumed.state.epoch, resumed.state.best) == (3, pytest.approx(0.7))
    epochs(resumed, [0.65, math.nan], first=3)
    assert resumed.state.stopped and model.stop_training
    assert resumed.state.best_epoch == 2 and len(resumed.state.history) == 5
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["best-0002.weights.h5", "epoch-0005.keras", "state.json"]
    assert "early stop" in logged[-1]


def test_config_round_trips_through_the_command_line():
    config = trainer.TrainConfig(
        data="gs://b/in", model_dir="gs://b/m", epochs=3, class_weights=False, augment="none"
    )
    parser = argparse.ArgumentParser()
    trainer.add_arguments(parser)
    assert trainer.config_from_args(parser.parse_args(config.to_argv())) == config
    assert "--no-class-weights" in config.to_argv() and "--weights" not in config.to_argv()
    same_training = trainer.TrainConfig(
        **{**config.__dict__, "run_id": "x", "min_auc": 0.9, "operating_point": "specificity=0.9"}
    )
    assert same_training.key() == config.key()
    assert trainer.TrainConfig(**{**config.__dict__, "learning_rate": 0.01}).key() != config.key()


@pytest.mark.parametrize(
    ("gpus", "mixed", "plan"),
    [
        (0, "auto", ("default", "float32")),
        (1, "auto", ("mirrored", "mixed_float16")),
        (4, "off", ("mirrored", "float32")),
        (0, "on", ("default", "mixed_float16")),
    ],
)
def test_device_plan(gpus, mixed, plan):
    assert trainer.device_plan(gpus, mixed) == plan


def test_sgd_has_momentum():
    config = trainer.TrainConfig(data="d", model_dir="m", optimizer="sgd", momentum=0.8)
    optimizer = trainer._optimizer(config)
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.momentum == 0.8


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data": None}, "--data is required"),
        ({"epochs": 0}, "--epochs"),
        ({"min_auc": 1.5}, "--min-auc"),
        ({"augment": "blur"}, "augmentation"),
        ({"network": "vgg"}, "--network"),
        ({"operating_point": "sensitivity=1.5"}, "--operating-point"),
    ],
)
def test_bad_configs_are_refused(change, message):
    config = trainer.TrainConfig(**{"data": "d", "model_dir": "m", **change})
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_entry_point_refuses_a_folder_that_is_not_an_ingest_output(tmp_path, capsys):
    assert trainer.main(["--data", str(tmp_path), "--model-dir", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"trainer: error: {tmp_path} is not an ingest output: no transform/ graph"]


def test_a_mixed_precision_network_is_exported_in_float32():
    config = trainer.TrainConfig(data="d", model_dir="m")
    info = inputs.DataInfo("d", (32, 32, 1), ("0", "1"), {})
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = TASK.build_network(config, (32, 32, 1), 2)
        exported = trainer.float32_copy(mixed, config, info, TASK, 2)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert mixed.get_layer("block1_conv").compute_dtype == "float16"
    assert {layer.compute_dtype for layer in exported.layers} == {"float32"}
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(exported(x), mixed(x), atol=2e-2)
    float32 = TASK.build_network(config, (32, 32, 1), 2)
    assert trainer.float32_copy(float32, config, info, TASK, 2) is float32
