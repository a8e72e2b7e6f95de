"""The interface every task implements (classification, segmentation), and the base that
holds what both state the same way."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from models.tasks.records import Metrics, finite_or_none

if TYPE_CHECKING:
    import keras
    import pyarrow as pa
    import tensorflow as tf

    from models.inputs import DataInfo
    from models.tasks.records import ModelInfo
    from models.train_config import TrainConfig


def _same(network: keras.Model) -> keras.Model:
    return network


def _nothing(folder: str) -> None:
    return None


@dataclass
class Evaluation:
    """What a task's evaluation gives the trainer to export.

    metrics: ``metrics.json`` (the task's figures on test, with intervals).
    threshold, operating_point, calibration, class_names: ``model.json``'s fields of the
        same names.
    wrap: what the exported network adds to the trained one (a classifier's calibration).
    figures: writes the task's plots into the version's staging folder.
    """

    metrics: dict
    threshold: float | None = None
    operating_point: str | None = None
    calibration: dict | None = None
    class_names: dict[str, str] | None = None
    wrap: Callable[[keras.Model], keras.Model] = _same
    figures: Callable[[str], None] = field(default=_nothing)


class Task(Protocol):
    """One task: what the trainer, the gate and the scorer need and must not hard-code.

    Attributes:
        name: the ``--task`` value and ``model.json``'s ``task``.
        metric: the promotion metric's key in ``metrics.json``.
        metric_title: the same for people ("test ROC AUC"); metric_short: "AUC".
        monitor: the compiled metric early stopping watches on eval ("auc", "dice");
            ``metrics.json`` records its best value as ``eval_<monitor>``.
        purpose: what the model is for, in the model card's words.
        limitations: what the card says of the figures' limits, beyond the split.
        score_schema: the Arrow schema of the score tables.
    """

    name: str
    purpose: str
    limitations: str
    metric: str
    metric_title: str
    metric_short: str
    monitor: str

    @property
    def score_schema(self) -> pa.Schema: ...

    def feature_spec(self) -> dict[str, Any]:
        """The raw TFRecord features ingest writes and the trainer reads."""
        ...

    def classes(self, info: DataInfo) -> list[str]:
        """The output columns' names (model.json ``labels``), from the ingest output.

        Raises:
            ValueError: (one line) data this task cannot learn from.
        """
        ...

    def check(self, config: TrainConfig) -> None:
        """Raises ValueError (one line) for an argument this task does not take."""
        ...

    def build_network(
        self, config: TrainConfig, image_shape: tuple[int, int, int], classes: int
    ) -> keras.Model:
        """The network, uncompiled, computing in the current dtype policy."""
        ...

    def network_name(self, config: TrainConfig) -> str:
        """``model.json``'s ``network``."""
        ...

    def explain_layer(self, model: keras.Model) -> str | None:
        """The layer Grad-CAM looks at (``model.json``'s ``gradcam_layer``), or None."""
        ...

    def run_notes(self, config: TrainConfig, info: DataInfo) -> dict[str, Any]:
        """What ``config.json`` records of the task's own training choices."""
        ...

    def training_text(self, run_config: Mapping[str, Any]) -> str:
        """The model card's words for those choices (``run_notes`` in ``config.json``)."""
        ...

    def loss(self, config: TrainConfig) -> keras.losses.Loss: ...

    def train_metrics(self, classes: int) -> list[keras.metrics.Metric]:
        """Compiled into the model; the one named ``monitor`` is what early stopping watches."""
        ...

    def datasets(
        self, config: TrainConfig, info: DataInfo, transform: Any, batch: int
    ) -> dict[str, tf.data.Dataset]:
        """Train (shuffled, augmented), eval and test batches of (input, target[, weight])."""
        ...

    def evaluate(
        self,
        model: keras.Model,
        datasets: Mapping[str, tf.data.Dataset],
        info: DataInfo,
        config: TrainConfig,
    ) -> Evaluation:
        """Evaluation on test, with 95 % intervals, after what the task fits on eval."""
        ...

    def minimum(self, config: TrainConfig) -> float:
        """The promotion gate's least value of ``metric``."""
        ...

    def read_metrics(self, details: Mapping[str, Any]) -> Metrics:
        """``metrics.json`` as the typed record (the promotion metric and its interval)."""
        ...

    def summary_line(self, details: Mapping[str, Any]) -> str:
        """The trainer's one-line account of the test split."""
        ...

    def card_figures(self, model_json: ModelInfo, details: Mapping[str, Any]) -> list[str]:
        """The model card's sections of test figures (Markdown lines)."""
        ...


@dataclass(frozen=True, kw_only=True)
class TaskBase(abc.ABC):
    """The ``Task`` attributes (described there) as fields, and ``read_metrics`` over
    ``metric_interval``: where a task's ``metrics.json`` keeps its promotion metric's 95 %
    interval is all that differs. A task subclasses it, adds the protocol's methods, and is
    constructed once, as its module's ``TASK``.
    """

    name: str
    metric: str
    metric_title: str
    metric_short: str
    monitor: str
    purpose: str
    limitations: str
    score_schema: pa.Schema

    @abc.abstractmethod
    def metric_interval(self, details: Mapping[str, Any]) -> tuple[Any, Any]:
        """The promotion metric's (low, high) as ``metrics.json`` holds them."""

    def read_metrics(self, details: Mapping[str, Any]) -> Metrics:
        low, high = self.metric_interval(details)
        return Metrics(
            task=self.name,
            metric=self.metric,
            value=finite_or_none(details.get(self.metric)),
            low=finite_or_none(low),
            high=finite_or_none(high),
            details=dict(details),
        )
