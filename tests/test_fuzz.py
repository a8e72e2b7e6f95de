"""Hostile inputs through every reading command (transforms/testing/fuzz.py): each command
exits 0 under a memory and a time ceiling, and every input lands in exactly one row.

The commands run as users run them (a subprocess of ``python -m pipelines.cli``, two
workers) while a watchdog samples the resident memory of the whole process tree. The
longer run of the same generator is ``benchmarks/fuzz_run.py``; in the suite (CI's 30
minutes) three cases per family go through every command (the model of the score test is
the session's ``score_model``, built once for test_score too).
"""

import collections
import json
import os
import sys

import pytest
from conftest import read_table

from transforms.testing import fuzz

SEED = 14
COUNT = 36  # three per family, about 40 files with the duplicate pairs
SCALE = fuzz.MiB  # bombs of 1-4 MiB inflated, against limits of a few MiB
LIMITS = [
    "--max-inflated-bytes=2097152",
    "--max-archive-bytes=8388608",
    "--max-frames=64",
    "--max-frame-bytes=16777216",
    "--max-decoded-bytes=67108864",
    "--parse-seconds=5",
]
WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]
GiB = 1 << 30
# (ceiling of the process tree's resident memory, seconds) per command.
CEILINGS = {
    "inventory": (1.5 * GiB, 120),
    "deidentify": (1.5 * GiB, 120),
    "ingest": (3 * GiB, 240),
    "score": (3 * GiB, 240),
}
KEY = "f" * 64


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    cases = fuzz.fuzz_corpus(SEED, COUNT, scale=SCALE)
    fuzz.write_corpus(cases, str(root / "in"))
    # Accession ACC0 carries two labels: both rows are conflicting and must be counted.
    rows = ["AccessionNumber,label", "ACC0,1", "ACC0,0"]
    rows += [f"ACC{i},{i % 2}" for i in range(1, 8)]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root, cases


def run(command: str, root, *argv: str):
    ceiling, timeout = CEILINGS[command]
    out = root / command
    args = [sys.executable, "-m", "pipelines.cli", command, "--input", str(root / "in")]
    args += ["--output", str(out), *LIMITS, *WORKERS, *argv]
    env = {**os.environ, "DF_FUZZ_KEY": KEY}
    done = fuzz.run_watched(args, int(ceiling), timeout, env=env)
    assert done.killed is None, f"{command}: over its {done.killed} ceiling"
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"{command}: peak {done.peak_rss / 2**20:.0f} MiB, {done.seconds:.1f} s")
    return out, json.loads((out / "manifest.json").read_text())


def _source_rows(rows) -> collections.Counter:
    return collections.Counter(r["source"] for r in rows)


@pytest.fixture(scope="module")
def inventoried(fuzzed):
    root, _ = fuzzed
    out, manifest = run("inventory", root)
    return read_table(str(out / "inventory")), read_table(str(out / "errors")), manifest


def test_inventory_gives_every_input_exactly_its_rows(fuzzed, inventoried):
    root, cases = fuzzed
    rows, errors, manifest = inventoried
    places = [(r["source"], r["member"]) for r in rows + errors]
    assert len(places) == len(set(places))  # no object in two rows
    per_source = _source_rows(rows + errors)
    for case in cases:
        got = per_source.pop(str(root / "in" / case.name), 0)
        assert got == case.rows if case.rows is not None else got >= 1, case.name
    assert not per_source  # nothing that is not an input
    assert manifest["counts"]["seen"] == len(places)
    assert manifest["limits"]["max_frames"] == 64
    types = collections.Counter(e["error_type"] for e in errors)
    for named in ("truncated", "too_deep", "inflate_limit", "too_large_decoded"):
        assert types[named] > 0, named
    assert "unexpected_error" not in types


def _check_counts(manifest, errors, inventoried, done_key):
    rows, inventory_errors, _ = inventoried
    counts = manifest["counts"]
    assert counts["seen"] == len(rows) + len(inventory_errors)
    assert counts["seen"] == counts.get(done_key, 0) + counts["dead_lettered"]
    assert len(errors) == counts["dead_lettered"]
    places = [(e["source"], e["member"]) for e in errors]
    assert len(places) == len(set(places))
    assert "unexpected_error" not in {e["error_type"] for e in errors}


def test_deidentify_survives_the_fuzz_corpus(fuzzed, inventoried):
    root, _ = fuzzed
    out, manifest = run("deidentify", root, "--key-env", "DF_FUZZ_KEY")
    _check_counts(manifest, read_table(str(out / "errors")), inventoried, "deidentified")


def test_ingest_survives_the_fuzz_corpus(fuzzed, inventoried):
    root, _ = fuzzed
    (root / "pixels.yaml").write_text("size: 32\nframe_policy: all\n")
    out, manifest = run(
        "ingest",
        root,
        "--key-env",
        "DF_FUZZ_KEY",
        "--labels",
        str(root / "labels.csv"),
        "--pixel-config",
        str(root / "pixels.yaml"),
    )
    errors = read_table(str(out / "errors"))
    _check_counts(manifest, errors, inventoried, "converted")
    assert manifest["labels"]["conflicting_rows"] == 2
    index = read_table(str(out / "index"))
    assert index and all(
        abs(r["window_center"]) < 1e9 and 0 < r["window_width"] < 1e9 for r in index
    )
    # A truncated copy sorts first, yet the complete copy wins: the cut one is the duplicate.
    losers = {e["source"] for e in errors if e["error_type"] == "duplicate_instance"}
    cut = {e for e in losers if e.endswith("-a-cut.dcm")}
    assert cut and not {e for e in losers if e.endswith("-b-whole.dcm")}


def test_score_survives_the_fuzz_corpus(fuzzed, inventoried, score_model):
    root, _ = fuzzed
    out, manifest = run("score", root, "--key-env", "DF_FUZZ_KEY", "--model", str(score_model))
    _check_counts(manifest, read_table(str(out / "errors")), inventoried, "scored")
