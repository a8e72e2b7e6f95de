"""The model card shows the operating point, intervals, calibration, slices and limits."""

from models.inputs import DataInfo
from models.model_card import interval, model_card
from models.tasks import ModelInfo, get_task

MODEL_JSON = ModelInfo(
    version="3",
    network="cnn",
    created_at="2026-12-03T12:00:00Z",
    run_id="train-x",
    labels=("0", "1"),
    positive_label="1",
    image_height=64,
    image_width=64,
    image_channels=1,
    gradcam_layer="block4_pool",
    signature={},
    raw_image="image",
    threshold=0.4213,
    operating_point="youden",
)
CI = {"value": 0.9, "low": 0.8, "high": 0.97, "method": "delong"}
METRICS = {
    "roc_auc": 0.9,
    "pr_auc": 0.8,
    "threshold": 0.4213,
    "accuracy": 0.85,
    "confusion_matrix": [[20, 3], [3, 14]],
    "best_epoch": 7,
    "ci": {
        "roc_auc": CI,
        **{
            k: {"value": 0.85, "low": 0.7, "high": 0.93, "method": "stratified bootstrap"}
            for k in ("accuracy", "precision", "recall", "specificity", "f1")
        },
    },
    "operating_point": {"rule": "youden", "threshold": 0.4213, "eval": {"recall": 0.9}},
    "calibration": {
        "method": "platt",
        "scale": 0.5,
        "bias": [0.0, -1.2],
        "test": {"ece_before": 0.31, "ece_after": 0.08, "brier_before": 0.25, "brier_after": 0.12},
    },
    "slices": {
        "modality": [
            {
                "value": "CT",
                "examples": 12,
                "positives": 4,
                "negatives": 8,
                "roc_auc": 0.75,
                "roc_auc_low": 0.4,
                "roc_auc_high": 1.0,
                "recall": 0.5,
                "specificity": 0.875,
                "small": True,
            },
        ]
    },
}
RUN = {
    "network": "cnn", "optimizer": "adam", "learning_rate": 0.001, "global_batch_size": 32,
    "epochs": 15, "augment": "none", "class_weights": None, "seed": 0,
}  # fmt: skip
INFO = DataInfo("/data", (64, 64, 1), ("0", "1"), {"test": {"0": 23, "1": 17}})


def test_interval_text():
    assert interval(CI) == "0.900 (95 % CI 0.800-0.970)"
    assert interval({"value": 0.5, "low": None, "high": None}) == "0.500"
    assert interval(None) == "n/a"
    assert interval({"value": float("nan"), "low": float("nan"), "high": float("nan")}) == "n/a"


def test_the_card_shows_every_figure_the_version_holds():
    card = model_card(MODEL_JSON, METRICS, INFO, RUN, get_task("classification"))
    assert "predicted at a score of 0.4213 or more" in card
    assert "| roc_auc | 0.900 (95 % CI 0.800-0.970) |" in card
    assert "| specificity | 0.850 (95 % CI 0.700-0.930) |" in card
    assert "| threshold | 0.4213 |" in card
    assert "Platt scaling fitted on the eval split (scale 0.500, bias [0.000, -1.200])" in card
    assert "| ECE (10 bins) | 0.3100 | 0.0800 |" in card
    assert "![Reliability diagram](reliability.png)" in card
    assert "| modality | CT | 12 | 4 / 8 | 0.750 (95 % CI 0.400-1.000) | 0.500 | 0.875 | yes |" in (
        card
    )
    assert "| test | 23 | 17 | 0 |" in card and "## Limitations" in card
