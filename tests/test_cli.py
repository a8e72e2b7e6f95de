"""The `dicomflow` console script, run as users run it."""

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import cli
from pipelines.options import new_pipeline, parse_options
from pipelines.synth import SynthOptions

# The console script installed beside this interpreter (the venv may not be on PATH).
DICOMFLOW = str(Path(sys.executable).parent / "dicomflow")


def dicomflow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DICOMFLOW, *args], capture_output=True, text=True, timeout=120)


def test_usage_lists_only_working_commands():
    done = dicomflow("--help")
    assert done.returncode == 0
    for command in cli.COMMANDS:
        assert command in done.stdout
    assert dicomflow().returncode == 2


def test_unknown_command_is_one_line():
    done = dicomflow("trian")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "dicomflow: error: unknown command 'trian' (see dicomflow --help)"
    ]


def test_missing_argument_is_one_line():
    done = dicomflow("inventory", "--output", "/tmp/x")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["dicomflow inventory: error: --input is required"]


def test_command_help():
    done = dicomflow("inventory", "--help")
    assert done.returncode == 0
    assert "--max-object-bytes" in done.stdout


def test_beam_flags_pass_through_and_ours_stay_ours():
    argv = ["--output", "o", "--patients", "2", "--runner", "DirectRunner", "--dry_run"]
    opts, beam_options = parse_options("p", argv, SynthOptions)
    assert (opts.output, opts.patients) == ("o", 2)
    all_beam = beam_options.get_all_options()
    assert all_beam["runner"] == "DirectRunner"
    assert all_beam["dry_run"] == "True"
    assert "patients" not in all_beam


@pytest.mark.parametrize("runner", [[], ["--runner", "DirectRunner"], ["--runner", "direct"]])
def test_direct_runner_is_the_fn_api_runner_with_our_worker_options(runner):
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

    argv = [*runner, "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    pipeline = new_pipeline(PipelineOptions(argv))
    assert type(pipeline.runner) is FnApiRunner  # never Prism, which ignores these flags
    # What the worker processes are told (they read the options from the provision info).
    encoded = pipeline.runner._provision_info.provision_info.pipeline_options
    assert encoded["beam:option:direct_num_workers:v1"] == "2"
    assert encoded["beam:option:direct_running_mode:v1"] == "multi_processing"


@pytest.mark.slow
def test_synth_then_inventory_from_the_command_line(tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    synth = dicomflow("synth", "--output", str(corpus), "--patients", "2", "--seed", "5")
    assert synth.returncode == 0, synth.stderr
    done = dicomflow("inventory", "--input", f"file://{corpus}/export", "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert "objects seen" in done.stderr
    assert (out / "manifest.json").exists()


@pytest.mark.parametrize("flag", ["--key-env", "--deid-config"])
def test_flags_of_later_issues_are_not_accepted_yet(flag):
    """No dead flags: what does not work is refused, not ignored."""
    done = dicomflow("inventory", "--input", ".", "--output", "x", flag, "v")
    assert done.returncode == 2
    assert "unrecognized arguments" in done.stderr
