"""Conformance: de-identification introduces no dciodvfy error that the input did not have.

dciodvfy (Debian's dicom3tools; ``.ci/run`` installs it when missing) checks each file
against its IOD. Errors already present in the input are set aside; values are masked in
the messages, since de-identification changes values by design (a dummy in place of a name
raises no new error, but its message would differ).
"""

import io
import re
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from conftest import corpus_objects
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from transforms import deid
from transforms.deadletter import StageError

_VALUE = re.compile(r"\[\d+\] = <[^>]*>|\b\d+(?:\.\d+){2,}\b|(?<=UID )\S+")  # values, UIDs


def dciodvfy_errors(path: Path) -> set[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return {_VALUE.sub("<v>", line) for line in lines if line.startswith("Error")}


@pytest.fixture(scope="module")
def engine() -> deid.Deidentifier:
    assert shutil.which("dciodvfy"), "dciodvfy missing: apt-get install dicom3tools (.ci/run)"
    pixels = deid.PixelPolicy(policy="keep")  # every file is checked, risky ones too
    return deid.Deidentifier(deid.Profile.load(), deid.DeidConfig(pixels=pixels), b"k" * 32)


def _inflated(data: bytes) -> bytes:
    """dicom3tools cannot read Deflated Explicit VR Little Endian: such a file (input and
    output alike) is checked as its Explicit VR Little Endian equivalent."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if ds.file_meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return data
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _new_errors(name: str, data: bytes, engine, tmp: Path) -> set[str] | None:
    try:
        result, _ = deid.deidentify_object(data, engine)
    except StageError:
        return None  # refused (a DICOMDIR, an unsupported syntax): nothing written to check
    source, output = tmp / "in.dcm", tmp / "out.dcm"
    source.write_bytes(_inflated(data))
    output.write_bytes(_inflated(result.data))
    return {f"{name}: {e}" for e in dciodvfy_errors(output) - dciodvfy_errors(source)}


def test_no_new_dciodvfy_error_on_pydicoms_test_files(engine, tmp_path):
    root = Path(get_testdata_file("CT_small.dcm")).parent
    checked, new = 0, set()
    for path in sorted(root.glob("*.dcm")):
        errors = _new_errors(path.name, path.read_bytes(), engine, tmp_path)
        if errors is not None:
            checked += 1
            new |= errors
    assert checked >= 60
    assert sorted(new) == [], sorted(new)[:30]


def test_no_new_dciodvfy_error_on_the_synthetic_corpus(engine, corpus, tmp_path):
    checked, new = 0, set()
    for obj in corpus_objects(corpus / "export"):
        errors = _new_errors(f"{obj.source}:{obj.member}", obj.data, engine, tmp_path)
        if errors is not None:
            checked += 1
            new |= errors
    assert checked >= 20
    assert sorted(new) == [], sorted(new)[:30]


def test_the_comparison_sees_an_error_it_introduces(engine, tmp_path):
    """The check can fail: a type 1 attribute emptied after de-identification is new."""
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    source, output = tmp_path / "in.dcm", tmp_path / "out.dcm"
    source.write_bytes(data)
    ds = pydicom.dcmread(source)
    ds.SOPClassUID = ""
    ds.save_as(output)
    assert dciodvfy_errors(output) - dciodvfy_errors(source)


def test_no_new_dciodvfy_error_on_the_keeplist_corpus(engine, tmp_path):
    """Values cleaned, dummied or pseudonymized by the content check, the dictionary VR,
    local codes and the pixel-stream rebuild (ImageType value 3 of a CT included)."""
    import adversarial_keeplist as ak

    new = set()
    for path in ak.write_corpus(tmp_path / "export"):
        new |= _new_errors(path.name, path.read_bytes(), engine, tmp_path) or set()
    assert sorted(new) == [], sorted(new)[:30]
