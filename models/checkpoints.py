"""Checkpoints of a training job: the model with its optimizer, the best weights and the
state after every epoch, with early stopping kept in the state so a resumed job stops
where an uninterrupted one would have."""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import tensorflow as tf

from models import export
from models.inputs import (
    join,
)

STATE_JSON = "state.json"


@dataclass
class _State:
    epoch: int = 0  # epochs finished
    best: float = -math.inf  # the best eval value of the monitored metric
    best_epoch: int = 0
    wait: int = 0
    stopped: bool = False
    history: list = field(default_factory=list)


class Checkpoints(keras.callbacks.Callback):
    """After every epoch: the model with its optimizer, the best weights, the state.

    Also early stopping on the eval value of the task's ``monitor`` metric (AUC, Dice),
    kept in the state so a resumed job stops where an uninterrupted one would have. Files
    are written before ``state.json`` names them, so a crash at any point leaves a
    consistent checkpoint.
    """

    def __init__(
        self,
        directory: str,
        patience: int,
        train_examples: int,
        log: Callable,
        monitor: str = "auc",
        title: str = "AUC",
    ):
        super().__init__()
        self.directory = directory
        self.patience = patience
        self.train_examples = train_examples
        self.log = log
        self.monitor, self.title = monitor, title
        self.state = _State()
        uri = join(directory, STATE_JSON)
        if tf.io.gfile.exists(uri):
            saved = export.read_json(uri)
            self.state = _State(**{**saved, "best": saved["best"] or -math.inf})

    @property
    def last_model(self) -> str:
        return join(self.directory, f"epoch-{self.state.epoch:04d}.keras")

    @property
    def best_weights(self) -> str:
        return join(self.directory, f"best-{self.state.best_epoch:04d}.weights.h5")

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._started
        logs = {k: float(v) for k, v in (logs or {}).items()}
        state, previous = self.state, (self.last_model, self.best_weights)
        state.epoch = epoch + 1
        value = logs.get(f"val_{self.monitor}", math.nan)
        improved = value > state.best  # NaN (one class in eval) never improves
        if improved:
            state.best, state.best_epoch, state.wait = value, state.epoch, 0
            _save(self.model, self.best_weights, weights_only=True)
        else:
            state.wait += 1
        state.stopped = state.wait >= self.patience
        rate = self.train_examples / seconds if seconds else 0.0
        state.history.append(
            {"epoch": state.epoch, **logs, "seconds": seconds, "images_per_second": rate}
        )
        _save(self.model, self.last_model)
        export.write_json(join(self.directory, STATE_JSON), dataclasses.asdict(state))
        for old in previous:
            if old not in (self.last_model, self.best_weights) and tf.io.gfile.exists(old):
                tf.io.gfile.remove(old)
        loss, train_value = logs.get("loss", math.nan), logs.get(self.monitor, math.nan)
        name = self.monitor
        self.log(
            f"epoch {state.epoch}: loss {loss:.4f} {name} {train_value:.4f}"
            f" | eval loss {logs.get('val_loss', math.nan):.4f} {name} {value:.4f}"
            f"{' (best)' if improved else ''} | {seconds:.1f} s, {rate:.0f} images/s"
        )
        if state.stopped:
            self.log(f"early stop: eval {self.title} has not improved for {self.patience} epochs")
            self.model.stop_training = True


def _save(model: keras.Model, uri: str, weights_only: bool = False) -> None:
    """Keras writes local files; a gs:// checkpoint goes through a local copy."""
    with tempfile.TemporaryDirectory() as tmp:
        local = uri if export.is_local(uri) else os.path.join(tmp, os.path.basename(uri))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        model.save_weights(local) if weights_only else model.save(local)
        if local != uri:
            tf.io.gfile.copy(local, uri, overwrite=True)


def _local_copy(uri: str, tmp: str) -> str:
    if export.is_local(uri):
        return uri
    local = os.path.join(tmp, os.path.basename(uri))
    tf.io.gfile.copy(uri, local, overwrite=True)
    return local
