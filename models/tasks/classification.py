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
from models.tasks.task import Evaluation, TaskBase

if TYPE_CHECKING:
    import keras
    import numpy as np
    import tensorflow as tf

    from models.assessment import Assessment
    from models.inputs import DataInfo
    from models.operating_point import OperatingPoint
    from models.tasks.records import ModelInfo
    from models.train_config import TrainConfig


@dataclass(frozen=True, kw_only=True)
class Classification(TaskBase):
    """The classification task's behaviour; its names and words are ``TASK``'s fields."""

    def metric_interval(self, details: Mapping[str, Any]) -> tuple[Any, Any]:
        ci = (details.get("ci") or {}).get(self.metric) or {}
        return ci.get("low"), ci.get("high")

    def feature_spec(self) -> dict[str, Any]:
        return f.raw_feature_spec()

    def classes(self, info: DataInfo) -> list[str]:
        if len(info.labels) < 2:
            raise ValueError(
                f"the train split has {len(info.labels)} label(s); a classifier needs 2"
            )
        return list(info.labels)

    def check(self, config: TrainConfig) -> None:
        if config.network not in f.NETWORKS:
            raise ValueError(f"--network must be one of {', '.join(f.NETWORKS)} for classification")

    def build_network(
        self, config: TrainConfig, image_shape: tuple[int, int, int], classes: int
    ) -> keras.Model:
        from models.networks import build_network

        return build_network(
            config.network,
            image_shape,
            classes,
            dropout=config.dropout,
            weight_decay=config.weight_decay,
            weights=config.weights,
        )

    def network_name(self, config: TrainConfig) -> str:
        return config.network

    def explain_layer(self, model: keras.Model) -> str | None:
        from models.networks import gradcam_layer

        return gradcam_layer(model)

    def run_notes(self, config: TrainConfig, info: DataInfo) -> dict[str, Any]:
        from models.inputs import class_weights

        return {"class_weights": list(class_weights(info)) if config.class_weights else None}

    def training_text(self, run_config: Mapping[str, Any]) -> str:
        from models.model_card import weights_text

        return f"class weights {weights_text(run_config.get('class_weights'))}"

    def loss(self, config: TrainConfig) -> keras.losses.Loss:
        import keras

        return keras.losses.CategoricalCrossentropy()

    def train_metrics(self, classes: int) -> list[keras.metrics.Metric]:
        import keras

        return [keras.metrics.AUC(name="auc", multi_label=True, num_labels=classes)]

    def datasets(
        self, config: TrainConfig, info: DataInfo, transform: Any, batch: int
    ) -> dict[str, tf.data.Dataset]:
        from models.inputs import Augment, class_weights, make_dataset

        weights = class_weights(info) if config.class_weights else None
        fits = _cache_fits(config, info)
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

    def evaluate(
        self,
        model: keras.Model,
        datasets: Mapping[str, tf.data.Dataset],
        info: DataInfo,
        config: TrainConfig,
    ) -> Evaluation:
        import os

        from models import calibration, evaluation
        from models.inputs import split_slices
        from models.model_card import RELIABILITY_PNG
        from models.operating_point import OperatingPoint

        labels = list(info.labels)
        eval_ids, eval_raw = predict(model, datasets[f.EVAL])
        test_ids, test_raw = predict(model, datasets[f.TEST])
        assessed = self.assess(
            eval_ids,
            eval_raw,
            test_ids,
            test_raw,
            labels,
            OperatingPoint.parse(config.operating_point),
            split_slices(info, f.TEST),
            seed=config.seed,
        )
        positive = positive_label(labels)
        k = labels.index(positive) if positive is not None else None

        def figures(folder: str) -> None:
            evaluation.plot_curves(
                assessed.test_ids,
                assessed.test_calibrated,
                labels,
                positive,
                os.path.join(folder, "roc.png"),
                os.path.join(folder, "pr.png"),
            )
            calibration.plot_reliability(
                assessed.test_ids,
                assessed.test_raw,
                assessed.test_calibrated,
                k,
                os.path.join(folder, RELIABILITY_PNG),
            )

        return Evaluation(
            assessed.metrics,
            threshold=assessed.threshold,
            operating_point=assessed.operating_point,
            calibration=assessed.calibration.describe(),
            wrap=lambda network: calibration.calibrated_network(network, assessed.calibration),
            figures=figures,
        )

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
        """Calibration and threshold fitted on eval, then test figures with 95 % intervals."""
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

    def minimum(self, config: TrainConfig) -> float:
        return config.min_auc

    def summary_line(self, details: Mapping[str, Any]) -> str:
        from models.assessment import summary_line

        return summary_line(dict(details))

    def card_figures(self, model_json: ModelInfo, details: Mapping[str, Any]) -> list[str]:
        from models import model_card

        metrics = dict(details)
        return [
            *model_card.figures(model_json, metrics),
            *model_card.calibration_section(metrics),
            *model_card.slices_section(metrics),
        ]


def _cache_fits(config: TrainConfig, info: DataInfo):
    """Whether a split's transformed examples fit ``--cache-mb`` (then they are cached)."""
    example_bytes = math.prod(info.image_shape) * 4
    budget = config.cache_mb * 2**20
    return lambda split: info.labelled(split) * example_bytes <= budget


def predict(model: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(label ids, probabilities) of a batched (image, one-hot) dataset, in its order."""
    import numpy as np

    ids, probabilities = [], []
    for image, onehot in dataset:
        probabilities.append(np.asarray(model(image, training=False), dtype=np.float32))
        ids.append(np.argmax(onehot.numpy(), axis=1))
    return np.concatenate(ids), np.concatenate(probabilities)


def positive_label(labels: list[str]) -> str | None:
    """The label whose probability is the score: binary → "1" if present, else the second
    vocabulary entry; multi-class → None."""
    if len(labels) != 2:
        return None
    return "1" if "1" in labels else labels[1]


TASK = Classification(
    name="classification",
    metric="roc_auc",
    metric_title="test ROC AUC",
    metric_short="AUC",
    monitor="auc",
    purpose="ranking images for review by image-level classification",
    limitations=(
        "The threshold and the calibration were fitted on the eval split, which also chose "
        "the epoch: on a small eval split both carry its noise. Small slices are flagged: "
        "their figures are not evidence either way."
    ),
    score_schema=f.SCORES_SCHEMA,
)
