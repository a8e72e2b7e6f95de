"""Shared fixtures: one synthetic corpus per session, locally and in an emulated bucket."""

import fcntl
import json
import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from gcs_emulator import running_emulator

from pipelines import synth as synth_pipeline

CORPUS_PATIENTS = 8
CORPUS_SEED = 3
BUCKET = "dicomflow-test"


# Modules whose tests run whole pipelines, servers (Orthanc, the GCS emulator), training or
# console commands: `make check` (-m "not slow") leaves them to `make test`. A test
# elsewhere that is as slow carries @pytest.mark.slow itself.
SLOW_MODULES = {
    "test_deid_dciodvfy", "test_deid_leaks", "test_deidentify", "test_demo", "test_deploy",
    "test_dicomweb", "test_dimse", "test_failures", "test_fuzz", "test_inference",
    "test_ingest", "test_inputs", "test_inventory", "test_run", "test_score",
    "test_score_segmentation", "test_synth_pipeline", "test_train", "test_trainer",
    "test_transform_writer", "test_train_segmentation",
}  # fmt: skip


# The longest modules, longest first: `make test` (pytest-xdist, --dist loadfile
# --no-loadscope-reorder) hands whole files to the workers in collection order, so these
# start first and the many quick files fill the gaps at the end (longest first; left to
# xdist, files were ordered by their number of tests, and the few-test training modules
# started last, on one worker, while the other sat idle). The first two build the
# segmentation and the classification fixtures on different workers, so that neither waits
# on the other's lock in `shared`; the modules that reuse `train_data` and `score_model`
# come after them. Order: a whole run's module times (2026-12-07, benchmarks/RESULTS.md).
LONGEST_FIRST = [
    "test_train_segmentation", "test_trainer", "test_deidentify", "test_dimse", "test_run",
    "test_quiet", "test_demo", "test_dicomweb", "test_score", "test_ingest", "test_train",
    "test_redact", "test_fuzz", "test_dicom_io", "test_inventory", "test_cli", "test_deid_leaks",
    "test_ingest_masks", "test_deid", "test_synth_pipeline", "test_score_segmentation",
    "test_failures",
]  # fmt: skip


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if item.module is not None and item.module.__name__ in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    # A stable sort: each file's tests stay together and in their order.
    items.sort(key=lambda item: rank.get(item.module.__name__ if item.module else "", len(rank)))


def shared(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder ``build`` fills once per test run, also across pytest-xdist workers (they
    share the parent of their base temp folders): the first worker builds it under a lock,
    the others wait and reuse it. Only for outputs that tests read and never change."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    root = base / f"shared-{name}"
    with open(base / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / ".complete").exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            build(root)
            (root / ".complete").touch()
    return root


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A synthetic export written by the real synth pipeline (DirectRunner, in memory), once
    for all workers (tests only read it)."""

    def build(root: Path) -> None:
        argv = ["--output", str(root), "--patients", str(CORPUS_PATIENTS)]
        synth_pipeline.run([*argv, "--seed", str(CORPUS_SEED)])

    return shared(tmp_path_factory, "corpus", build)


@pytest.fixture(scope="session")
def phi(corpus) -> dict[str, list[str]]:
    return json.loads((corpus / "phi.json").read_text())


@pytest.fixture(scope="session")
def gcs():
    """The GCS emulator on loopback, with one bucket; yields ``gs://<bucket>``."""
    from google.cloud import storage

    with running_emulator():
        storage.Client(project="dicomflow-test").create_bucket(BUCKET)
        yield f"gs://{BUCKET}"


def count_objects(root: Path) -> int:
    """Objects the reading layer must account for, counted independently of it.

    A loose file counts once; an archive once per member that is not a folder (links
    included: they must get a row too), or once if it holds nothing.
    """
    total = 0
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                total += max(1, sum(1 for i in zf.infolist() if not i.is_dir()))
        elif path.name.endswith((".tar", ".tar.gz", ".tgz")):
            with tarfile.open(path) as tf:
                total += max(1, sum(1 for m in tf.getmembers() if not m.isdir()))
        else:
            total += 1
    return total


# Beam options that build a Dataflow job without submitting it (nothing leaves the machine).
DATAFLOW_DRY_RUN = [
    "--runner=DataflowRunner",
    "--dry_run",
    "--no_auth",
    "--project=dicomflow-test",
    "--region=europe-west4",
    "--temp_location=gs://bucket/tmp",
]


def build(module, options: type, argv: list[str]):
    """A command's pipeline as its ``run`` builds it: flags → config → graph (not run)."""
    from pipelines.options import new_pipeline, parse_options

    opts, beam_options = parse_options("test", argv, options)
    return module.build_pipeline(new_pipeline(beam_options), module.configure(opts, beam_options))


def dry_run_steps(result) -> set[str]:
    """The step names of a job a dry run built."""
    return {t.unique_name for t in result.job.proto_pipeline.components.transforms.values()}


def shipped_fns(result) -> list:
    """Every DoFn of a job a dry run built, unpickled as a Dataflow worker would get it."""
    from apache_beam.internal import pickler
    from apache_beam.portability.api import beam_runner_api_pb2

    fns = []
    for transform in result.job.proto_pipeline.components.transforms.values():
        if transform.spec.urn == "beam:transform:pardo:v1":
            payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            if payload.do_fn.payload:
                fns.append(pickler.loads(payload.do_fn.payload)[0])
    return fns


def assert_key_stays_home(result, key: str, key_uri: str) -> None:
    """The secret key is nowhere in the job a dry run built: the DoFns that need it hold a
    KeySource naming where it lives, and read it on the worker (setup())."""
    from transforms.keys import KeySource

    fns = shipped_fns(result)
    sources = [v for fn in fns for v in vars(fn).values() if isinstance(v, KeySource)]
    assert sources and {(s.env, s.file) for s in sources} == {(None, key_uri)}
    assert not [fn for fn in fns if key in repr(vars(fn))]


def corpus_objects(root: Path):
    """Every readable DICOM candidate under ``root``, archives expanded (the reading layer)."""
    from transforms import dicom_io

    for path in sorted(root.rglob("*")):
        if path.is_file():
            for item in dicom_io.iter_objects(str(path), path.stat().st_size):
                if isinstance(item, dicom_io.SourceObject):
                    yield item


def read_table(uri: str) -> list[dict]:
    """All rows of a ``part-*.parquet`` table, local or gs://."""
    files = sorted(m.path for m in FileSystems.match([f"{uri}/part-*.parquet"])[0].metadata_list)
    rows: list[dict] = []
    for path in files:
        with FileSystems.open(path) as fh:
            rows.extend(pq.read_table(fh).to_pylist())
    return rows


def phi_values(phi: dict[str, list[str]], min_len: int = 6) -> set[str]:
    """Planted values worth scanning for (short ones, like sex codes, match by chance)."""
    values = (vs for k, vs in phi.items() if k != "text_boxes")  # boxes are not strings
    return {v for vs in values for v in vs if len(v) >= min_len}


def _pixels_kept(root: Path) -> str:
    """A de-identification config that keeps burned-in text (pixels.policy keep), for a
    training fixture: OCR redaction was most of its ingest time (train_data's synth + ingest
    took 275 s with it and 26 s without, 2026-12-07, loaded), and what the fixture feeds
    (training, export, scoring) does not depend on it. Redaction has its own tests
    (test_redact, test_deidentify, test_ingest_masks), and the chains that run ingest or
    score with the defaults (test_score, test_quiet, test_demo) redact."""
    path = root / "deid.yaml"
    path.write_text("pixels:\n  policy: keep\n")
    return str(path)


# A small, balanced ingest output for training tests: 60 patients, half of the studies
# positive, 64 x 64 images, 60/20/20 split (about 130 train and 65 each eval and test).
# The easy lesion task: these tests check that training works, which needs a task a few
# epochs can learn; the default (standard) task is for measuring models.
TRAIN_DATA_PATIENTS = 60
TRAIN_DATA_SEED = 5
TRAIN_DATA_KEY = "i" * 64  # the split follows the keyed patient pseudonyms


@pytest.fixture(scope="session")
def train_data(tmp_path_factory) -> Path:
    """A real ingest output (synth → ingest, DirectRunner) to train on, built once."""
    return shared(tmp_path_factory, "train-data", _build_train_data) / "ingest"


def _build_train_data(root: Path) -> None:
    from pipelines import ingest

    corpus, out = root / "corpus", root / "ingest"
    synth = ["--output", str(corpus), "--patients", str(TRAIN_DATA_PATIENTS)]
    synth_pipeline.run(
        [*synth, "--seed", str(TRAIN_DATA_SEED), "--positive-rate", "0.5", "--difficulty", "easy"]
    )
    (root / "pixels.yaml").write_text("size: 64\n")
    os.environ["DF_TRAIN_DATA_KEY"] = TRAIN_DATA_KEY
    argv = ["--input", str(corpus / "export"), "--output", str(out)]
    argv += ["--labels", str(corpus / "labels.csv"), "--key-env", "DF_TRAIN_DATA_KEY"]
    argv += ["--pixel-config", str(root / "pixels.yaml"), "--split", "0.6,0.2,0.2"]
    argv += ["--deid-config", _pixels_kept(root)]
    assert ingest.run(argv) == 0


@pytest.fixture(scope="session")
def score_model(train_data, tmp_path_factory) -> Path:
    """A model directory with one tiny exported version (64 px, one epoch on train_data):
    scoring needs a real exported model, not a good one. Built once."""
    from models import trainer

    def build(root: Path) -> None:
        config = trainer.TrainConfig(
            data=str(train_data),
            model_dir=str(root / "models"),
            epochs=1,
            batch_size=64,
            augment="none",
            min_auc=0.0,
        )
        trainer.train(config, log=lambda _: None)

    return shared(tmp_path_factory, "score-model", build) / "models"


# Segmentation end to end: every study positive, the lesions' masks as SEG (and RTSTRUCT for
# some CT and MR series) beside the images, the easy lesion task, 64 px, a 50/25/25 split
# (about 50 masked train images, 25 each eval and test, of 6 patients each).
SEG_DATA_PATIENTS = 24
SEG_DATA_SEED = 5
SEG_DATA_KEY = "s" * 64


@pytest.fixture(scope="session")
def seg_data(tmp_path_factory) -> Path:
    """``synth --masks`` → ``ingest --task segmentation`` (DirectRunner), built once."""
    return shared(tmp_path_factory, "seg-data", _build_seg_data) / "ingest"


def _build_seg_data(root: Path) -> None:
    from pipelines import ingest

    corpus, out = root / "corpus", root / "ingest"
    synth = ["--output", str(corpus), "--patients", str(SEG_DATA_PATIENTS), "--masks"]
    synth_pipeline.run(
        [*synth, "--seed", str(SEG_DATA_SEED), "--positive-rate", "1", "--difficulty", "easy"]
    )
    (root / "pixels.yaml").write_text("size: 64\n")
    os.environ["DF_SEG_DATA_KEY"] = SEG_DATA_KEY
    argv = ["--input", str(corpus / "export"), "--output", str(out), "--task", "segmentation"]
    argv += ["--key-env", "DF_SEG_DATA_KEY", "--pixel-config", str(root / "pixels.yaml")]
    assert ingest.run([*argv, "--split", "0.5,0.25,0.25"]) == 0


@pytest.fixture(scope="session")
def seg_model(seg_data, tmp_path_factory) -> Path:
    """A model directory with a U-Net trained on ``seg_data`` (promoted: Dice >= 0.8)."""
    from models import trainer

    def build(root: Path) -> None:
        config = trainer.TrainConfig(
            data=str(seg_data),
            model_dir=str(root / "models"),
            task="segmentation",
            epochs=SEG_MODEL_EPOCHS,
            patience=15,
            batch_size=8,
            min_dice=0.8,
        )
        trainer.train(config, log=lambda _: None)

    return shared(tmp_path_factory, "seg-model", build) / "models"


SEG_MODEL_EPOCHS = 60  # early stopping ends it sooner (test Dice 0.84 at epoch 39 of 45)
