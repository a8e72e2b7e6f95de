"""The model directory: versioned exports, the ``latest`` pointer, the promotion gate, loading.

Layout under a model dir (local or ``gs://``)::

    <model-dir>/1/, 2/, ...     one folder per exported version, never overwritten
        saved_model/            serving_default: image (raw uint8 bytes) -> probabilities
        model.keras             the calibrated network (input: the normalized image)
        model.json              version, labels, positive_label, threshold, calibration, ...
        labels.txt metrics.json config.json history.json MODEL_CARD.md roc.png pr.png
        reliability.png
    <model-dir>/latest          text: the promoted version's name
    <model-dir>/_runs/<run>.json  what each training run did (version, promoted, why)
    <model-dir>/_work/<key>/    checkpoints of an unfinished run (see models.trainer)

Scoring needs only ``resolve_model`` and ``load_serving``: TensorFlow, nothing from ingest.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from models import features as f
from models.inputs import join, raw_features, to_image
from models.tasks import DEFAULT_TASK, Metrics, ModelInfo, Task, get_task
from models.tasks.classification import positive_label

LATEST = "latest"
RUNS_DIR = "_runs"
WORK_DIR = "_work"
SAVED_MODEL = "saved_model"
MODEL_KERAS = "model.keras"
MODEL_JSON = "model.json"
METRICS_JSON = "metrics.json"
SIGNATURE = "serving_default"
INPUT = "image"
OUTPUT = "probabilities"


class ServingModule(tf.Module):
    """Raw image bytes → the ingest transform graph → the network → probabilities.

    Both the transform layer and the network are tracked, so ``tf.saved_model.save``
    writes the transform's graph and vocabulary assets into the exported model.
    """

    def __init__(self, transform_layer, network, image_shape: tuple[int, int, int]):
        super().__init__()
        self.transform = transform_layer
        self.network = network
        height, width, channels = image_shape  # a tuple, never a tracked list, on the module
        self._image_shape = (height, width, channels)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT)])
    def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        transformed = self.transform(raw_features(image))
        probabilities = self.network(to_image(transformed, self._image_shape), training=False)
        return {OUTPUT: tf.cast(probabilities, tf.float32)}


def save_serving(module: ServingModule, path: str) -> None:
    tf.saved_model.save(module, path, signatures={SIGNATURE: module.serve})


@dataclass
class ServingModel:
    """A loaded version: call it with raw image bytes, read its ``model.json`` in ``info``."""

    version_dir: str
    info: ModelInfo
    signature: Callable[..., dict[str, tf.Tensor]]
    _loaded: Any  # keeps the SavedModel's variables alive as long as the signature is used

    def predict(self, images: list[bytes] | tf.Tensor) -> np.ndarray:
        """Probabilities [len(images), classes], columns in ``info.labels`` order."""
        return self.signature(**{INPUT: tf.convert_to_tensor(images, tf.string)})[OUTPUT].numpy()

    def normalize(self, images: list[bytes]) -> np.ndarray:
        """The network's input for raw images, float32 [len(images), H, W, C].

        The ingest transform graph saved inside the model (the layer ``serve`` applies),
        so ``model.keras`` on this input gives what ``predict`` gives.
        """
        layer = self._loaded.transform  # the restored tf.Transform layer of ServingModule
        raw = raw_features(tf.convert_to_tensor(images, tf.string))
        transformed, _ = layer.call_and_return_all_conditional_losses(raw)
        return to_image(transformed, self.info.image_shape).numpy()


def load_serving(version_dir: str) -> ServingModel:
    """Loads ``<version>/saved_model`` with plain TensorFlow, and its ``model.json``."""
    loaded = tf.saved_model.load(join(version_dir, SAVED_MODEL))
    info = ModelInfo.from_json(read_json(join(version_dir, MODEL_JSON)))
    return ServingModel(version_dir, info, loaded.signatures[SIGNATURE], loaded)


def read_json(uri: str) -> dict:
    with tf.io.gfile.GFile(uri) as fh:
        return json.load(fh)


def write_json(uri: str, data: dict) -> None:
    """Strict JSON: an undefined figure (NaN, infinity) is written as null."""
    write_text(uri, json.dumps(_finite(data), indent=2, sort_keys=True, allow_nan=False) + "\n")


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_text(uri: str, text: str) -> None:
    """Writes a whole file: a rename locally, one object upload on gs:// (both atomic)."""
    if is_local(uri):
        tmp = f"{_local(uri)}.tmp-{uuid.uuid4().hex[:8]}"
        os.makedirs(os.path.dirname(tmp) or ".", exist_ok=True)
        with open(tmp, "w") as fh:
            fh.write(text)
        os.replace(tmp, _local(uri))
    else:
        with tf.io.gfile.GFile(uri, "w") as fh:
            fh.write(text)


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local(uri: str) -> str:
    return uri.removeprefix("file://")


def list_versions(model_dir: str) -> list[int]:
    """Exported versions, ascending (folders whose names are plain decimal numbers)."""
    if not tf.io.gfile.isdir(model_dir):
        return []
    names = (name.rstrip("/") for name in tf.io.gfile.listdir(model_dir))
    return sorted(int(n) for n in names if n.isdecimal() and n == str(int(n)))


def latest_version(model_dir: str) -> str | None:
    """The promoted version's name, or None when nothing was promoted."""
    uri = join(model_dir, LATEST)
    if not tf.io.gfile.exists(uri):
        return None
    with tf.io.gfile.GFile(uri) as fh:
        return fh.read().strip() or None


def publish(staging: str, model_dir: str, finalize: Callable[[str, str], None]) -> str:
    """Moves a finished local export into the next free version folder; returns its name.

    ``finalize(staging, version)`` writes the files that name the version (``model.json``,
    the model card) just before the move. Two runs exporting at once never share a
    version: locally the folder appears by one atomic rename, which fails if another run
    took the number first; on gs:// the number is claimed by creating
    ``<version>/.claim`` only if it does not exist (a storage precondition) before the
    files are copied.
    """
    for _ in range(100):
        version = str(max(list_versions(model_dir), default=0) + 1)
        target = join(model_dir, version)
        finalize(staging, version)
        if is_local(model_dir):
            os.makedirs(_local(model_dir), exist_ok=True)
            scratch = join(_local(model_dir), f".publish-{uuid.uuid4().hex}")
            shutil.copytree(staging, scratch)
            os.chmod(scratch, 0o755)  # the staging folder was private (mkdtemp)
            try:
                os.rename(scratch, _local(target))  # fails onto an existing (non-empty) folder
            except OSError:
                shutil.rmtree(scratch, ignore_errors=True)
                continue
            return version
        if _claim_gcs(join(target, ".claim")):
            _copy_tree(staging, target)
            return version
    raise RuntimeError(f"could not claim a new version under {model_dir}")


def _claim_gcs(uri: str) -> bool:
    """Creates the object only if it does not exist; False if another run has it."""
    import google.cloud.storage as storage  # mypy: google.cloud is a partly typed namespace
    from google.api_core.exceptions import PreconditionFailed

    bucket, _, name = uri.removeprefix("gs://").partition("/")
    blob = storage.Client().bucket(bucket).blob(name)
    try:
        blob.upload_from_string(b"", if_generation_match=0)
    except PreconditionFailed:
        return False
    return True


def _copy_tree(source: str, target: str) -> None:
    for folder, _, files in tf.io.gfile.walk(source):
        relative = os.path.relpath(folder, source)
        destination = target if relative == "." else join(target, relative)
        tf.io.gfile.makedirs(destination)
        for name in files:
            tf.io.gfile.copy(join(folder, name), join(destination, name), overwrite=False)


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    reason: str


def version_task(version_dir: str) -> Task:
    """The task a version was trained for (``model.json``; a classifier if it says none)."""
    return get_task(read_json(join(version_dir, MODEL_JSON)).get("task") or DEFAULT_TASK)


def version_metrics(version_dir: str, task: Task | None = None) -> Metrics:
    """The version's ``metrics.json`` as its task reads it (the promotion metric, its
    95 % interval, the rest as details)."""
    task = task or version_task(version_dir)
    return task.read_metrics(read_json(join(version_dir, METRICS_JSON)))


def promote(model_dir: str, version: str, minimum: float) -> Promotion:
    """The gate: ``version`` becomes ``latest`` only if its task's promotion metric on the
    test split (ROC AUC for a classifier) is at least ``minimum`` and the *lower bound*
    of its 95 % confidence interval is at least the current latest's point estimate;
    otherwise it stays a candidate.

    A point estimate on a few dozen test images moves by several hundredths between two
    trainings of the same model; comparing point estimates would swap the served model on
    noise (and with it every score downstream). A candidate replaces latest only when the
    evidence says it is at least as good. A latest of another task is never replaced.

    Returns:
        Whether it was promoted, and why (one line).
    """
    folder = join(model_dir, version)
    task = version_task(folder)
    metrics, title = version_metrics(folder, task), task.metric_title
    if not metrics.defined:
        return Promotion(False, f"its {title} is undefined (the test split has one class)")
    value, low = float(metrics.value or 0.0), metrics.lower_bound
    if value < minimum:
        return Promotion(False, f"its {title} {value:.4f} is below the minimum {minimum:.4f}")
    current = latest_version(model_dir)
    why = f"{title} {value:.4f} >= minimum {minimum:.4f}"
    if current is not None and current != version:
        current_task = version_task(join(model_dir, current))
        if current_task.name != task.name:
            return Promotion(
                False, f"latest (version {current}) is a {current_task.name} model, not {task.name}"
            )
        current_metrics = version_metrics(join(model_dir, current), current_task)
        current_value = float(current_metrics.value or 0) if current_metrics.defined else math.nan
        if low < current_value:
            return Promotion(
                False,
                f"the lower 95% bound of its {title}, {low:.4f} ({task.metric_short} "
                f"{value:.4f}), is below latest (version {current}: {current_value:.4f})",
            )
        why += f"; its lower 95% bound {low:.4f} >= latest (version {current}: {current_value:.4f})"
    write_text(join(model_dir, LATEST), f"{version}\n")
    return Promotion(True, why)


def resolve_model(uri: str) -> str:
    """``<model-dir>``, ``<model-dir>/latest`` or ``<model-dir>/<version>`` → the version folder.

    Raises:
        ValueError: (one line) nothing promoted, or no exported model there.
    """
    uri = uri.rstrip("/")
    model_dir, _, last = uri.rpartition("/")
    if last == LATEST:
        version = latest_version(model_dir)
        if version is None:
            raise ValueError(f"no model promoted in {model_dir} ({uri} does not exist)")
        uri = join(model_dir, version)
    elif not tf.io.gfile.exists(join(uri, MODEL_JSON)):
        version = latest_version(uri)
        if version is None:
            raise ValueError(f"{uri} holds neither an exported model nor a promoted version")
        uri = join(uri, version)
    if not tf.io.gfile.exists(join(uri, SAVED_MODEL, "saved_model.pb")):
        raise ValueError(f"no exported model at {uri}")
    return uri


def run_record_uri(model_dir: str, run_id: str) -> str:
    return join(model_dir, RUNS_DIR, f"{run_id}.json")


def read_run_record(model_dir: str, run_id: str) -> dict | None:
    """What training run ``run_id`` wrote when it finished, or None if it did not."""
    uri = run_record_uri(model_dir, run_id)
    return read_json(uri) if tf.io.gfile.exists(uri) else None


def model_info(
    version: str,
    labels: list[str],
    image_shape: tuple[int, int, int],
    network: str,
    gradcam_layer: str | None,
    created_at: str,
    run_id: str,
    pixels: dict | None = None,
    *,
    threshold: float | None = None,
    operating_point: str | None = None,
    calibration: dict | None = None,
    task: str = DEFAULT_TASK,
    class_names: dict[str, str] | None = None,
) -> ModelInfo:
    """``model.json`` of a new version (see ``ModelInfo``)."""
    height, width, channels = image_shape
    return ModelInfo(
        version=version,
        labels=tuple(labels),
        positive_label=positive_label(labels) if task == DEFAULT_TASK else None,
        image_height=height,
        image_width=width,
        image_channels=channels,
        network=network,
        gradcam_layer=gradcam_layer,
        created_at=created_at,
        run_id=run_id,
        signature={"name": SIGNATURE, "input": INPUT, "output": OUTPUT},
        raw_image=f"{f.IMAGE}: uint8 bytes, height x width x channels, row-major",
        pixels=pixels,
        threshold=threshold,
        operating_point=operating_point,
        calibration=calibration,
        task=task,
        class_names=class_names,
    )
