"""Classification: one label per image, a softmax network, ROC AUC with its interval.

Everything here was the trainer's, the gate's and the scorer's built-in behaviour before
tasks existed; it moved unchanged (tests/test_tasks.py checks the outputs against ones
recorded before the move).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from models import features as f
from models.tasks.records import Metrics

if TYPE_CHECKING:
    import keras
    import numpy as np
    import pyarrow as pa

    from models.assessment import Assessment
    from models.operating_point import OperatingPoint


@dataclass(frozen=True)
class Classification:
    name: str = "classification"
    metric: str = "roc_auc"
    metric_title: str = "test ROC AUC"
    metric_short: str = "AUC"

    @property
    def score_schema(self) -> pa.Schema:
        return f.SCORES_SCHEMA

    def feature_spec(self) -> dict[str, Any]:
        return f.raw_feature_spec()

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
        from models.networks import build_network

        return build_network(
            network,
            image_shape,
            classes,
            dropout=dropout,
            weight_decay=weight_decay,
            weights=weights,
        )

    def loss(self) -> keras.losses.Loss:
        import keras

        return keras.losses.CategoricalCrossentropy()

    def train_metrics(self, classes: int) -> list[keras.metrics.Metric]:
        import keras

        return [keras.metrics.AUC(name="auc", multi_label=True, num_labels=classes)]

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
        from models.assessment import assess

        positive = positive_label(list(labels))
        return assess(
            eval_ids,
            eval_raw,
            test_ids,
            test_raw,
            labels,
            positive,
            point,
            slice_columns if positive is not None else None,
            seed=seed,
        )

    def read_metrics(self, details: Mapping[str, Any]) -> Metrics:
        ci = (details.get("ci") or {}).get(self.metric) or {}
        return Metrics(
            task=self.name,
            metric=self.metric,
            value=_number(details.get(self.metric)),
            low=_number(ci.get("low")),
            high=_number(ci.get("high")),
            details=dict(details),
        )

    def summary_line(self, details: Mapping[str, Any]) -> str:
        from models.assessment import summary_line

        return summary_line(dict(details))


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def positive_label(labels: list[str]) -> str | None:
    """The label whose probability is the score: binary → "1" if present, else the second
    vocabulary entry; multi-class → None."""
    if len(labels) != 2:
        return None
    return "1" if "1" in labels else labels[1]


TASK = Classification()
