"""Quiet output: each command, run as users run it, prints only dicomflow's own lines."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import quiet

DICOMFLOW = str(Path(sys.executable).parent / "dicomflow")
KEY_VAR = "DF_QUIET_KEY"

# What a library prints about itself: native log lines, Python log records, warnings and
# tracebacks, and the names of the libraries' internals.
NOISE = re.compile(
    r"^(?:[IWEF]\d{4} |WARNING|INFO|DEBUG|ERROR|CRITICAL|Traceback|\s+File \")"
    r"|apache_beam|tensorflow|absl|oneDNN|cuInit|cuda|CallableWrapperDoFn|Resource module"
    r"|Warning:|warnings\.warn",
    re.IGNORECASE,
)

# Real lines seen on this machine before the change (TensorFlow 2.21, Beam 2.77).
NATIVE_SAMPLES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796599561.913880    8414 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results due to floating-point round-off errors.",
    "I0000 00:00:1796599561.914788    8414 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "E0000 00:00:1796599569.123657    8479 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.",
]
OWN_SAMPLES = [
    "ingest: 45 objects seen, 37 converted (37 examples), 8 dead-lettered → /tmp/q/ing",
    "epoch 1: loss 2.1655 auc 0.5635 | eval loss 0.9066 auc 0.9706 (best) | 6.5 s",
    "I0000 is not a log line without its time and source",
]


@pytest.mark.parametrize("line", NATIVE_SAMPLES)
def test_native_log_lines_are_recognised(line):
    assert quiet.NATIVE_LINE.match(line.encode())
    assert NOISE.search(line)


@pytest.mark.parametrize("line", OWN_SAMPLES)
def test_our_lines_pass_the_filter(line):
    assert not quiet.NATIVE_LINE.match(line.encode())


def test_verbosity_from_the_flag_and_the_environment():
    argv = ["ingest", "--verbose", "--input", "x"]
    assert quiet.verbosity(argv, {}) == (20, ["ingest", "--input", "x"])
    assert quiet.verbosity(["ingest"], {}) == (None, ["ingest"])
    assert quiet.verbosity(["ingest"], {quiet.LOG_ENV: "debug"}) == (10, ["ingest"])
    with pytest.raises(ValueError, match="not a log level"):
        quiet.verbosity(["ingest"], {quiet.LOG_ENV: "loud"})


def test_the_filter_drops_native_lines_from_the_process_and_its_children():
    """Native code writes to file descriptor 2 directly; so does a child process."""
    code = (
        "import os, subprocess, sys\n"
        "from pipelines import quiet\n"
        "quiet.NativeLogFilter()\n"
        f"os.write(2, {NATIVE_SAMPLES[1].encode()!r} + b'\\n')\n"
        "print('ours, from Python', file=sys.stderr)\n"
        "subprocess.run(['sh', '-c', 'echo \"W0000 00:00:1.5 1 x.cc:1] child\" >&2;"
        " echo child-ours >&2'])\n"
        "os.write(2, b'last line without a newline')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.returncode == 0
    assert done.stderr.decode().splitlines() == [
        "ours, from Python",
        "child-ours",
        "last line without a newline",
    ]


def test_an_unknown_log_level_is_one_line():
    env = {**os.environ, quiet.LOG_ENV: "loud"}
    done = subprocess.run([DICOMFLOW, "synth"], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "dicomflow: error: DICOMFLOW_LOG='loud' is not a log level (debug, info, warning)"
    ]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Every pipeline command on a small corpus, each as a console command: its output."""
    root = tmp_path_factory.mktemp("quiet")
    env = {**os.environ, KEY_VAR: "q" * 64}
    for name in (quiet.LOG_ENV, "DICOMFLOW_DEBUG", "TF_CPP_MIN_LOG_LEVEL"):
        env.pop(name, None)
    (root / "pixels.yaml").write_text("size: 32\n")
    export, key = str(root / "corpus" / "export"), ["--key-env", KEY_VAR]
    commands = {
        "synth": ["--output", str(root / "corpus"), "--patients", "10", "--seed", "4"],
        "inventory": ["--input", export, "--output", str(root / "inventory")],
        "deidentify": ["--input", export, "--output", str(root / "deid"), *key],
        "ingest": [
            *("--input", export, "--output", str(root / "ingest"), *key),
            *("--labels", str(root / "corpus" / "labels.csv")),
            *("--pixel-config", str(root / "pixels.yaml"), "--split", "0.4,0.3,0.3"),
        ],
        "train": [
            *("--data", str(root / "ingest"), "--model-dir", str(root / "models")),
            *("--epochs", "1", "--min-auc", "0", "--augment", "none"),
        ],
        "score": [
            *("--input", export, "--model", str(root / "models" / "1")),
            *("--output", str(root / "scores"), *key),
        ],
    }
    outputs = {}
    for command, args in commands.items():
        done = subprocess.run(
            [DICOMFLOW, command, *args], capture_output=True, text=True, env=env, timeout=600
        )
        assert done.returncode == 0, (command, done.stderr[-2000:])
        outputs[command] = done.stdout + done.stderr
    return outputs


COMMANDS = ["synth", "inventory", "deidentify", "ingest", "train", "score"]


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_a_clean_run_prints_only_our_lines(chain, command):
    lines = chain[command].splitlines()
    assert lines, f"{command} printed nothing"
    assert [line for line in lines if NOISE.search(line)] == []
