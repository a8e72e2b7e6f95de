"""report.html for a run: one self-contained page (plots inlined as PNG data URIs).

It reads only the run's outputs (manifests, tables, the model's files), never the source
DICOM, so it shows nothing that the outputs do not already hold: pseudonymous ids and
de-identified pixels.
"""

import base64
import html
import io
import json
import os
from collections import Counter

import matplotlib
import numpy as np
import pyarrow.parquet as pq

from models import features as f
from models.layout import ERRORS_TABLE, INDEX_DIR, MANIFEST_NAME, SCORES_TABLE, TFRECORDS_DIR
from models.tasks import SEGMENTATION
from transforms.split import ALL_SPLITS

matplotlib.use("Agg")  # before pyplot is imported: no display here
import matplotlib.pyplot as plt

SAMPLE_IMAGES = 8


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img(data: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _json(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def _file_img(path: str, alt: str) -> str:
    with open(path, "rb") as fh:
        return _img(base64.b64encode(fh.read()).decode(), alt)


def read_rows(root: str) -> list[dict]:
    rows: list[dict] = []
    if not os.path.isdir(root):
        return rows
    for dirpath, _, names in sorted(os.walk(root)):
        for name in sorted(names):
            if name.startswith("part-") and name.endswith(".parquet"):
                rows += pq.read_table(os.path.join(dirpath, name)).to_pylist()
    return rows


def _bar(counts: dict, title: str, xlabel: str = "") -> str:
    fig, ax = plt.subplots(figsize=(6, 0.4 * max(len(counts), 2) + 1))
    labels = [str(k) for k in counts]
    ax.barh(labels, list(counts.values()), color="#4477aa")
    for i, v in enumerate(counts.values()):
        ax.text(v, i, f" {v}", va="center")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.invert_yaxis()
    return _png(fig)


def _samples(ingest: str) -> str | None:
    import tensorflow as tf

    files = []
    for split in ALL_SPLITS:
        folder = os.path.join(ingest, TFRECORDS_DIR, split)
        if os.path.isdir(folder):
            files += sorted(os.path.join(folder, n) for n in os.listdir(folder))
    images = []
    for record in tf.data.TFRecordDataset(files, "GZIP").take(SAMPLE_IMAGES):
        ex = tf.train.Example.FromString(record.numpy()).features.feature
        h, w, c = (
            ex[k].int64_list.value[0] for k in (f.IMAGE_HEIGHT, f.IMAGE_WIDTH, f.IMAGE_CHANNELS)
        )
        pixels = np.frombuffer(ex[f.IMAGE].bytes_list.value[0], np.uint8).reshape(h, w, c)
        images.append((pixels, ex[f.MODALITY].bytes_list.value[0].decode()))
    if not images:
        return None
    fig, axes = plt.subplots(1, len(images), figsize=(2 * len(images), 2.3))
    for ax, (pixels, modality) in zip(np.atleast_1d(axes), images, strict=True):
        ax.imshow(pixels[..., 0] if pixels.shape[2] == 1 else pixels, cmap="gray")
        ax.set_title(modality)
        ax.axis("off")
    return _png(fig)


def _curves(history: list[dict], monitor: str = "auc") -> str:
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3))
    epochs = [h["epoch"] for h in history]
    for key, ax in (("loss", left), (monitor, right)):
        ax.plot(epochs, [h.get(key, np.nan) for h in history], "o-", label="train")
        ax.plot(epochs, [h.get(f"val_{key}", np.nan) for h in history], "s-", label="eval")
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.legend()
    return _png(fig)


def _score_histogram(scores: list[dict]) -> str:
    by_modality: dict[str, list[float]] = {}
    for row in scores:
        by_modality.setdefault(row.get(f.MODALITY) or "?", []).append(row["score"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bins = np.linspace(0, 1, 21).tolist()
    for modality, values in sorted(by_modality.items()):
        ax.hist(values, bins=bins, alpha=0.6, label=f"{modality} ({len(values)})")
    ax.set_xlabel("score (positive-class probability)")
    ax.set_ylabel("images")
    ax.legend()
    return _png(fig)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def evaluation_sections(metrics: dict, version_dir: str) -> list[tuple[str, str]]:
    """The operating point with its 95 % intervals, calibration and the slices."""
    from models.model_card import RELIABILITY_PNG, interval
    from models.operating_point import THRESHOLD_METRICS

    out = []
    ci = metrics.get("ci") or {}
    point = metrics.get("operating_point")
    if point:
        rows = [["ROC AUC", interval(ci.get("roc_auc"))]]
        rows += [[k, interval(ci.get(k))] for k in THRESHOLD_METRICS]
        rows.append(
            ["confusion matrix (rows true, columns predicted)", metrics["confusion_matrix"]]
        )
        text = (
            f"<p>Threshold {point['threshold']:.4f} on the calibrated probability, chosen on "
            f"the eval split by <code>{html.escape(point['rule'])}</code>; 95 % intervals: "
            f"{html.escape(ci.get('roc_auc', {}).get('method', ''))} (AUC), "
            f"{html.escape(ci.get('accuracy', {}).get('method', ''))} (the rest).</p>"
        )
        title = f"Operating point: threshold {point['threshold']:.3f}"
        out.append((title, text + _table(["test split", "value (95 % CI)"], rows)))
    cal = metrics.get("calibration")
    if cal:
        test = cal.get("test", {})
        rows = [
            [name, f"{test.get(f'{key}_before', float('nan')):.4f}",
             f"{test.get(f'{key}_after', float('nan')):.4f}"]
            for name, key in (("ECE (10 bins)", "ece"), ("Brier score", "brier"))
        ]  # fmt: skip
        png = os.path.join(version_dir, RELIABILITY_PNG)
        diagram = _file_img(png, "reliability diagram") if os.path.exists(png) else ""
        text = (
            f"<p>{html.escape(cal['method'].capitalize())} scaling fitted on the eval split, "
            "inside the exported model: the scores are calibrated probabilities.</p>"
        )
        out.append(
            ("Calibration (test split)", text + _table(["", "before", "after"], rows) + diagram)
        )
    slices = metrics.get("slices")
    if slices:
        rows = []
        for column, values in slices.items():
            for r in values:
                auc = {"value": r["roc_auc"], "low": r["roc_auc_low"], "high": r["roc_auc_high"]}
                rows.append(
                    [column, r["value"], r["examples"], f"{r['positives']} / {r['negatives']}",
                     interval(auc), _fmt(r.get("recall")), _fmt(r.get("specificity")),
                     r.get("why_small") or ""]
                )  # fmt: skip
        header = ["slice", "value", "examples", "pos / neg", "ROC AUC (95 % CI)", "sensitivity"]
        header += ["specificity", "small: why"]
        note = "<p>Figures of a small slice are shown but are not evidence either way.</p>"
        out.append(("Slices (test split)", note + _table(header, rows)))
    return out


def segmentation_sections(metrics: dict, version_dir: str) -> list[tuple[str, str]]:
    """Dice and IoU with their intervals over patients, lesions, the FROC curve, and test
    images with their true and predicted outlines (all from the version folder)."""
    from models.model_card import pair_interval
    from models.tasks.segmentation import CONTOURS_PNG, FROC_PNG

    rows = [
        [
            "Dice",
            pair_interval(
                metrics.get("dice"), (metrics.get("dice_ci_low"), metrics.get("dice_ci_high"))
            ),
        ],
        [
            "IoU",
            pair_interval(
                metrics.get("iou"), (metrics.get("iou_ci_low"), metrics.get("iou_ci_high"))
            ),
        ],
        [
            "lesion sensitivity",
            pair_interval(metrics.get("lesion_sensitivity"), metrics.get("lesion_sensitivity_ci")),
        ],
        [
            "false positives per image",
            pair_interval(
                metrics.get("false_positives_per_image"),
                metrics.get("false_positives_per_image_ci"),
            ),
        ],
    ]
    rows += [
        [f"Dice, class {name}", pair_interval(c.get("dice"), c.get("dice_ci"))]
        for name, c in (metrics.get("classes") or {}).items()
    ]
    text = (
        f"<p>{metrics.get('examples')} test images of {metrics.get('patients')} patients; "
        f"{metrics.get('lesions_found')} of {metrics.get('lesions')} lesions found, "
        f"{metrics.get('false_positives')} false positive components. 95 % intervals: "
        f"{html.escape(str((metrics.get('ci') or {}).get('method', '')))}.</p>"
    )
    pictures = "".join(
        _file_img(os.path.join(version_dir, name), name)
        for name in (FROC_PNG, CONTOURS_PNG)
        if os.path.exists(os.path.join(version_dir, name))
    )
    title = f"Test split: Dice {_fmt(metrics.get('dice'))}"
    return [(title, text + _table(["test split", "value (95 % CI)"], rows) + pictures)]


def segmentation_score_sections(score: str) -> list[tuple[str, str]]:
    """What a U-Net found in the scored images: images with a finding per modality, and the
    queries to start from."""
    rows = read_rows(os.path.join(score, SCORES_TABLE))
    out = []
    if rows:
        found: Counter = Counter()
        for row in rows:
            lesions = sum(row.get(f.COMPONENT_COUNT) or [])
            found[
                f"{row.get(f.MODALITY) or '?'}: {'with' if lesions else 'without'} a finding"
            ] += 1
        out.append(
            (
                "Scored images with a predicted finding",
                _img(_bar(dict(sorted(found.items())), "images"), "findings"),
            )
        )
    table = os.path.join(score, SCORES_TABLE, "**", "*.parquet")
    queries = f"""-- images with the largest predicted area per study
SELECT study_instance_uid, max(list_sum(foreground_area)) AS largest, count(*) AS images
FROM read_parquet('{table}', hive_partitioning = true)
GROUP BY 1 ORDER BY largest DESC LIMIT 10;

-- every predicted component with its box (source pixels)
SELECT sop_instance_uid, frame, unnest(bounding_boxes, recursive := true)
FROM read_parquet('{table}', hive_partitioning = true) LIMIT 20;"""
    out.append(("DuckDB queries to try", f"<pre>{html.escape(queries)}</pre>"))
    return out


def _fmt(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def redaction_counts(index: list[dict]) -> dict[str, int]:
    """Instances whose burned-in text was redacted, and the regions blanked (index rows are
    per frame: each instance counts once)."""
    done = {r[f.SOP_INSTANCE_UID]: r for r in index if r.get(f.PIXEL_REDACTION)}
    return {
        "images redacted": len(done),
        "text regions blanked": sum(int(r[f.REDACTED_REGIONS] or 0) for r in done.values()),
    }


def outlined(after: np.ndarray, blanked: np.ndarray) -> np.ndarray:
    """A redacted 8-bit frame (height x width x 3) with each blanked region outlined in
    red. Only the de-identified pixels are drawn: the outline lies on the region's own
    border, inside what was blanked, so nothing of the original shows."""
    import cv2

    out = after.copy()
    n, _, stats, _ = cv2.connectedComponentsWithStats(blanked.astype(np.uint8), connectivity=8)
    for x, y, w, h, _ in stats[1:n]:
        cv2.rectangle(out, (int(x), int(y)), (int(x + w - 1), int(y + h - 1)), (255, 0, 0), 1)
    return out


def redaction_example(synthetic: str, count: int = 3) -> str | None:
    """A few synthetic images (never real data) as de-identified, with the regions that
    redaction blanked outlined: the first loose files of the corpus that phi.json lists
    with planted text."""
    from pydicom import dcmread

    from transforms.deid import PixelPolicy, redact_pixels
    from transforms.deid.ocr import frames_8bit

    boxes = _json(os.path.join(synthetic, "phi.json")).get("text_boxes", [])
    loose = sorted({b["file"] for b in boxes if b.get("member") is None and b["phi"]})
    shown: list[tuple[str, np.ndarray, int]] = []
    for name in loose:
        ds = dcmread(os.path.join(synthetic, name))
        stored = ds.pixel_array.copy()
        try:
            result = redact_pixels(ds, PixelPolicy())
        except Exception:  # this one cannot be cleaned: try the next
            continue
        after = ds.pixel_array
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:  # the first frame of a run
            stored, after = stored[0], after[0]
        changed = stored != after
        blanked = changed.any(axis=-1) if changed.ndim == 3 else changed
        view = frames_8bit(ds, after)[0]  # the de-identified pixels only
        shown.append((str(ds.Modality), outlined(view, blanked), result.regions))
        if len(shown) == count:
            break
    if not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 4), squeeze=False)
    for ax, (modality, img, regions) in zip(axes[0], shown, strict=True):
        ax.imshow(img)
        ax.set_title(f"{modality}, synthetic: {regions} regions blanked")
        ax.axis("off")
    return _png(fig)


def build_report(
    ingest: str,
    model_version_dir: str | None,
    score: str | None,
    synthetic: str | None = None,
) -> str:
    """The report as one HTML string.

    Args:
        ingest: the ingest output folder (local).
        model_version_dir: the trained model version folder, if any.
        score: the score output folder of the run, if any.
        synthetic: the synthetic corpus folder (with phi.json), for a before/after
            example of burned-in text redaction; only the demo passes it.
    """
    sections: list[tuple[str, str]] = []
    manifest = _json(os.path.join(ingest, MANIFEST_NAME))
    counts = manifest.get("counts", {})
    stage_counts = {
        "ingest: objects seen": counts.get("seen", 0),
        "ingest: converted": counts.get("converted", 0),
        "ingest: dead-lettered": counts.get("dead_lettered", 0),
    }
    score_manifest = None
    if score and os.path.exists(os.path.join(score, MANIFEST_NAME)):
        score_manifest = _json(os.path.join(score, MANIFEST_NAME))
        for key, value in score_manifest.get("counts", {}).items():
            if isinstance(value, int):
                stage_counts[f"score: {key}"] = value
    sections.append(("Counts per stage", _img(_bar(stage_counts, "objects"), "counts")))

    reasons = Counter(
        f"{r[f.STAGE]}: {r[f.ERROR_TYPE]}" for r in read_rows(os.path.join(ingest, ERRORS_TABLE))
    )
    if reasons:
        sections.append(
            ("Dead letters by reason (ingest)", _img(_bar(dict(reasons), "rows"), "reasons"))
        )

    index = read_rows(os.path.join(ingest, INDEX_DIR))
    balance = Counter(f"{r[f.SPLIT]} / label {r[f.LABEL]}" for r in index)
    sections.append(
        ("Label balance per split", _img(_bar(dict(sorted(balance.items())), "images"), "balance"))
    )
    redacted = redaction_counts(index)
    if redacted["images redacted"]:
        example = redaction_example(synthetic) if synthetic else None
        content = _img(_bar(redacted, "count"), "redaction")
        if example:
            content += _img(example, "redacted images, blanked regions outlined")
        sections.append(("Burned-in text redacted (pixels.policy redact)", content))
    samples = _samples(ingest)
    if samples:
        sections.append(("Sample de-identified images (as trained on)", _img(samples, "samples")))

    task = None
    if model_version_dir:
        from models.export import version_task

        task = version_task(model_version_dir)
        history = _json(os.path.join(model_version_dir, "history.json"))["epochs"]
        metrics = _json(os.path.join(model_version_dir, "metrics.json"))
        figures = _img(_curves(history, task.monitor), "training curves")
        sections.append(("Training curves", figures))
        if task.name == SEGMENTATION:
            sections += segmentation_sections(metrics, model_version_dir)
        else:
            curves = "".join(
                _file_img(os.path.join(model_version_dir, name), name)
                for name in ("roc.png", "pr.png")
                if os.path.exists(os.path.join(model_version_dir, name))
            )
            summary = ", ".join(
                f"{k} {metrics[k]:.3f}" for k in ("roc_auc", "pr_auc", "accuracy") if k in metrics
            )
            sections.append((f"Test split: {html.escape(summary)}", curves))
            sections += evaluation_sections(metrics, model_version_dir)

    if score and task is not None and task.name == SEGMENTATION:
        sections += segmentation_score_sections(score)
        score = None  # the classification views below read columns a U-Net's table lacks
    if score:
        scores = read_rows(os.path.join(score, SCORES_TABLE))
        if scores:
            sections.append(
                ("Score histogram per modality", _img(_score_histogram(scores), "histogram"))
            )
            explained = [r for r in scores if r.get("explanation")]
            if explained:
                best = max(explained, key=lambda r: r["score"])
                path = best["explanation"]
                path = path if os.path.isabs(path) else os.path.join(score, path)
                if os.path.exists(path):
                    caption = f"Grad-CAM of the top-scored image (score {best['score']:.3f})"
                    sections.append((caption, _file_img(path, "grad-cam")))
        table = os.path.join(score, SCORES_TABLE, "**", "*.parquet")
        queries = f"""-- top scores per study
SELECT study_instance_uid, max(score) AS top, count(*) AS images
FROM read_parquet('{table}', hive_partitioning = true)
GROUP BY 1 ORDER BY top DESC LIMIT 10;

-- score distribution per modality
SELECT modality, count(*) AS n, avg(score) AS mean, quantile_cont(score, 0.9) AS p90
FROM read_parquet('{table}', hive_partitioning = true) GROUP BY 1 ORDER BY 1;

-- join with the ingest index (labels, splits)
SELECT s.modality, i.label, avg(s.score) AS mean_score, count(*) AS n
FROM read_parquet('{table}', hive_partitioning = true) s
JOIN read_parquet('{os.path.join(ingest, INDEX_DIR, "*.parquet")}') i
  USING (sop_instance_uid, frame)
GROUP BY 1, 2 ORDER BY 1, 2;"""
        sections.append(("DuckDB queries to try", f"<pre>{html.escape(queries)}</pre>"))

    body = "\n".join(f"<h2>{title}</h2>\n<div>{content}</div>" for title, content in sections)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>dicomflow report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}
img{{max-width:100%;margin:4px}}
td,th{{border:1px solid #ccc;padding:2px 6px}} table{{border-collapse:collapse}}
pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style>
</head><body><h1>dicomflow run report</h1>
<p>Run {html.escape(str(manifest.get("run_id", "")))}: every identifier shown is a
pseudonym; images are the de-identified, normalized pixels the model sees.</p>
{body}
</body></html>
"""
