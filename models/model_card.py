"""MODEL_CARD.md: what a version is, its data, its figures with their uncertainty, its limits.

Written from ``model.json``, ``metrics.json`` and the run's configuration, so the card
shows exactly the numbers the version folder holds: the operating point, the test figures
with 95 % confidence intervals, calibration before and after, the reliability diagram,
and the slices (small ones flagged).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from models import features as f
from models.operating_point import THRESHOLD_METRICS

if TYPE_CHECKING:
    from models.inputs import DataInfo
    from models.tasks import ModelInfo, Task

RELIABILITY_PNG = "reliability.png"


def _num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def interval(ci: dict | None, digits: int = 3) -> str:
    """``0.912 (95 % CI 0.85-0.97)``, or the bare value when there is no interval."""
    if not ci or _num(ci.get("value")) == "n/a":
        return "n/a"
    if ci.get("low") is None or ci.get("high") is None:
        return _num(ci.get("value"), digits)
    return (
        f"{_num(ci['value'], digits)} (95 % CI {_num(ci['low'], digits)}-"
        f"{_num(ci['high'], digits)})"
    )


def pair_interval(value, pair) -> str:
    """``interval`` of a value and a ``(low, high)`` pair (as segmentation records them)."""
    low, high = pair if pair else (None, None)
    return interval({"value": value, "low": low, "high": high})


def model_card(
    model_json: ModelInfo, metrics: dict, info: DataInfo, run_config: dict, task: Task
) -> str:
    """The card's Markdown text (the figures sections are the task's)."""
    labels = list(model_json.labels)
    lines = [
        f"# Model card: {model_json.network} version {model_json.version}",
        "",
        f"Created {model_json.created_at} by training run `{model_json.run_id}` on `{info.data}`.",
        "",
        "## Intended use",
        "",
        f"Research and pipeline validation: {task.purpose}. Not a medical device; not for "
        "diagnosis or treatment decisions. Validate on data from the target site before any use.",
        "",
        *_io(model_json, info),
        *_data(labels, info),
        *task.card_figures(model_json, metrics),
        *_training(model_json, metrics, run_config, task),
        "## Limitations",
        "",
        "Figures come from one held-out split of one dataset; split by patient, but not by "
        f"site or scanner. {task.limitations}",
        "",
    ]
    return "\n".join(lines)


def _io(model_json: ModelInfo, info: DataInfo) -> list[str]:
    height, width, channels = info.image_shape
    positive = model_json.positive_label
    out = (
        f"Input: `image`, the raw uint8 pixels ingest writes ({height}x{width}x{channels}, "
        "row-major bytes). The tf.Transform graph from ingest is inside the model. Output: "
        f"`probabilities` over {list(model_json.labels)}, calibrated"
    )
    if positive:
        threshold = model_json.threshold
        out += (
            f"; the score is the probability of `{positive}`, and `{positive}` is predicted "
            f"at a score of {_num(threshold)} or more (the operating point, "
            f"`{model_json.operating_point}` on the eval split)."
        )
    else:
        out += "; the predicted label is the most probable one."
    return ["## Input and output", "", out, ""]


def _data(labels: list[str], info: DataInfo) -> list[str]:
    lines = [
        "## Data (examples per split and label)",
        "",
        "| split | " + " | ".join(labels) + " | other |",
        "|---|" + "---|" * (len(labels) + 1),
    ]
    for split in (f.TRAIN, f.EVAL, f.TEST):
        counts = info.counts.get(split, {})
        other = sum(n for label, n in counts.items() if label not in labels)
        lines.append(
            f"| {split} | " + " | ".join(str(counts.get(k, 0)) for k in labels) + f" | {other} |"
        )
    return [*lines, ""]


def figures(model_json: ModelInfo, metrics: dict) -> list[str]:
    ci = metrics.get("ci", {})
    lines = [
        "## Test-split metrics (95 % confidence intervals)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| roc_auc | {interval(ci.get('roc_auc'))} |",
        f"| pr_auc | {_num(metrics.get('pr_auc'), 3)} |",
    ]
    if metrics.get("threshold") is not None:
        lines.append(f"| threshold | {_num(metrics['threshold'])} |")
        lines += [f"| {k} | {interval(ci.get(k))} |" for k in THRESHOLD_METRICS]
    else:
        lines += [f"| {k} | {_num(metrics.get(k))} |" for k in ("accuracy", "precision", "f1")]
    lines += [
        "",
        f"ROC AUC interval: {ci.get('roc_auc', {}).get('method', 'n/a')}; threshold "
        f"metrics: {ci.get('accuracy', {}).get('method', 'n/a')}.",
        "",
        f"Confusion matrix (rows true, columns predicted, order {list(model_json.labels)}): "
        f"{metrics['confusion_matrix']}.",
        "",
    ]
    point = metrics.get("operating_point")
    if point:
        at = point.get("eval", {})
        lines += [
            f"Operating point: rule `{point['rule']}` on the eval split → threshold "
            f"{_num(point['threshold'])} (eval sensitivity {_num(at.get('recall'), 3)}, "
            f"specificity {_num(at.get('specificity'), 3)}).",
            "",
        ]
    return lines


def calibration_section(metrics: dict) -> list[str]:
    cal = metrics.get("calibration")
    if not cal:
        return []
    test = cal.get("test", {})
    return [
        "## Calibration",
        "",
        f"{cal['method'].capitalize()} scaling fitted on the eval split (scale "
        f"{_num(cal['scale'], 3)}, bias [{', '.join(_num(b, 3) for b in cal['bias'])}]), "
        "inside the exported model: served probabilities are the calibrated ones.",
        "",
        "| test split | before | after |",
        "|---|---|---|",
        f"| ECE (10 bins) | {_num(test.get('ece_before'))} | {_num(test.get('ece_after'))} |",
        f"| Brier score | {_num(test.get('brier_before'))} | {_num(test.get('brier_after'))} |",
        "",
        f"![Reliability diagram]({RELIABILITY_PNG})",
        "",
    ]


def slices_section(metrics: dict) -> list[str]:
    slices = metrics.get("slices")
    if not slices:
        return []
    lines = [
        "## Slices (test split)",
        "",
        "Small slices (flagged) have too few examples or too few of a class for their "
        "figures to mean much.",
        "",
        "| slice | value | examples | pos / neg | ROC AUC (95 % CI) | sens. | spec. | small |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for column, rows in slices.items():
        for r in rows:
            auc = {"value": r["roc_auc"], "low": r["roc_auc_low"], "high": r["roc_auc_high"]}
            lines.append(
                f"| {column} | {r['value']} | {r['examples']} | {r['positives']} / "
                f"{r['negatives']} | {interval(auc)} | {_num(r.get('recall'), 3)} | "
                f"{_num(r.get('specificity'), 3)} | {'yes' if r['small'] else ''} |"
            )
    return [*lines, ""]


def _training(model_json: ModelInfo, metrics: dict, run_config: dict, task: Task) -> list[str]:
    return [
        "## Training",
        "",
        f"{model_json.network}, {run_config['optimizer']} (learning rate "
        f"{run_config['learning_rate']}), batch {run_config['global_batch_size']}, at most "
        f"{run_config['epochs']} epochs with early stopping on eval {task.metric_short} (best "
        f"epoch {metrics['best_epoch']}), augmentation `{run_config['augment']}`, "
        f"{task.training_text(run_config)}, seed {run_config['seed']}.",
        "",
    ]


def weights_text(weights: list[float] | None) -> str:
    return "off" if weights is None else "[" + ", ".join(f"{w:.3f}" for w in weights) + "]"
