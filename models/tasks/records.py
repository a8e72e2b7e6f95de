"""Typed records of what a trained version is (``model.json``) and how well it did
(``metrics.json``), read and written by the trainer, the gate, the scorer and the report."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


def finite_or_none(value: Any) -> float | None:
    """A metrics.json number as a float, None when absent or not finite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """``model.json``: what a scorer needs to use a version without reading anything else.

    ``pixels``: ingest's pixel settings (size, channels, frame_policy, windows), so that a
    scorer normalizes raw DICOM exactly as the training images were. ``threshold``: a
    binary model's operating point on the (calibrated) positive probability, with the
    ``operating_point`` rule that chose it; ``calibration``: what the model applies.
    A ``model.json`` written before tasks existed has no ``task``: it is a classifier.
    """

    version: str
    labels: tuple[str, ...]
    positive_label: str | None
    image_height: int
    image_width: int
    image_channels: int
    network: str
    gradcam_layer: str | None
    created_at: str
    run_id: str
    signature: dict[str, str]
    raw_image: str
    pixels: dict | None = None
    threshold: float | None = None
    operating_point: str | None = None
    calibration: dict | None = None
    task: str = "classification"
    # Segmentation: class id → its name from the masks (ingest's manifest), when one passed
    # de-identification's content check; SEG outputs label segments with it.
    class_names: dict[str, str] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.image_height, self.image_width, self.image_channels

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["labels"] = list(self.labels)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelInfo:
        """Raises ValueError (one line) when a required key is missing."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"model.json lacks {', '.join(missing)}")
        kept = {k: v for k, v in data.items() if k in names}
        kept["labels"] = tuple(kept["labels"])
        return cls(**kept)


@dataclass(frozen=True, kw_only=True)
class Metrics:
    """A version's test figures: the task's promotion metric with its 95 % interval, and
    everything else the task reports (``details``, written to ``metrics.json`` as is).

    ``value`` is None where the metric is undefined (e.g. a test split with one class).
    """

    task: str
    metric: str  # the promotion metric's name, e.g. "roc_auc" or "dice"
    value: float | None
    low: float | None = None
    high: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def defined(self) -> bool:
        return self.value is not None and math.isfinite(self.value)

    @property
    def lower_bound(self) -> float:
        """The interval's lower bound; the point estimate when no interval was recorded."""
        if self.low is not None and math.isfinite(self.low):
            return float(self.low)
        return float(self.value) if self.defined else math.nan  # type: ignore[arg-type]
