"""Segmentation: a class for every pixel, a U-Net, Dice with its interval over patients.

The data is a segmentation ingest (``ingest --task segmentation``): every labelled example
carries a ``mask`` label map beside its image, and its ``label`` is the highest class the
mask marks. The output columns are the class ids, ``"0"`` (background) first. The loss is
soft Dice over the foreground classes plus cross-entropy (or focal loss, for a rare
foreground); early stopping watches the eval Dice; evaluation is ``models.seg_evaluation``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from models import features as f
from models.tasks.task import Evaluation, TaskBase

if TYPE_CHECKING:
    import keras
    import numpy as np
    import tensorflow as tf

    from models.inputs import DataInfo
    from models.tasks.records import ModelInfo
    from models.train_config import TrainConfig

FROC_PNG = "froc.png"
CONTOURS_PNG = "contours.png"
CONTOUR_EXAMPLES = 6  # test images drawn with their true and predicted contours


@dataclass(frozen=True, kw_only=True)
class Segmentation(TaskBase):
    """The segmentation task's behaviour; its names and words are ``TASK``'s fields."""

    def metric_interval(self, details: Mapping[str, Any]) -> tuple[Any, Any]:
        return details.get(f"{self.metric}_ci_low"), details.get(f"{self.metric}_ci_high")

    def feature_spec(self) -> dict[str, Any]:
        return f.mask_feature_spec()

    def classes(self, info: DataInfo) -> list[str]:
        if info.task is not None and info.task != self.name:
            raise ValueError(
                f"{info.data} was ingested for {info.task}; segmentation needs "
                "`dicomflow ingest --task segmentation`"
            )
        ids = [int(label) for label in info.labels if label.isdigit()]
        if len(ids) != len(info.labels) or not any(ids):
            raise ValueError(f"{info.data} has no masked train examples to segment")
        return [str(k) for k in range(max(ids) + 1)]

    def check(self, config: TrainConfig) -> None:
        if config.network != f.CNN:
            raise ValueError(
                "segmentation trains a U-Net (--unet-depth, --unet-width); --network is for "
                "classification"
            )
        if config.weights:
            raise ValueError("--weights is for a classifier's backbone; the U-Net has none")

    def build_network(
        self, config: TrainConfig, image_shape: tuple[int, int, int], classes: int
    ) -> keras.Model:
        from models.unet import build_unet

        return build_unet(
            image_shape,
            classes,
            depth=config.unet_depth,
            width=config.unet_width,
            dropout=config.dropout,
            weight_decay=config.weight_decay,
        )

    def network_name(self, config: TrainConfig) -> str:
        return f.UNET

    def explain_layer(self, model: keras.Model) -> str | None:
        return None  # the U-Net's output is its own map of where it looked

    def run_notes(self, config: TrainConfig, info: DataInfo) -> dict[str, Any]:
        return {
            "unet": {"depth": config.unet_depth, "width": config.unet_width},
            "loss": config.seg_loss,
        }

    def training_text(self, run_config: Mapping[str, Any]) -> str:
        unet = run_config.get("unet") or {}
        return (
            f"depth {unet.get('depth')}, width {unet.get('width')}, loss "
            f"`{run_config.get('loss')}` (soft Dice plus cross-entropy or focal)"
        )

    def loss(self, config: TrainConfig) -> keras.losses.Loss:
        from models.seg_losses import SegmentationLoss

        return SegmentationLoss(focal=config.seg_loss == "dice_focal")

    def train_metrics(self, classes: int) -> list[keras.metrics.Metric]:
        from models.seg_losses import DiceScore

        return [DiceScore(classes, name="dice")]

    def datasets(
        self, config: TrainConfig, info: DataInfo, transform: Any, batch: int
    ) -> dict[str, tf.data.Dataset]:
        from models.inputs import Augment, make_mask_dataset

        classes = len(self.classes(info))
        example_bytes = math.prod(info.image_shape[:2]) * (4 * info.image_shape[2] + 1)

        def fits(split: str) -> bool:
            return info.labelled(split) * example_bytes <= config.cache_mb * 2**20

        return {
            f.TRAIN: make_mask_dataset(
                info,
                f.TRAIN,
                transform,
                batch,
                classes,
                training=True,
                augment=Augment.parse(config.augment),
                seed=config.seed,
                cache=fits(f.TRAIN),
            ),
            f.EVAL: make_mask_dataset(info, f.EVAL, transform, batch, classes, cache=fits(f.EVAL)),
            f.TEST: make_mask_dataset(info, f.TEST, transform, batch, classes),
        }

    def evaluate(
        self,
        model: keras.Model,
        datasets: Mapping[str, tf.data.Dataset],
        info: DataInfo,
        config: TrainConfig,
    ) -> Evaluation:
        from models import seg_evaluation
        from models.inputs import split_patients

        images, truth, probabilities = predict(model, datasets[f.TEST])
        labels = self.classes(info)
        metrics = seg_evaluation.evaluate(
            truth, probabilities, split_patients(info, f.TEST), labels, seed=config.seed
        )

        def figures(folder: str) -> None:
            seg_evaluation.plot_froc(metrics, os.path.join(folder, FROC_PNG))
            plot_contours(images, truth, probabilities, os.path.join(folder, CONTOURS_PNG))

        names = {k: v for k, v in (info.class_names or {}).items() if k in labels[1:]}
        return Evaluation(metrics, class_names=names or None, figures=figures)

    def minimum(self, config: TrainConfig) -> float:
        return config.min_dice

    def summary_line(self, details: Mapping[str, Any]) -> str:
        from models.seg_evaluation import summary_line

        return summary_line(dict(details))

    def card_figures(self, model_json: ModelInfo, details: Mapping[str, Any]) -> list[str]:
        from models.model_card import pair_interval

        d = details
        rows = (
            ("Dice", d.get("dice"), (d.get("dice_ci_low"), d.get("dice_ci_high"))),
            ("IoU", d.get("iou"), (d.get("iou_ci_low"), d.get("iou_ci_high"))),
            ("lesion sensitivity", d.get("lesion_sensitivity"), d.get("lesion_sensitivity_ci")),
            (
                "false positives per image",
                d.get("false_positives_per_image"),
                d.get("false_positives_per_image_ci"),
            ),
        )
        lines = [
            "## Test-split metrics (95 % confidence intervals over patients)",
            "",
            "| metric | value |",
            "|---|---|",
            *(f"| {name} | {pair_interval(value, pair)} |" for name, value, pair in rows),
        ]
        for name, figures in (details.get("classes") or {}).items():
            lines.append(
                f"| Dice, class {name} | {pair_interval(figures['dice'], figures['dice_ci'])} |"
            )
        lines += [
            "",
            f"{details.get('ci', {}).get('method', '')}; {details.get('lesions_found')} of "
            f"{details.get('lesions')} lesions found (8-connected components overlapped by a "
            f"prediction), {details.get('false_positives')} false positive components on "
            f"{details.get('examples')} images. FROC curve: `{FROC_PNG}`; test images with "
            f"true (green) and predicted (red) contours: `{CONTOURS_PNG}`.",
            "",
        ]
        return lines


def predict(
    model: keras.Model, dataset: tf.data.Dataset
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, truth [N, H, W] class ids, probabilities [N, H, W, K] as float16)."""
    import numpy as np

    images, truth, probabilities = [], [], []
    kept = 0
    for image, onehot in dataset:
        out = np.asarray(model(image, training=False), dtype=np.float32)
        probabilities.append(out.astype(np.float16))
        truth.append(np.argmax(onehot.numpy(), axis=-1).astype(np.uint8))
        if kept < CONTOUR_EXAMPLES:
            images.append(image.numpy()[: CONTOUR_EXAMPLES - kept, ..., 0])
            kept += len(images[-1])
    return np.concatenate(images), np.concatenate(truth), np.concatenate(probabilities)


def plot_contours(
    images: np.ndarray, truth: np.ndarray, probabilities: np.ndarray, path: str
) -> None:
    """A few test images (de-identified, normalized) with true and predicted outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(1, max(n, 1), figsize=(2.2 * max(n, 1), 2.4), dpi=100, squeeze=False)
    predicted = probabilities[:n].argmax(axis=-1)
    for i, ax in enumerate(axes[0]):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i], cmap="gray")
        if truth[i].any():
            ax.contour(truth[i] > 0, levels=[0.5], colors="lime", linewidths=0.8)
        if predicted[i].any():
            ax.contour(predicted[i] > 0, levels=[0.5], colors="red", linewidths=0.8)
    fig.suptitle("test: true (green) and predicted (red) outlines", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


TASK = Segmentation(
    name="segmentation",
    metric="dice",
    metric_title="test Dice",
    metric_short="Dice",
    monitor="dice",
    purpose="outlining lesions, pixel by pixel, for review and measurement",
    limitations=(
        "The epoch was chosen on the eval split. Images without a mask were not trained or "
        "evaluated on: false positives per image are counted on images with a mask only."
    ),
    score_schema=f.SEGMENTATION_SCORES_SCHEMA,
)
