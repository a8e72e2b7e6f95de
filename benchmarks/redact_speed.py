"""Burned-in text redaction: recall of planted PHI text boxes, false-blank area, speed.

Recall and false blanks are measured on the synthetic corpus (every image that phi.json
lists with text: CR, DX, US, SC and XA, several fonts, sizes, contrasts, corners).
Throughput is one core (onnxruntime on one thread, as each Beam worker runs it) on a 512²
and a 2048² radiograph with text, against the baseline of normalizing the same image
(decode, window, resize: what ingest does to every image anyway).

    PYTHONPATH=. python benchmarks/redact_speed.py [--patients 12] [--seed 11]
"""

import argparse
import collections
import copy
import io
import tarfile
import time
import zipfile

import numpy as np
from pydicom import dcmread

from transforms import testing as synth
from transforms.deadletter import StageError
from transforms.deid import PixelPolicy, load_ocr, redact_pixels
from transforms.deid.pixels import blank_value
from transforms.pixels import PixelConfig, normalize
from transforms.testing.burnin import burn_text, text_lines


def _members(f) -> dict:
    if f.path.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(f.data)) as z:
            return {n: z.read(n) for n in z.namelist()}
    if f.path.endswith(".tar.gz"):
        with tarfile.open(fileobj=io.BytesIO(f.data)) as t:
            return {m.name: t.extractfile(m).read() for m in t.getmembers()}
    return {None: f.data}


def _frames(ds):
    arr = ds.pixel_array
    return arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[np.newaxis]


def recall(patients: int, seed: int) -> dict:
    policy = PixelPolicy()
    n = collections.Counter()
    false_blank, non_text = 0, 0
    for i in range(patients):
        part = synth.synth_patient(i, seed)
        files = {f.path: _members(f) for f in part.files}
        by_uid = collections.defaultdict(list)
        for b in part.text_boxes:
            by_uid[b["sop_instance_uid"]].append(b)
        for boxes in by_uid.values():
            ds = dcmread(io.BytesIO(files[boxes[0]["file"]][boxes[0]["member"]]))
            before = _frames(ds).copy()
            n["images"] += 1
            try:
                redact_pixels(ds, policy)
            except StageError as e:
                n[e.error_type] += 1  # dead-lettered: nothing leaks, the image is lost
                n["phi_boxes_in_dead_letters"] += sum(b["phi"] for b in boxes)
                continue
            after = _frames(ds)
            fill = blank_value(ds, after.dtype, after)
            planted = np.zeros(after.shape[:3], bool)
            for b in boxes:
                x0, y0, x1, y1 = b["box"]
                if b["phi"]:
                    n["phi_boxes"] += 1
                    n["phi_boxes_blanked"] += bool((after[b["frame"], y0:y1, x0:x1] == fill).all())
                h = y1 - y0  # the policy's margin: up to 0.3 h across, 0.6 h along the line
                planted[b["frame"], max(0, y0 - h) : y1 + h, max(0, x0 - 2 * h) : x1 + 2 * h] = 1
            changed = before != after
            changed = changed.any(axis=3) if changed.ndim == 4 else changed
            false_blank += int(changed[~planted].sum())
            non_text += int((~planted).sum())
    n["false_blank_fraction"] = false_blank / max(non_text, 1)
    return dict(n)


def _radiograph(side: int):
    """A DX-like 14-bit radiograph of side² with burned-in text, as a dataset."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(side)
    yy, xx = np.mgrid[:side, :side] / side
    body = (((yy - 0.5) / 0.4) ** 2 + ((xx - 0.5) / 0.35) ** 2 <= 1) * 0.5
    arr = np.round(np.clip(body + rng.normal(0, 0.02, body.shape), 0, 1) * 16383)
    fields = {"family": "BENCH", "given": "MARK", "pid": "PID000001", "date": "20200102"}
    fields.update(time="101010", institution="Bench Hospital", accession="AC1")
    arr, _ = burn_text(arr.astype(np.uint16), text_lines(fields, rng), rng, 16383)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "DX", "BENCH^MARK", "PID000001"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 14, 13, 0
    ds.PixelData = arr.tobytes()
    return ds


def throughput(side: int, repeats: int) -> tuple[float, float, float]:
    """Seconds per image: redaction (wall, CPU) and the normalize baseline (CPU).

    CPU time (this process, one onnxruntime thread) is the per-core cost; on a shared
    machine the wall time also holds the time spent waiting for a core."""
    original = _radiograph(side)
    redact_pixels(copy.deepcopy(original), PixelPolicy())  # first run of a shape: warm-up
    wall, cpu, base = [], [], []
    for _ in range(repeats):
        ds = copy.deepcopy(original)
        start, start_cpu = time.perf_counter(), time.process_time()
        redact_pixels(ds, PixelPolicy())
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        ds = copy.deepcopy(original)
        start_cpu = time.process_time()
        normalize(ds, PixelConfig(size=224))
        base.append(time.process_time() - start_cpu)
    return float(np.median(wall)), float(np.median(cpu)), float(np.median(base))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    start = time.perf_counter()
    ocr = load_ocr()
    print(f"OCR models loaded in {time.perf_counter() - start:.2f} s on {ocr.provider}")
    r = recall(args.patients, args.seed)
    print(f"corpus: {args.patients} patients, seed {args.seed}: {r}")
    print(
        f"recall of planted PHI boxes in redacted output: "
        f"{r['phi_boxes_blanked']}/{r['phi_boxes']} = {r['phi_boxes_blanked'] / r['phi_boxes']:.2%}"
        f"; dead-lettered images (text remaining): {r.get('burned_in_text_remaining', 0)}"
        f" of {r['images']}; false-blank area: {r['false_blank_fraction']:.3%} of non-text pixels"
    )
    for side, repeats in ((512, 5), (2048, 3)):
        wall, cpu, baseline = throughput(side, repeats)
        print(
            f"{side}x{side}: redaction {cpu:.3f} CPU s/image = {1 / cpu:.2f} images/s per core"
            f" (wall {wall:.3f} s); normalize baseline {baseline:.3f} CPU s;"
            f" redaction/baseline = {cpu / baseline:.1f}x"
        )


if __name__ == "__main__":
    main()
