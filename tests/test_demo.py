"""`dicomflow demo` at a reduced size: the whole chain, the summary and report.html."""

import re

from pipelines import demo


def test_demo_runs_the_chain_and_renders_the_report(tmp_path, capsys):
    argv = ["--workdir", str(tmp_path), "--patients", "12", "--image-size", "32", "--epochs", "2"]
    assert demo.run(argv) == 0
    out = capsys.readouterr()
    assert "throwaway" in out.err and "top studies" in out.err and "test ROC AUC" in out.err
    report = (tmp_path / "report.html").read_text()
    assert out.out.strip() == str(tmp_path / "report.html")
    images = re.findall(
        r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]{200,})"', report
    )
    alts = {alt for alt, _ in images}
    expected = {"counts", "reasons", "balance", "samples", "training curves", "roc.png", "pr.png"}
    assert expected | {"histogram", "grad-cam"} <= alts, alts
    for title in ("Dead letters by reason", "Label balance per split", "DuckDB queries to try"):
        assert title in report
    assert "http" not in report.replace("http-equiv", "")  # self-contained: nothing fetched
    key_line = [line for line in out.err.splitlines() if "key" in line.lower()]
    assert all(len(token) < 32 for line in key_line for token in line.split())  # key unprinted
