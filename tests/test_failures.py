"""Whole-command failures: one line naming the cause, no manifest claiming success, no
leftovers of killed runs, argument errors before TensorFlow."""

import errno
import json
import os
import socket
import subprocess
import sys

import pytest

from pipelines import cli
from pipelines.failures import describe_failure, remove_beam_temp


def run_cli(capsys, *argv: str) -> tuple[int, list[str]]:
    rc = cli.main(list(argv))
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.startswith("dicomflow")]


def test_an_unwritable_output_is_one_line_and_no_manifest(corpus, tmp_path, capsys):
    """Before: up to 224 lines of tracebacks."""
    (tmp_path / "a-file").write_text("x")
    rc = cli.main(
        ["inventory", "--input", str(corpus / "export"), "--output", str(tmp_path / "a-file/o")]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == [
        "dicomflow inventory: error: cannot write: a path component is a file, not a folder"
    ]


def test_a_failed_run_leaves_no_manifest_and_a_good_one_cleans_beam_temp(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["inventory", "--input", str(corpus / "export"), "--output", str(out)]
    assert cli.main(argv) == 0
    assert (out / "manifest.json").exists()
    # A killed run's leftovers, and a table folder that is now in the way of the next run.
    leftovers = [out / "inventory" / "beam-temp-part-dead", out / "beam-temp-x-dead"]
    for folder in leftovers:
        folder.mkdir(parents=True)
        (folder / "part").write_bytes(b"half")
    errors = out / "errors"
    for child in errors.iterdir():
        child.unlink()
    errors.rmdir()
    errors.write_text("in the way")
    rc, lines = run_cli(capsys, *argv)
    assert rc == 1 and len(lines) == 1 and "cannot write" in lines[0]
    assert not (out / "manifest.json").exists()  # the old one claimed a finished run
    errors.unlink()
    assert cli.main(argv) == 0
    assert json.loads((out / "manifest.json").read_text())["counts"]["seen"] > 0
    assert not any(folder.exists() for folder in leftovers)


def test_remove_beam_temp_finds_nested_folders(tmp_path):
    (tmp_path / "a" / "beam-temp-p-1" / "x").mkdir(parents=True)
    (tmp_path / "a" / "beam-temp-p-1" / "x" / "f").write_text("")
    (tmp_path / "keep").write_text("")
    removed = remove_beam_temp(str(tmp_path))
    assert removed == [str(tmp_path / "a" / "beam-temp-p-1")]
    assert (tmp_path / "keep").exists() and (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("OSError: [Errno 28] No space left on device [while running 'Write']"),
    ],
)
def test_a_full_disk_is_named(exc):
    assert describe_failure(exc) == "no space left on the device that holds the output"


def test_an_unknown_failure_names_only_its_type():
    message = describe_failure(ValueError("/export/DOE^JOHN/1.dcm is odd"))
    assert message.startswith("failed with ValueError") and "DOE" not in message


@pytest.mark.parametrize(
    ("command", "flag", "extra"),
    [
        ("deidentify", "--deid-config", []),
        ("ingest", "--pixel-config", []),
    ],
)
def test_malformed_yaml_is_one_line_with_line_and_column(
    command, flag, extra, corpus, tmp_path, capsys, monkeypatch
):
    """Before: a 59-line traceback for --deid-config."""
    monkeypatch.setenv("DF_FAIL_KEY", "k" * 32)
    bad = tmp_path / "bad.yaml"
    bad.write_text("size: 64\nwindows: [1, 2\nchannels: 1\n")
    rc, lines = run_cli(
        capsys,
        command,
        "--input",
        str(corpus / "export"),
        "--output",
        str(tmp_path / "o"),
        "--key-env",
        "DF_FAIL_KEY",
        flag,
        str(bad),
        *extra,
    )
    assert rc == 2
    assert lines == [
        f"dicomflow {command}: error: {flag} {bad}: malformed YAML at line 3, column 9: "
        "expected ',' or ']', but got ':'"
    ]


def test_malformed_run_yaml_is_one_line(tmp_path, capsys):
    """Before: an 8-line message."""
    bad = tmp_path / "run.yaml"
    bad.write_text("inputs: [a\noutput: b\n")
    rc, lines = run_cli(capsys, "run", "--config", str(bad))
    assert rc == 2 and len(lines) == 1
    assert "malformed YAML at line 2, column 7" in lines[0]


def test_every_config_file_failure_is_one_line(tmp_path):
    """The three YAML configs share one loader: unreadable, refused and incomplete files
    are one usage error naming the flag (an entry missing a key was a traceback)."""
    from pipelines import flags
    from pipelines.options import UsageError
    from pipelines.run import load_config

    missing = tmp_path / "missing.yaml"
    incomplete = tmp_path / "deid.yaml"
    incomplete.write_text("safe_private:\n  - element: '0x10'\n")
    unknown = tmp_path / "pixels.yaml"
    unknown.write_text("colour: red\n")
    cases = [
        (lambda: flags.load_deid_config(str(missing)), "--deid-config", "cannot be read"),
        (lambda: flags.load_deid_config(str(incomplete)), "--deid-config", "missing 'creator'"),
        (lambda: flags.load_pixel_config(str(unknown)), "--pixel-config", "unknown pixel"),
        (lambda: load_config(str(missing)), "--config", "cannot be read"),
    ]
    for load, flag, what in cases:
        with pytest.raises(UsageError) as e:
            load()
        assert str(e.value).startswith(flag) and what in str(e.value)
        assert "\n" not in str(e.value)


def test_an_unreachable_bucket_is_one_line(tmp_path, monkeypatch, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    rc, lines = run_cli(
        capsys, "inventory", "--input", "gs://nowhere/x", "--output", str(tmp_path / "o")
    )
    assert rc == 2
    assert lines == ["dicomflow inventory: error: cannot reach gs://nowhere (ConnectionError)"]


def test_a_missing_bucket_is_named(gcs, tmp_path, capsys):
    rc, lines = run_cli(
        capsys, "inventory", "--input", "gs://no-such-bucket/x", "--output", str(tmp_path / "o")
    )
    assert rc == 2
    assert lines == ["dicomflow inventory: error: bucket gs://no-such-bucket does not exist"]


@pytest.mark.parametrize("command", ["ingest", "score"])
def test_argument_errors_come_before_tensorflow(command, tmp_path):
    """Before: ingest imported TensorFlow (7 s, ten log lines) before saying the input
    matches nothing."""
    argv = [command, "--input", str(tmp_path / "nothing"), "--output", str(tmp_path / "o")]
    argv += ["--key-env", "K"] + (["--model", str(tmp_path / "m")] if command == "score" else [])
    code = (
        "import sys; from pipelines import cli; "
        f"rc = cli.main({argv!r}); print(rc, 'tensorflow' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "K": "k" * 32},
    )
    assert done.stdout.split() == ["2", "False"], done.stderr[-2000:]
    assert "input matches no objects" in done.stderr
