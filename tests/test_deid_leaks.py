"""The leak scan: the adversarial corpus (tests/adversarial.py) through `dicomflow deidentify`
and `dicomflow ingest` under the default configuration, every output byte searched; and
public test files (pydicom's, deid-data) searched for their own identifiers."""

import io
import json
import logging
from pathlib import Path

import adversarial as adv
import pydicom
import pytest
from pydicom.data import get_testdata_file

from pipelines import deidentify, ingest
from transforms import deid

KEY = "d" * 64


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adversarial")
    adv.write_corpus(root / "export", count=3)
    return root / "export"


def _run(command, argv: list[str], capfd, caplog) -> str:
    with caplog.at_level(logging.INFO):  # DEBUG is Beam tracing every element, sources too
        assert command.run(argv) == 0
    out, err = capfd.readouterr()
    return out + err + caplog.text


def test_deidentify_outputs_hold_no_planted_value(corpus, tmp_path, monkeypatch, capfd, caplog):
    monkeypatch.setenv("DF_LEAK_KEY", KEY)
    out = tmp_path / "deid"
    argv = ["--input", str(corpus), "--output", str(out), "--key-env", "DF_LEAK_KEY"]
    logs = _run(deidentify, argv, capfd, caplog)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["deidentified"] == 3
    found = adv.output_texts(out, logs)
    assert len([k for k in found if k.endswith(".dcm")]) == 3
    assert adv.leaks(found) == {}
    # What the net removed is counted by keyword, never by value.
    removed = manifest["counts"]["deid_net_removed"]
    assert removed["WaveformData"] == 3 and removed["unknown_public_tag"] == 12
    assert manifest["counts"]["invalid_modality"] == 1
    assert manifest["counts"]["deid_identifiers_removed"]["Manufacturer"] == 3
    assert manifest["counts"]["by_modality"] == {"CT": 2, "OT": 1}


def test_ingest_outputs_hold_no_planted_value(corpus, tmp_path, monkeypatch, capfd, caplog):
    monkeypatch.setenv("DF_LEAK_KEY", KEY)
    out = tmp_path / "ingest"
    argv = ["--input", str(corpus), "--output", str(out), "--key-env", "DF_LEAK_KEY"]
    logs = _run(ingest, argv, capfd, caplog)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["converted"] == 3
    found = adv.output_texts(out, logs)
    assert any("tfrecord" in k for k in found) and any("index" in k for k in found)
    assert adv.leaks(found) == {}
    assert manifest["counts"]["invalid_modality"] == 1


def test_the_scanner_finds_what_it_looks_for(corpus, tmp_path):
    """The scan itself can fail: the raw corpus leaks in every category, in every form."""
    found = adv.output_texts(corpus)
    assert set(adv.leaks(found)) == set(adv.counts_by_category())
    for form in ("utf-16-le", "latin-1"):
        blob = f"x {adv.ACCENTED} y".encode(form)
        (tmp_path / "a.bin").write_bytes(blob)
        assert "charset" in adv.leaks(adv.output_texts(tmp_path))
    double = adv.ACCENTED.encode().decode("latin-1").encode()
    (tmp_path / "a.bin").write_bytes(double)
    assert "charset" in adv.leaks(adv.output_texts(tmp_path))


# --- public test files ---------------------------------------------------------------------

_IDENTIFYING_VRS = {"PN", "LO", "SH", "ST", "LT", "UT", "UC"}


def _public_files() -> list[Path]:
    """pydicom's own test files, pydicom-data's (installed from the wheel, which holds the
    files: nothing is fetched) and deid-data's."""
    import data_store  # pydicom-data
    import deid_data

    roots = [
        Path(get_testdata_file("CT_small.dcm")).parent,
        Path(data_store.__file__).parent,
        Path(deid_data.__file__).parent,
    ]
    return sorted(p for root in roots for p in root.rglob("*.dcm"))


def _identifiers(ds, table: deid.Deidentifier) -> set[str]:
    """Values of the table's removed or replaced text attributes (names, IDs, institutions),
    six characters or more, at any depth; not those that a kept technical attribute holds
    too (a station named after its manufacturer)."""
    out, kept = set(), set()
    keep = deid.KeepList.load().keep
    for elem in ds.iterall():
        if int(elem.tag) in keep:
            kept.add(str(elem.value).strip())
        if elem.VR not in _IDENTIFYING_VRS or elem.tag.is_private:
            continue
        action = table.action_for(int(elem.tag))
        if action in ("X", "Z", "D") or elem.VR == "PN":
            for value in elem.value if elem.VM > 1 else [elem.value]:
                value = str(value).strip()
                if len(value) >= 6 and any(c.isalpha() for c in value):
                    out.add(value)
    return {v for v in out if not any(v in k for k in kept)}


def test_public_files_keep_none_of_their_identifiers():
    """pydicom's test files and deid-data: no removed identifier reappears in the output."""
    engine = deid.Deidentifier(
        deid.Profile.load(), deid.DeidConfig(pixels=deid.PixelPolicy(policy="keep")), b"k" * 32
    )
    checked, leaked = 0, []
    for path in _public_files():
        try:
            data = path.read_bytes()
            original = pydicom.dcmread(io.BytesIO(data), force=True)
            values = _identifiers(original, engine)
            result, _ = deid.deidentify_object(data, engine)
        except Exception:  # unreadable or refused files are the parser tests' business
            continue
        text = result.data.decode("latin-1")
        decoded = " ".join(str(e.value) for e in pydicom.dcmread(io.BytesIO(result.data)).iterall())
        checked += 1
        leaked += [(path.name, v) for v in values if v in text or v in decoded]
    assert checked >= 140
    assert leaked == [], leaked[:20]
