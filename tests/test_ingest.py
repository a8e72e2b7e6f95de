"""`dicomflow ingest` end to end on the synthetic corpus."""

import csv
import gzip
import json
import os
from collections import defaultdict
from pathlib import Path

import apache_beam as beam
import pytest
import tensorflow as tf
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
from pipelines import ingest
from pipelines.options import UsageError
from transforms import deid

KEY = "i" * 64
MULTI_PROCESSING = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("DF_INGEST_KEY", KEY)


def run_ingest(corpus: Path, output: Path, *extra: str) -> dict:
    argv = ["--input", str(corpus / "export"), "--output", str(output)]
    argv += ["--key-env", "DF_INGEST_KEY", "--labels", str(corpus / "labels.csv"), *extra]
    assert ingest.run(argv) == 0
    return json.loads((output / "manifest.json").read_text())


def examples(output: Path) -> dict[str, list[bytes]]:
    found = {}
    for split in ingest.ALL_SPLITS:
        records = []
        for path in sorted((output / "tfrecords" / split).glob("part-*.tfrecord.gz")):
            records += [r.numpy() for r in tf.data.TFRecordDataset(str(path), "GZIP")]
        found[split] = records
    return found


@pytest.fixture(scope="module")
def ingest_run(corpus, tmp_path_factory):
    os.environ["DF_INGEST_KEY"] = KEY
    out = tmp_path_factory.mktemp("ingest")
    return out, run_ingest(corpus, out)


def test_every_object_is_converted_or_dead_lettered(corpus, ingest_run):
    out, manifest = ingest_run
    counts = manifest["counts"]
    assert counts["seen"] == counts["converted"] + counts["dead_lettered"]
    assert counts["seen"] == count_objects(corpus / "export")
    assert len(read_table(str(out / "errors"))) == counts["dead_lettered"]
    index = read_table(str(out / "index"))
    assert len(index) == counts["examples"]
    found = examples(out)
    assert {s: len(v) for s, v in found.items() if v} == counts["examples_by_split"]
    assert manifest["key_fingerprint"] and KEY not in json.dumps(manifest)
    stats = manifest["tf_transform"]
    assert 0 < stats["pixel_mean"] < 1 and stats["pixel_std"] > 0
    assert stats["labels"] and set(stats["labels"]) <= {"0", "1"}  # what train holds


def test_the_pipeline_itself_completes_the_manifest_and_clears_its_scratch(corpus, ingest_run):
    # ingest.run only runs the pipeline: what a flex-template launch (which never waits
    # for its job) gets is the same, statistics, label counts and clean-up included.
    out, manifest = ingest_run
    with open(corpus / "labels.csv") as fh:
        rows = sum(1 for _ in csv.DictReader(fh))
    labels = manifest["labels"]
    assert labels["given"] and labels["rows"] == rows
    assert labels["conflicting_rows"] == 0  # the synthetic export never contradicts itself
    assert isinstance(labels["unmatched_rows"], int) and 0 <= labels["unmatched_rows"] < rows
    assert "labels" not in manifest["counts"]
    assert "pixel_mean" in manifest["tf_transform"]
    assert not (out / "tmp").exists() and (out / "transform" / "transform_fn").is_dir()


def test_no_patient_in_two_splits_and_labels_joined_right(corpus, ingest_run):
    out, _ = ingest_run
    index = read_table(str(out / "index"))
    splits = defaultdict(set)
    for row in index:
        splits[row[f.PATIENT_ID]].add(row[f.SPLIT])
    assert all(len(s) == 1 for s in splits.values())
    assert "train" in {s for v in splits.values() for s in v}
    # The label of each instance is the one the export gave its original SOPInstanceUID.
    engine = deid.Deidentifier(deid.Profile.load(), deid.DeidConfig(), KEY.encode())
    with open(corpus / "labels.csv") as fh:
        expected = {
            engine.pseudonyms.uid(r["SOPInstanceUID"]): r["label"] for r in csv.DictReader(fh)
        }
    labelled = [r for r in index if r[f.LABEL] is not None]
    assert labelled and all(expected[r[f.SOP_INSTANCE_UID]] == r[f.LABEL] for r in labelled)
    assert all(r[f.SPLIT] == "unlabeled" for r in index if r[f.LABEL] is None)


def test_leak_scan_of_tfrecords_and_index(phi, ingest_run):
    out, manifest = ingest_run
    planted = phi_values({k: v for k, v in phi.items() if k != "date"})
    assert len(planted) >= 100  # not vacuous: hundreds of values are looked for ...
    scanned = 0
    for path in (out / "tfrecords").rglob("*.tfrecord.gz"):
        data = gzip.decompress(path.read_bytes())
        assert not [v for v in planted if v.encode() in data], path.name
        scanned += sum(1 for _ in tf.data.TFRecordDataset(str(path), "GZIP"))
    # ... in every example and index row ingest wrote, and it wrote some.
    assert scanned == manifest["counts"]["examples"] >= 10
    rows = read_table(str(out / "index"))
    assert len(rows) == manifest["counts"]["converted"] >= 10
    for row in rows:
        assert not [v for v in planted if v in json.dumps(row, default=str)]


def test_examples_parse_with_the_feature_spec(ingest_run):
    out, _ = ingest_run
    record = examples(out)["train"][0]
    parsed = tf.io.parse_single_example(record, f.raw_feature_spec())
    size = f.DEFAULT_IMAGE_SIZE
    assert int(parsed[f.IMAGE_HEIGHT]) == int(parsed[f.IMAGE_WIDTH]) == size
    assert len(parsed[f.IMAGE].numpy()) == size * size
    assert parsed[f.PATIENT_ID].numpy().startswith(b"PAT")


def test_rerun_gives_the_same_examples_and_no_duplicates(corpus, ingest_run, tmp_path):
    out, _ = ingest_run
    again = tmp_path / "again"
    stale = again / "tfrecords" / "train" / "part-00003-of-00004.tfrecord.gz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left over from an older run")
    run_ingest(corpus, again, *MULTI_PROCESSING)
    first, second = examples(out), examples(again)
    for split in ingest.ALL_SPLITS:
        assert sorted(first[split]) == sorted(second[split])
        assert len(set(second[split])) == len(second[split])
    assert not stale.exists()


def test_dataflow_dry_run_builds_the_job(gcs):
    from apache_beam.io.filesystems import FileSystems

    key_uri = f"{gcs}/keys/ingest.key"
    with FileSystems.create(key_uri) as fh:
        fh.write(KEY.encode())
    argv = [
        "--input=gs://bucket/export",
        "--output=gs://bucket/ingest",
        f"--key-file={key_uri}",
        "--tfrecord-shards=16",
        *DATAFLOW_DRY_RUN,
    ]
    pipeline = build(ingest, ingest.IngestOptions, argv)
    result = pipeline.run()
    names = dry_run_steps(result)
    prepare = ("PrepareInstances/Parse", "PrepareInstances/Convert")
    for step in ("ReadInstances", *prepare, "WriteTrain", "TfTransform", "WriteIndex"):
        assert step in names
    assert_key_stays_home(result, KEY, key_uri)
    # Our flags are ours: Dataflow is not sent them as pipeline options.
    shipped = pipeline.options.get_all_options(retain_unknown_options=True)
    assert not {"input", "output", "key_file", "tfrecord_shards"} & set(shipped)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--split", "0.5,0.5"], "three fractions"),
        (["--split", "0.5,0.4,0.4"], "--split"),
        (["--pixel-config", "bad.yaml"], "unknown pixel config keys"),
        (["--labels", "labels.csv"], "label"),
        (["--tfrecord-shards", "-1"], "--tfrecord-shards"),
    ],
)
def test_bad_arguments_fail_before_any_work(extra, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.dcm").write_bytes(b"x")
    (tmp_path / "bad.yaml").write_text("blur: 3\n")
    (tmp_path / "labels.csv").write_text("Name,Thing\nA,B\n")
    with pytest.raises(UsageError, match=message):
        ingest.run(["--input", "in", "--output", "out", "--key-env", "DF_INGEST_KEY", *extra])
    assert not (tmp_path / "out").exists()


def test_from_the_emulated_bucket(gcs, tmp_path):
    """Objects and labels read from gs://, and every output written there, the transform
    graph included (through the emulator: no storage mocks)."""
    import tensorflow_transform as tft
    from apache_beam.io.filesystems import FileSystems

    from pipelines import synth

    corpus, out = f"{gcs}/ingest-corpus", f"{gcs}/ingest-out"
    synth.run(["--output", corpus, "--patients", "3", "--seed", "9"])
    argv = ["--input", f"{corpus}/export", "--output", out, "--key-env", "DF_INGEST_KEY"]
    assert ingest.run([*argv, "--labels", f"{corpus}/labels.csv"]) == 0
    with FileSystems.open(f"{out}/manifest.json") as fh:
        manifest = json.loads(fh.read())
    counts = manifest["counts"]
    assert counts["seen"] == counts["converted"] + counts["dead_lettered"] > 0
    assert len(read_table(f"{out}/index")) == counts["examples"]
    assert FileSystems.match([f"{out}/tfrecords/*/part-*.tfrecord.gz"])[0].metadata_list
    # The graph, fetched from the bucket, is whole: it loads and holds the vocabulary.
    (matched,) = FileSystems.match([f"{out}/transform/**"])
    for meta in matched.metadata_list:
        local = tmp_path / meta.path[len(out) + 1 :]
        local.parent.mkdir(parents=True, exist_ok=True)
        with FileSystems.open(meta.path) as fh:
            local.write_bytes(fh.read())
    graph = tft.TFTransformOutput(str(tmp_path / "transform"))
    vocabulary = [v.decode() for v in graph.vocabulary_by_name(f.LABEL_VOCABULARY)]
    assert vocabulary == manifest["tf_transform"]["labels"]
    assert not FileSystems.match([f"{out}/tmp/**"])[0].metadata_list


def test_the_launcher_never_imports_tensorflow(tmp_path):
    """Building the ingest graph (what a launcher does, Dataflow's included) imports neither
    TensorFlow nor tf.Transform: only the step that writes the graph does, on a worker."""
    import subprocess
    import sys

    script = """
import sys
from pipelines import ingest
from pipelines.options import new_pipeline, parse_options
opts, beam_options = parse_options("ingest", sys.argv[1:], ingest.IngestOptions)
ingest.build_pipeline(new_pipeline(beam_options), ingest.configure(opts, beam_options))
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "sklearn")))
"""
    (tmp_path / "in").mkdir()
    argv = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    done = subprocess.run(
        [sys.executable, "-c", script, *argv, "--key-env", "DF_INGEST_KEY"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(ingest.__file__).parents[1])},
    )
    assert done.stdout.strip() == "[]"


def test_write_tfrecords_writes_gzip_shards_and_removes_stale_ones(tmp_path):
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    (tmp_path / "part-00003-of-00004.tfrecord.gz").write_bytes(b"an older run's shard")
    records = [f"example {i}".encode() for i in range(10)]
    with TestPipeline() as p:
        examples = p | beam.Create(records)
        kept = examples | ingest.WriteTFRecords(str(tmp_path), num_shards=2)
        names = [f"part-0000{i}-of-00002.tfrecord.gz" for i in range(2)]
        assert_that(kept, equal_to([names]))
    files = sorted(tmp_path.iterdir())
    assert [p.name for p in files] == names
    read = [r.numpy() for r in tf.data.TFRecordDataset([str(p) for p in files], "GZIP")]
    assert sorted(read) == records
