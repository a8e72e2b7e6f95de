"""`dicomflow score` end to end: raw DICOM and ingest TFRecords, local and gs://."""

import json
import os
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from conftest import (
    DATAFLOW_DRY_RUN,
    assert_key_stays_home,
    build,
    count_objects,
    dry_run_steps,
    phi_values,
    read_table,
)

from models import features as f
from models.tasks import ModelInfo
from pipelines import ingest, score, score_config
from pipelines.options import UsageError
from transforms.storage import write_bytes

KEY = "s" * 64
MULTI_PROCESSING = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("DF_SCORE_KEY", KEY)


def run_score(inputs: list[str], model: Path, output, *extra: str) -> dict:
    argv = [a for uri in inputs for a in ("--input", str(uri))]
    argv += ["--model", str(model), "--output", str(output), *extra]
    assert score.run(argv) == 0
    with FileSystems.open(f"{output}/manifest.json") as fh:
        return json.load(fh)


def scores(output, run_id: str, version: str = "1") -> list[dict]:
    return read_table(f"{output}/scores/model_version={version}/run_id={run_id}")


def by_image(rows: list[dict]) -> dict[tuple[str, int], dict]:
    return {(r[f.SOP_INSTANCE_UID], r[f.FRAME]): r for r in rows}


@pytest.fixture(scope="module")
def raw_run(corpus, score_model, tmp_path_factory):
    """The synthetic corpus scored straight from DICOM, with Grad-CAM for the top 3."""
    os.environ["DF_SCORE_KEY"] = KEY
    out = tmp_path_factory.mktemp("score-raw")
    manifest = run_score(
        [corpus / "export"], score_model, out,
        "--key-env", "DF_SCORE_KEY", "--run-id", "raw", "--explain-top", "3", "--batch-size", "16",
    )  # fmt: skip
    return out, manifest


@pytest.fixture(scope="module")
def ingested(corpus, tmp_path_factory) -> Path:
    """The same corpus through ingest, under the same key and the model's pixel settings."""
    os.environ["DF_SCORE_KEY"] = KEY
    root = tmp_path_factory.mktemp("score-ingest")
    (root / "pixels.yaml").write_text("size: 64\n")
    out = root / "ingest"
    argv = ["--input", str(corpus / "export"), "--output", str(out), "--key-env", "DF_SCORE_KEY"]
    argv += ["--labels", str(corpus / "labels.csv"), "--pixel-config", str(root / "pixels.yaml")]
    assert ingest.run(argv) == 0
    return out


@pytest.fixture(scope="module")
def tfrecord_run(ingested, score_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("score-tfrecords")
    return out, run_score([ingested], score_model, out, "--run-id", "tf")


def test_every_object_is_scored_or_dead_lettered(corpus, raw_run):
    out, manifest = raw_run
    counts = manifest["counts"]
    assert counts["seen"] == counts["scored"] + counts["dead_lettered"]
    assert counts["seen"] == count_objects(corpus / "export")
    rows = scores(out, "raw")
    assert len(rows) == counts["images"] >= counts["scored"] > 0
    assert len(by_image(rows)) == len(rows)  # one row per (instance, frame)
    assert sum(counts["by_modality"].values()) == counts["scored"]
    errors = read_table(str(out / "errors"))
    assert len(errors) == counts["dead_lettered"]
    reasons = {(e[f.STAGE], e[f.ERROR_TYPE]) for e in errors}
    assert ("deidentify", "burned_in_annotation") not in reasons  # redacted by default
    assert ("read", "not_dicom") in reasons and ("pixels", "no_pixel_data") in reasons
    assert all(e[f.MESSAGE] and e[f.SOURCE] for e in errors)
    assert manifest["model"]["version"] == "1" and manifest["input_format"] == "dicom"
    assert manifest["pixels"]["size"] == 64  # the model's, from model.json
    assert manifest["timings"]["images_per_second"] > 0
    assert manifest["key_fingerprint"] and KEY not in json.dumps(manifest)


def test_rows_are_typed_and_partitioned(raw_run):
    out, manifest = raw_run
    labels = manifest["model"]["labels"]
    positive = labels.index(manifest["model"]["positive_label"])
    (path,) = (out / "scores" / "model_version=1" / "run_id=raw").glob("part-*.parquet")
    parquet = pq.ParquetFile(path)
    assert parquet.schema_arrow == f.SCORES_SCHEMA
    assert parquet.metadata.num_row_groups == 1
    rows = parquet.read().to_pylist()
    assert {r[f.MODEL_VERSION] for r in rows} == {"1"} and {r[f.RUN_ID] for r in rows} == {"raw"}
    threshold = manifest["model"]["threshold"]  # the model's operating point, from model.json
    assert 0 < threshold < 1
    for r in rows:
        assert r[f.SCORED_AT].utcoffset().total_seconds() == 0
        assert r[f.SCORE] == pytest.approx(r[f.SCORES][positive])
        assert sum(r[f.SCORES]) == pytest.approx(1)
        predicted = labels[positive] if r[f.SCORE] >= threshold else labels[1 - positive]
        assert r[f.PREDICTED_LABEL] == predicted
        assert r[f.SOP_INSTANCE_UID].startswith("2.25.") and r[f.PATIENT_ID].startswith("PAT")


def test_no_patient_data_in_scores_errors_manifest_or_png_names(phi, raw_run):
    out, _ = raw_run
    planted = phi_values({k: v for k, v in phi.items() if k != "date"})
    rows = scores(out, "raw")
    text = json.dumps(rows, default=str)
    text += json.dumps([e[f.MESSAGE] for e in read_table(str(out / "errors"))])
    text += (out / "manifest.json").read_text().replace(str(out), "")
    text += " ".join(p.name for p in (out / "explanations").rglob("*"))
    assert not [v for v in planted if v in text]


def test_explain_top_writes_grad_cam_pngs_for_the_top_scores(raw_run):
    out, manifest = raw_run
    rows = scores(out, "raw")
    explained = [r for r in rows if r[f.EXPLANATION]]
    top = sorted(rows, key=lambda r: (r[f.SCORE], r[f.SOP_INSTANCE_UID], r[f.FRAME]))[-3:]
    assert {id(r) for r in explained} == {id(r) for r in top}
    folder = out / "explanations" / "1" / "raw"
    assert sorted(Path(r[f.EXPLANATION]) for r in explained) == sorted(folder.glob("*.png"))
    for r in explained:
        assert Path(r[f.EXPLANATION]).name == f"{r[f.SOP_INSTANCE_UID]}-{r[f.FRAME]}.png"
        assert Path(r[f.EXPLANATION]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert manifest["tables"]["explanations"] == 3


def test_raw_dicom_and_tfrecords_give_the_same_scores(raw_run, tfrecord_run, ingested):
    (raw_out, _), (tf_out, manifest) = raw_run, tfrecord_run
    raw, tfr = by_image(scores(raw_out, "raw")), by_image(scores(tf_out, "tf"))
    assert raw.keys() == tfr.keys()  # one code path: the same instances, the same pseudonyms
    difference = max(abs(raw[k][f.SCORE] - tfr[k][f.SCORE]) for k in raw)
    assert difference <= 1e-5, difference
    counts = manifest["counts"]
    examples = len(read_table(str(ingested / "index")))
    assert counts["seen"] == counts["scored"] == counts["images"] == examples
    assert manifest["input_format"] == "tfrecords" and "key_fingerprint" not in manifest


def test_rerun_with_the_same_run_id_replaces_its_partition(tfrecord_run, ingested, score_model):
    out, _ = tfrecord_run
    first = scores(out, "tf")
    stale = out / "scores" / "model_version=1" / "run_id=tf" / "part-00007-of-00008.parquet"
    stale.write_bytes(b"left over from an older run")
    run_score([ingested], score_model, out, "--run-id", "tf", *MULTI_PROCESSING)
    again = scores(out, "tf")
    assert not stale.exists() and len(again) == len(first)
    assert len(by_image(again)) == len(again)
    assert by_image(again).keys() == by_image(first).keys()


def test_splits_select_what_an_ingest_root_scores(ingested, score_model, tmp_path):
    manifest = run_score([ingested], score_model, tmp_path, "--splits", "test,unlabeled")
    index = read_table(str(ingested / "index"))
    chosen = {"test", "unlabeled"}
    expected = {(r[f.SOP_INSTANCE_UID], r[f.FRAME]) for r in index if r[f.SPLIT] in chosen}
    assert by_image(scores(tmp_path, manifest["run_id"])).keys() == expected


def test_duckdb_queries_the_output(raw_run, ingested):
    out, _ = raw_run
    con = duckdb.connect()
    top = con.execute(
        f"""
        SELECT study_instance_uid, max(score) AS top_score, count(*) AS images
        FROM read_parquet('{out}/scores/*/*/*.parquet', hive_partitioning = true)
        GROUP BY study_instance_uid ORDER BY top_score DESC
        """
    ).fetchall()
    rows = scores(out, "raw")
    assert sum(n for _, _, n in top) == len(rows)
    assert top[0][1] == pytest.approx(max(r[f.SCORE] for r in rows))
    joined = con.execute(
        f"""
        SELECT i.split, count(*) FROM read_parquet('{out}/scores/*/*/*.parquet') s
        JOIN read_parquet('{ingested}/index/*.parquet') i USING (sop_instance_uid, frame)
        GROUP BY i.split
        """
    ).fetchall()
    assert sum(n for _, n in joined) == len(rows)


def test_from_the_emulated_bucket(gcs, ingested, score_model):
    """DICOM and TFRecords read from gs://, scores written there (the model stays local:
    TensorFlow's own GCS client cannot be pointed at an emulator)."""
    from pipelines import synth

    corpus = f"{gcs}/score-corpus"
    synth.run(["--output", corpus, "--patients", "2", "--seed", "11"])
    raw_out = f"{gcs}/score-out/raw"
    manifest = run_score(
        [f"{corpus}/export"], score_model, raw_out, "--key-env", "DF_SCORE_KEY", "--run-id", "g"
    )
    counts = manifest["counts"]
    assert counts["seen"] == counts["scored"] + counts["dead_lettered"] and counts["scored"]
    assert len(scores(raw_out, "g")) == counts["images"]
    assert len(read_table(f"{raw_out}/errors")) == counts["dead_lettered"]

    copied = f"{gcs}/score-ingest"
    for path in sorted((ingested / "tfrecords").rglob("part-*.tfrecord.gz")):
        write_bytes(f"{copied}/{path.relative_to(ingested)}", path.read_bytes())
    tf_out = f"{gcs}/score-out/tf"
    manifest = run_score([copied], score_model, tf_out, "--run-id", "g")
    assert manifest["input_format"] == "tfrecords"
    assert len(scores(tf_out, "g")) == manifest["counts"]["scored"] == manifest["counts"]["seen"]


def test_dataflow_dry_run_builds_the_job(gcs, score_model, monkeypatch):
    key_uri = f"{gcs}/keys/score.key"
    with FileSystems.create(key_uri) as fh:
        fh.write(KEY.encode())
    local = score_config.resolve_model_info(str(score_model))
    # TensorFlow's GCS client cannot reach the emulator: the model is looked up locally.
    found = ("gs://b/models/1", local[1])
    monkeypatch.setattr(score_config, "resolve_model_info", lambda uri: found)
    common = ["--model=gs://b/models", "--output=gs://b/scores", *DATAFLOW_DRY_RUN]
    argv = [f"--input={gcs}/dry-run/export", f"--key-file={key_uri}", "--explain-top=5"]
    pipeline = build(score, score.ScoreOptions, [*argv, *common])
    result = pipeline.run()
    names = dry_run_steps(result)
    prepare = ("PrepareInstances/Parse", "PrepareInstances/Convert")
    for step in ("ReadInstances", *prepare, "RunInference", "GradCam", "WriteScores"):
        assert step in names
    assert_key_stays_home(result, KEY, key_uri)
    shipped = pipeline.options.get_all_options(retain_unknown_options=True)
    assert not {"input", "output", "model", "key_file", "explain_top"} & set(shipped)
    argv = ["--input=gs://b/ingest/tfrecords/*/part-*.tfrecord.gz", "--batch-size=256"]
    names = dry_run_steps(build(score, score.ScoreOptions, [*argv, *common]).run())
    assert {"ReadExamples", "RunInference", "WriteScores", "WriteErrors"} <= names


@pytest.mark.parametrize(
    ("changes", "extra", "message"),
    [
        ({"--input": None}, [], "--input is required"),
        ({"--output": None}, [], "--output is required"),
        ({"--model": None}, [], "--model is required"),
        ({"--model": "nowhere"}, [], "nowhere holds neither an exported model"),
        ({}, ["--input-format", "png"], "invalid choice: 'png'"),
        ({}, ["--run-id", "../x"], "--run-id takes"),
        ({}, ["--batch-size", "0"], "--batch-size must be >= 1"),
        ({}, ["--max-batch-bytes", "100"], "--max-batch-bytes must hold one image"),
        ({}, ["--splits", "test"], "--splits selects splits of an ingest output"),
        ({}, [], "key is required"),
        ({}, ["--key-env", "DF_SCORE_KEY", "--pixel-config", "p128.yaml"], "make 128x128x1"),
        ({"--input": "tf/part.tfrecord.gz"}, ["--key-env", "DF_SCORE_KEY"], "--key-env: for raw"),
        ({"--input": "tf/part.tfrecord.gz"}, ["--input-format", "dicom"], "key is required"),
        ({}, ["--input", "tf/part.tfrecord.gz"], "--input mixes TFRecords and DICOM"),
        ({}, ["--runner", "DataflowRunner"], "--model gs://... only"),
        ({}, ["--explain", "3"], "unrecognized arguments: --explain"),
    ],
)
def test_bad_arguments_fail_before_any_work(
    changes, extra, message, score_model, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.dcm").write_bytes(b"x")
    (tmp_path / "tf").mkdir()
    (tmp_path / "tf" / "part.tfrecord.gz").write_bytes(b"x")
    (tmp_path / "p128.yaml").write_text("size: 128\n")
    flags = {"--input": "in", "--output": "out", "--model": str(score_model), **changes}
    argv = [a for k, v in flags.items() if v is not None for a in (k, v)] + extra
    with pytest.raises(UsageError, match=message):
        score.run(argv)
    assert not (tmp_path / "out").exists()


def test_pixel_settings_come_from_the_model_or_fit_it():
    def info(size: int, pixels: dict | None = None) -> ModelInfo:
        return ModelInfo.from_json(
            {"version": "1", "labels": ["0", "1"], "positive_label": "1", "network": "cnn"}
            | {"gradcam_layer": None, "created_at": "", "run_id": "", "signature": {}}
            | {"raw_image": "", "image_height": size, "image_width": size, "image_channels": 1}
            | {"pixels": pixels}
        )

    geometry = info(64)
    recorded = info(64, {"size": 64, "channels": 1, "frame_policy": "all"})
    assert score_config.pixel_config(None, recorded).frame_policy == "all"
    # A model exported before model.json recorded them: the defaults, if they fit.
    old = info(224)
    assert score_config.pixel_config(None, old) == score_config.PixelConfig()
    with pytest.raises(UsageError, match=r"the defaults: model\.json records none"):
        score_config.pixel_config(None, geometry)


def test_every_frame_of_a_multi_frame_instance_gets_a_row(corpus, score_model, tmp_path):
    (tmp_path / "frames.yaml").write_text("size: 64\nframe_policy: all\n")
    manifest = run_score(
        [corpus / "export"], score_model, tmp_path / "out", "--key-env", "DF_SCORE_KEY",
        "--pixel-config", str(tmp_path / "frames.yaml"), "--run-id", "frames",
    )  # fmt: skip
    counts = manifest["counts"]
    assert counts["seen"] == counts["scored"] + counts["dead_lettered"]
    rows = scores(tmp_path / "out", "frames")
    assert len(rows) == counts["images"] > counts["scored"]  # the XA cine run
    frames: dict[str, list[int]] = {}
    for r in rows:
        frames.setdefault(r[f.SOP_INSTANCE_UID], []).append(r[f.FRAME])
    assert len(frames) == counts["scored"]
    assert all(sorted(v) == list(range(len(v))) for v in frames.values())
    assert max(len(v) for v in frames.values()) > 1
