"""The training job's configuration: every argument of ``dicomflow train`` and the trainer
(the container entry point), declared once as a frozen dataclass."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import dataclass

from models import configs
from models.configs import arg
from models.features import CNN, NETWORKS, SEG_LOSSES, UNET_DEPTH, UNET_WIDTH
from models.operating_point import OperatingPoint
from models.tasks import DEFAULT_TASK, TASKS, get_task

OPTIMIZERS = ("adam", "sgd")


MIXED_PRECISION = ("auto", "on", "off")


DEFAULT_AUGMENT = "flip,rotate=10,crop=0.9,noise=0.05"


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Every training argument; the command line, the container and Vertex use the same."""

    data: str | None = arg(None, "ingest output (local or gs://): tfrecords/, transform/")
    model_dir: str | None = arg(None, "model directory: versions, latest, checkpoints")
    task: str = arg(DEFAULT_TASK, "what the model learns", choices=TASKS)
    network: str = arg(CNN, "classifier (classification)", choices=NETWORKS)
    unet_depth: int = arg(UNET_DEPTH, "U-Net down-sampling steps (segmentation)")
    unet_width: int = arg(UNET_WIDTH, "U-Net filters of the first level (segmentation)")
    seg_loss: str = arg(
        "dice_ce", "soft Dice plus cross-entropy or focal loss (segmentation)", choices=SEG_LOSSES
    )
    epochs: int = arg(30, "most epochs (early stopping on eval AUC or Dice may end sooner)")
    batch_size: int = arg(32, "examples per step and replica")
    optimizer: str = arg("adam", "optimizer (sgd: with momentum)", choices=OPTIMIZERS)
    learning_rate: float = arg(1e-3, "learning rate")
    momentum: float = arg(0.9, "momentum of sgd")
    weight_decay: float = arg(1e-4, "L2 factor on every kernel")
    dropout: float = arg(0.25, "dropout before the output layer")
    augment: str = arg(
        DEFAULT_AUGMENT, "train-split augmentation: flip,rotate=DEG,crop=F,noise=S or none"
    )
    class_weights: bool = arg(True, "weight examples by inverse label frequency (classification)")
    patience: int = arg(5, "epochs without a better eval AUC or Dice before stopping")
    min_auc: float = arg(0.7, "promotion gate: the least test ROC AUC for latest (classification)")
    min_dice: float = arg(0.5, "promotion gate: the least test Dice for latest (segmentation)")
    operating_point: str = arg(
        "youden",
        "threshold rule on eval: youden, sensitivity=T or specificity=T (classification)",
    )
    seed: int = arg(0, "seed for weights, shuffling and augmentation")
    weights: str | None = arg(None, "a Keras weights file for a backbone (never downloaded)")
    checkpoint_dir: str | None = arg(None, "checkpoints (default: <model-dir>/_work/<key>)")
    mixed_precision: str = arg(
        "auto", "float16 compute (auto: when a GPU is present)", choices=MIXED_PRECISION
    )
    cache_mb: int = arg(1024, "cache a split's transformed examples in memory up to this size")
    run_id: str | None = arg(None, "names this run's record in <model-dir>/_runs/")

    def validate(self) -> None:
        """Raises ValueError (one line) for a missing or out-of-range argument."""
        for name in ("data", "model_dir"):
            if not getattr(self, name):
                raise ValueError(f"--{name.replace('_', '-')} is required")
        if self.task not in TASKS:
            raise ValueError(f"--task must be one of {', '.join(TASKS)}")
        if self.network not in NETWORKS:
            raise ValueError(f"--network must be one of {', '.join(NETWORKS)}")
        if self.optimizer not in OPTIMIZERS or self.mixed_precision not in MIXED_PRECISION:
            raise ValueError("--optimizer must be adam or sgd; --mixed-precision auto, on or off")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1 or self.cache_mb < 0:
            raise ValueError("--epochs, --batch-size and --patience must be >= 1, --cache-mb >= 0")
        if self.learning_rate <= 0 or not 0 <= self.dropout < 1 or self.weight_decay < 0:
            raise ValueError(
                "--learning-rate must be > 0, --dropout in [0, 1), --weight-decay >= 0"
            )
        if not 0 <= self.min_auc <= 1 or not 0 <= self.min_dice <= 1:
            raise ValueError("--min-auc and --min-dice must be in [0, 1]")
        if self.seg_loss not in SEG_LOSSES:
            raise ValueError(f"--seg-loss must be one of {', '.join(SEG_LOSSES)}")
        if not 1 <= self.unet_depth <= 6 or self.unet_width < 4:
            raise ValueError("--unet-depth must be in [1, 6] and --unet-width >= 4")
        get_task(self.task).check(self)
        try:
            OperatingPoint.parse(self.operating_point)
        except ValueError as e:
            raise ValueError(f"--operating-point: {e}") from None
        from models.inputs import Augment  # TensorFlow: only when a config is checked

        Augment.parse(self.augment)

    def to_argv(self) -> list[str]:
        """The arguments that give back this config through ``add_arguments``."""
        return configs.to_argv(self)

    def key(self) -> str:
        """Hash of the arguments that change the trained weights: names the checkpoints."""
        kept = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if k not in _NOT_IN_KEY and _KEY_IF_CHANGED.get(k, object()) != v
        }
        return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


_NOT_IN_KEY = {
    "model_dir",
    "checkpoint_dir",
    "min_auc",
    "min_dice",
    "cache_mb",
    "run_id",
    "operating_point",
}
# Segmentation's arguments join the key only when they are not their defaults, so a
# classifier's key (hence its checkpoint folder) is what it was before they existed.
_KEY_IF_CHANGED = {"unet_depth": UNET_DEPTH, "unet_width": UNET_WIDTH, "seg_loss": "dice_ce"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per ``TrainConfig`` field (``--batch-size``, ``--no-class-weights``...)."""
    configs.add_arguments(parser, TrainConfig)


def config_from_args(namespace: argparse.Namespace) -> TrainConfig:
    return configs.from_namespace(TrainConfig, namespace)
