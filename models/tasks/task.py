"""The interface every task implements (classification, and the tasks that follow it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import keras
    import numpy as np
    import pyarrow as pa

    from models.assessment import Assessment
    from models.operating_point import OperatingPoint
    from models.tasks.records import Metrics


class Task(Protocol):
    """One task: what the trainer, the gate and the scorer need and must not hard-code.

    Attributes:
        name: the ``--task`` value and ``model.json``'s ``task``.
        metric: the promotion metric's key in ``metrics.json``.
        metric_title: the same for people ("test ROC AUC"); metric_short: "AUC".
        score_schema: the Arrow schema of the score tables.
    """

    name: str
    metric: str
    metric_title: str
    metric_short: str

    @property
    def score_schema(self) -> pa.Schema: ...

    def feature_spec(self) -> dict[str, Any]:
        """The raw TFRecord features ingest writes and the trainer reads."""
        ...

    def build_network(
        self,
        network: str,
        image_shape: tuple[int, int, int],
        classes: int,
        *,
        dropout: float,
        weight_decay: float,
        weights: str | None = None,
    ) -> keras.Model:
        """The named network, uncompiled, computing in the current dtype policy."""
        ...

    def loss(self) -> keras.losses.Loss: ...

    def train_metrics(self, classes: int) -> list[keras.metrics.Metric]:
        """Compiled into the model; the first is what early stopping watches on eval."""
        ...

    def assess(
        self,
        eval_ids: np.ndarray,
        eval_raw: np.ndarray,
        test_ids: np.ndarray,
        test_raw: np.ndarray,
        labels: Sequence[str],
        point: OperatingPoint,
        slice_columns: Mapping[str, Sequence[str | None]] | None = None,
        seed: int = 0,
    ) -> Assessment:
        """Evaluation on test, with 95 % intervals, after what the task fits on eval."""
        ...

    def read_metrics(self, details: Mapping[str, Any]) -> Metrics:
        """``metrics.json`` as the typed record (the promotion metric and its interval)."""
        ...

    def summary_line(self, details: Mapping[str, Any]) -> str:
        """The trainer's one-line account of the test split."""
        ...
