"""`dicomflow synth` as a Beam job: deterministic for a seed, in every runner mode."""

import csv
import hashlib
import json
import tarfile
from pathlib import Path

import pytest
from conftest import DATAFLOW_DRY_RUN, build, dry_run_steps, shipped_fns

from pipelines import synth
from pipelines.options import UsageError


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_in_both_runner_modes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synth.run(["--output", str(a), "--patients", "3", "--seed", "11"])
    synth.run(
        [
            "--output",
            str(b),
            "--patients",
            "3",
            "--seed",
            "11",
            "--direct_running_mode=multi_processing",
            "--direct_num_workers=2",
        ]
    )
    synth.run(["--output", str(c), "--patients", "3", "--seed", "12"])
    assert tree_digest(a) == tree_digest(b)
    assert tree_digest(a) != tree_digest(c)


def test_difficulty_reaches_the_images_and_is_reported(tmp_path, capsys):
    out = tmp_path / "ske"
    argv = ["--output", str(out), "--patients", "1", "--seed", "2", "--difficulty", "ske"]
    assert synth.run(argv) == 0
    err = capsys.readouterr().err
    assert "difficulty ske,contrast=1,size=1,noise=1, ideal observer AUC 0." in err
    images = [p for p in (out / "export").rglob("IMG*") if p.suffix in ("", ".dcm")]
    assert images
    import pydicom

    for path in images:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.Modality == "DX" and ds.Rows == 64


def test_refuses_to_mix_two_corpora(corpus):
    with pytest.raises(UsageError, match="already holds a corpus"):
        synth.run(["--output", str(corpus), "--patients", "1"])


def test_labels_and_phi_describe_the_corpus(corpus, phi):
    with open(corpus / synth.LABELS_NAME) as fh:
        labels = list(csv.DictReader(fh))
    assert labels and set(labels[0]) == set(synth.LABEL_COLUMNS)
    assert {r["label"] for r in labels} <= {"0", "1"}
    assert set(r["AccessionNumber"] for r in labels) <= set(phi["accession_number"])
    assert set(r["SOPInstanceUID"] for r in labels) <= set(phi["uid"])
    paths = [str(p) for p in (corpus / "export").rglob("*")]
    folder_names = [n for n in phi["patient_name"] if "_" in n]
    assert folder_names and all(any(n in p for p in paths) for n in folder_names)
    assert json.loads((corpus / synth.PHI_NAME).read_text()) == phi


def test_archives_keep_their_own_bytes(corpus):
    """FileSystems would gzip a .gz name a second time unless told not to."""
    archives = list((corpus / "export").rglob("*.tar.gz"))
    assert archives
    for path in archives:
        with tarfile.open(path) as tf:
            assert all(m.name.startswith(path.parent.name) for m in tf.getmembers())


def test_dataflow_dry_run_builds_the_job():
    argv = ["--output=gs://bucket/corpus", "--patients=100000", *DATAFLOW_DRY_RUN]
    pipeline = build(synth, synth.SynthOptions, argv)
    result = pipeline.run()
    names = dry_run_steps(result)
    assert {"SynthPatients", "WriteFiles", "WritePhi", "WriteLabels"} <= names
    # The workers write where --output says; our flags are not sent as Beam options.
    writers = [fn for fn in shipped_fns(result) if isinstance(fn, synth.SynthFn)]
    assert [w._output for w in writers] == ["gs://bucket/corpus"]
    shipped = pipeline.options.get_all_options(retain_unknown_options=True)
    assert not {"output", "patients", "seed"} & set(shipped)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--patients", "2"], "--output is required"),
        (["--output", "x"], "--patients is required"),
        (["--output", "x", "--patients", "0"], "at least 1"),
        (["--output", "x", "--patients", "2", "--positive-rate", "2"], "between 0 and 1"),
        (["--output", "x", "--patients", "two"], "invalid int value"),
        (["--output", "x", "--patients", "2", "--seed", "-1"], "--seed must be 0 or more"),
        (["--output", "x", "--patients", "2", "--difficulty", "extreme"], "--difficulty: "),
        (["--output", "x", "--patients", "2", "--difficulty", "noise=0"], "noise must be"),
    ],
)
def test_bad_arguments(argv, message):
    with pytest.raises(UsageError, match=message):
        synth.run(argv)


def test_masks_deliver_seg_and_rtstruct_beside_the_images(tmp_path, capsys):
    out = tmp_path / "masks"
    argv = ["--output", str(out), "--patients", "1", "--seed", "3", "--positive-rate", "1"]
    assert synth.run([*argv, "--masks"]) == 0
    assert "with SEG and RTSTRUCT labels" in capsys.readouterr().err
    import pydicom

    # Patient 0 of seed 3: a CT study with an RTSTRUCT per series, the rest zipped.
    found = [pydicom.dcmread(p, stop_before_pixels=True) for p in out.rglob("S98/IMG*")]
    assert len(found) == 2 and {ds.Modality for ds in found} == {"RTSTRUCT"}
