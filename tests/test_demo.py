"""`dicomflow demo` at a reduced size: the whole chain, the summary and report.html."""

import re

import pytest

from pipelines import demo
from pipelines.options import UsageError


def test_demo_runs_the_chain_and_renders_the_report(tmp_path, capsys, monkeypatch):
    # A fixed key makes the patient splits reproducible (a throwaway key changes them).
    monkeypatch.setenv("DF_DEMO_KEY", "d" * 64)
    argv = ["--workdir", str(tmp_path), "--patients", "24", "--image-size", "32"]
    assert demo.run([*argv, "--epochs", "2", "--key-env", "DF_DEMO_KEY"]) == 0
    out = capsys.readouterr()
    assert "$DF_DEMO_KEY" in out.err and "d" * 16 not in out.err
    assert "top studies" in out.err and "test ROC AUC" in out.err
    # The figures come with their intervals, at the operating point, calibrated, sliced.
    assert re.search(r"test ROC AUC [0-9.]+ \(95 % CI [0-9.]+-[0-9.]+\)", out.err)
    assert re.search(r"at threshold [0-9.]+ \(youden\): accuracy [0-9.]+ \(95 % CI", out.err)
    assert "calibrated (platt): ECE" in out.err and "flagged small" in out.err
    report = (tmp_path / "report.html").read_text()
    assert out.out.strip() == str(tmp_path / "report.html")
    images = re.findall(
        r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]{200,})"', report
    )
    alts = {alt for alt, _ in images}
    expected = {"counts", "reasons", "balance", "samples", "training curves", "roc.png", "pr.png"}
    expected |= {"reliability diagram"}
    assert expected | {"histogram", "grad-cam"} <= alts, alts
    # Burned-in text is redacted by default: counted, shown redacted with regions outlined.
    assert {"redaction", "redacted images, blanked regions outlined"} <= alts, alts
    redacted = re.search(r"burned-in text: (\d+) images redacted", out.err)
    assert redacted and int(redacted.group(1)) > 0
    assert "burned_in_annotation" not in out.err  # nothing excluded for its risk alone
    for title in (
        "Dead letters by reason",
        "Label balance per split",
        "DuckDB queries to try",
        "Operating point: threshold",
        "Calibration (test split)",
        "Slices (test split)",
        "body_part_examined",
        "label_source",
    ):
        assert title in report
    assert "http" not in report.replace("http-equiv", "")  # self-contained: nothing fetched


def test_demo_makes_a_throwaway_key_and_never_prints_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(demo.KEY_VAR, raising=False)
    args = demo._parse(["--workdir", str(tmp_path)])
    assert args.key_env is None and args.patients == 60  # the defaults make demo run its own key
    with pytest.raises(UsageError, match="not set"):
        demo._parse(["--key-env", "DF_UNSET_VARIABLE"])
    with pytest.raises(UsageError, match="patients"):
        demo._parse(["--patients", "1"])
    with pytest.raises(UsageError, match="--difficulty: difficulty part 'impossible'"):
        demo._parse(["--difficulty", "impossible"])
