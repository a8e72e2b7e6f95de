"""Segmentation end to end on DirectRunner: synth --masks → ingest --task segmentation →
train --task segmentation (a U-Net) → the version, its figures, its model card, the report
and the demo's summary; the exported model serves label maps for raw image bytes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from models import export
from models.inputs import read_info, shard_files
from pipelines import demo
from pipelines.report import build_report

REQUIRED = (
    "dice",
    "dice_ci_low",
    "dice_ci_high",
    "lesion_sensitivity",
    "false_positives_per_image",
)


@pytest.fixture(scope="module")
def version(seg_model) -> Path:
    return Path(export.resolve_model(str(seg_model)))


def test_the_unet_reaches_the_dice_the_issue_asks_with_its_interval(version):
    metrics = json.loads((version / "metrics.json").read_text())
    assert set(REQUIRED) <= set(metrics)
    # Promoted means test Dice >= --min-dice 0.8 (the fixture's gate): checked again here.
    assert (version.parent / "latest").read_text().strip() == version.name
    assert metrics["dice"] >= 0.80, metrics["dice"]
    assert metrics["dice_ci_low"] <= metrics["dice"] <= metrics["dice_ci_high"]
    assert metrics["patients"] >= 4 and metrics["examples"] >= 10
    assert metrics["lesion_sensitivity"] >= 0.8
    assert metrics["eval_dice"] > 0 and metrics["best_epoch"] >= 1
    assert [p["threshold"] for p in metrics["froc"]] == sorted(
        p["threshold"] for p in metrics["froc"]
    )
    info = json.loads((version / "model.json").read_text())
    assert (info["task"], info["network"], info["labels"]) == ("segmentation", "unet", ["0", "1"])
    assert info["class_names"] == {"1": "lesion"}  # synth's segment label, past the content check
    assert info["threshold"] is None and info["calibration"] is None
    for name in ("froc.png", "contours.png", "MODEL_CARD.md", "history.json", "config.json"):
        assert (version / name).stat().st_size > 0, name
    card = (version / "MODEL_CARD.md").read_text()
    assert "Dice" in card and "over patients" in card and "depth 3, width 16" in card
    assert "ROC AUC" not in card and "class weights" not in card


def test_the_exported_unet_serves_label_maps_for_raw_bytes(version, seg_data):
    import tensorflow as tf

    from models import features as f

    served = export.load_serving(str(version))
    info = read_info(str(seg_data))
    spec = {k: f.mask_feature_spec()[k] for k in (f.IMAGE, f.MASK, f.LABEL)}
    records = tf.data.TFRecordDataset(shard_files(str(seg_data), f.TEST), "GZIP")
    images, masks = [], []
    for record in records:
        ex = tf.io.parse_single_example(record, spec)
        if ex[f.LABEL].numpy():  # a masked image
            images.append(ex[f.IMAGE].numpy())
            masks.append(np.frombuffer(ex[f.MASK].numpy(), np.uint8).reshape(info.image_shape[:2]))
    probabilities = served.predict(images)
    assert probabilities.shape == (len(images), *info.image_shape[:2], 2)
    predicted = probabilities.argmax(axis=-1)
    truth = np.stack(masks) > 0
    overlap = (predicted.astype(bool) & truth).sum() * 2 / (predicted.sum() + truth.sum())
    assert overlap > 0.7  # pooled over the test images: the served model is the evaluated one


def test_the_report_and_the_demo_summary_show_the_segmentation_figures(version, seg_data, tmp_path):
    report = build_report(str(seg_data), str(version), None)
    assert re.search(r"<h2>Test split: Dice 0\.\d{3}</h2>", report)
    for alt in ("froc.png", "contours.png", "training curves"):
        assert f'alt="{alt}"' in report
    assert "lesion sensitivity" in report and "over patients" in report
    lines = demo.segmentation_lines(
        version.name, json.loads((version / "metrics.json").read_text())
    )
    assert re.match(r"model version \d+: test Dice 0\.\d{3} \(95 % CI", lines[0])
    assert "false positives per image" in lines[1]
    # The demo's run.yaml for segmentation: the task at the top, no labels, a Dice gate.
    args = demo._parse(["--workdir", str(tmp_path), "--task", "segmentation"])
    config = demo.write_config(args, str(tmp_path))
    text = Path(config).read_text()
    assert "task: segmentation" in text and "labels" not in text and "min_dice" in text
    from pipelines import run as run_mod

    loaded = run_mod.load_config(config)
    assert loaded.train.config.task == "segmentation"


def test_the_trained_unet_scores_raw_dicom_and_writes_seg_back(seg_model, seg_data, tmp_path):
    """The chain's last step on the same corpus and key: one patient's raw export scored
    with --write-seg; each SEG passes dciodvfy and references an instance ingest indexed."""
    import shutil
    import subprocess

    import pydicom
    from conftest import read_table

    from models import features as f
    from pipelines import score

    export_dir = seg_data.parent / "corpus" / "export"
    patient = next(p for p in sorted(export_dir.iterdir()) if p.is_dir() and "PID" in p.name)
    out = tmp_path / "score"
    argv = ["--input", str(patient), "--model", str(seg_model), "--output", str(out)]
    assert score.run([*argv, "--key-env", "DF_SEG_DATA_KEY", "--write-seg", "--run-id", "r"]) == 0
    rows = read_table(str(next((out / "scores").glob("model_version=*/run_id=r"))))
    index = {r[f.SOP_INSTANCE_UID] for r in read_table(str(seg_data / "index"))}
    written = [r for r in rows if r[f.SEG_URI]]
    assert written and all(r[f.SOP_INSTANCE_UID] in index for r in rows)
    assert any(sum(r[f.FOREGROUND_AREA]) for r in written)  # every study is positive
    assert shutil.which("dciodvfy"), "dciodvfy missing: apt-get install dicom3tools (.ci/run)"
    for row in written:  # every kind of source: projection images have no patient geometry
        checked = subprocess.run(
            ["dciodvfy", row[f.SEG_URI]], capture_output=True, text=True, timeout=60
        )
        assert not [line for line in checked.stderr.splitlines() if "Error" in line]
        seg = pydicom.dcmread(row[f.SEG_URI])
        referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
        assert referenced.ReferencedSOPInstanceUID == row[f.SOP_INSTANCE_UID]
        assert seg.SegmentSequence[0].SegmentLabel == "lesion"
