"""Burned-in text redaction: recall of planted PHI text boxes, false-blank area, speed,
today's code against the code of 2026-12-06 (``redact_baseline.py``) in one run.

Recall and false blanks are measured on the synthetic corpus (every image that phi.json
lists with text: CR, DX, US, SC and XA, several fonts, sizes, contrasts, corners) and on
hard text (``burnin.hard_case``: glyphs 6-10 px, lines flush against an edge, low
contrast, dark on light, coloured on RGB, over textured anatomy, text on some frames of a
run only), per kind and per size band of the line's height, and small and low-contrast
text on 2048² frames (what shrinking large frames loses). Throughput is one core
(onnxruntime on one thread, as each Dataflow SDK process runs it) on a 512² and a 2048²
radiograph with text, today's code and the baseline interleaved, with the cost of
normalizing the same image (decode, window, resize: what ingest does to every image
anyway) beside it, and where today's time goes (first detection, around the blanked
regions, whole-frame check, the rest).

    PYTHONPATH=. python benchmarks/redact_speed.py [--patients 12] [--hard 6] [--large 2]
        [--seed 11]
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

from benchmarks import redact_baseline
from transforms import testing as synth
from transforms.deadletter import StageError
from transforms.deid import PixelPolicy, load_ocr, redact_pixels
from transforms.deid.pixels import blank_value
from transforms.pixels import PixelConfig, normalize
from transforms.testing.burnin import HARD_KINDS, burn_text, hard_case, size_band, text_lines


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


def _redact(ds, baseline: bool) -> None:
    if baseline:
        redact_baseline.redact_pixels(ds)
    else:
        redact_pixels(ds, PixelPolicy())


def recall(patients: int, seed: int, baseline: bool = False) -> dict:
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
                _redact(ds, baseline)
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


def _hard_dataset(case):
    """A hard case as an 8-bit US dataset (MONOCHROME2, or RGB when coloured)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "US", "BENCH^HARD", "PID000002"
    ds.Rows, ds.Columns = case.frames.shape[1:3]
    if len(case.frames) > 1:
        ds.NumberOfFrames = len(case.frames)
    ds.SamplesPerPixel = 3 if case.rgb else 1
    ds.PhotometricInterpretation = "RGB" if case.rgb else "MONOCHROME2"
    if case.rgb:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = case.frames.tobytes()
    return ds


def hard_recall(per_kind: int, seed: int) -> dict:
    """Boxes fully blanked per kind and per size band, pixels changed outside the text
    (beyond the margin allowance), images dead-lettered: today's code and the baseline."""
    out = {name: collections.Counter() for name in ("today", "baseline")}
    rng = np.random.default_rng(seed)
    for kind in HARD_KINDS:
        for _ in range(per_kind):
            case = hard_case(kind, rng)
            for name, n in out.items():
                ds = _hard_dataset(case)
                n["images"] += 1
                try:
                    _redact(ds, name == "baseline")
                except StageError as e:
                    n[e.error_type] += 1
                    for b in case.boxes:
                        n[f"{kind} boxes"] += 1
                        n[f"{size_band(b.box)} px boxes"] += 1
                    continue
                _score(case, _frames(ds), n, (kind,))
    return out


def _score(case, after: np.ndarray, n: collections.Counter, keys: tuple[str, ...]) -> None:
    """Counts a redacted hard case: its boxes blanked whole (per key and size band), and
    pixels changed outside the text: beyond an allowance of the margin (a line height
    across, two along) and, strictly, outside the text boxes themselves."""
    planted = np.zeros(after.shape[:3], bool)
    text = np.zeros(after.shape[:3], bool)
    for b in case.boxes:
        x0, y0, x1, y1 = b.box
        done = bool((after[b.frame, y0:y1, x0:x1] == 0).all())
        for key in (*keys, f"{size_band(b.box)} px"):
            n[f"{key} boxes"] += 1
            n[f"{key} blanked"] += done
        h = y1 - y0
        planted[b.frame, max(0, y0 - h) : y1 + h, max(0, x0 - 2 * h) : x1 + 2 * h] = 1
        text[b.frame, y0:y1, x0:x1] = 1
    changed = case.frames != after
    changed = changed.any(axis=3) if changed.ndim == 4 else changed
    n["changed outside"] += int(changed[~planted].sum())
    n["outside"] += int((~planted).sum())
    n["changed outside boxes"] += int(changed[~text].sum())
    n["outside boxes"] += int((~text).sum())


def large_frame_recall(per_kind: int, seed: int, side: int = 2048) -> dict:
    """Small and low-contrast text (``hard_case`` drawn on side² frames): the text that
    a detector shrinking large frames loses. Today's code and the baseline."""
    out = {name: collections.Counter() for name in ("today", "baseline")}
    rng = np.random.default_rng(seed)
    for kind in ("small", "low_contrast"):
        for _ in range(per_kind):
            case = hard_case(kind, rng, side, side)
            for name, n in out.items():
                ds = _hard_dataset(case)
                try:
                    _redact(ds, name == "baseline")
                except StageError as e:
                    n[e.error_type] += 1
                    continue
                _score(case, _frames(ds), n, ("large",))
    return out


def throughput(side: int, repeats: int) -> dict[str, float]:
    """CPU seconds per image (median): today's redaction, the baseline's, normalize.

    CPU time (this process, one onnxruntime thread) is the per-core cost; on a shared
    machine the wall time also holds the time spent waiting for a core. The two codes
    alternate, so that drift in the machine's speed hits both alike."""
    original = _radiograph(side)
    _redact(copy.deepcopy(original), False)  # first run of a shape: warm-up
    _redact(copy.deepcopy(original), True)
    times: dict[str, list[float]] = {"today": [], "baseline": [], "normalize": [], "wall": []}
    for _ in range(repeats):
        for name in ("today", "baseline"):
            ds = copy.deepcopy(original)
            start, start_cpu = time.perf_counter(), time.process_time()
            _redact(ds, name == "baseline")
            times[name].append(time.process_time() - start_cpu)
            if name == "today":
                times["wall"].append(time.perf_counter() - start)
        ds = copy.deepcopy(original)
        start_cpu = time.process_time()
        normalize(ds, PixelConfig(size=224))
        times["normalize"].append(time.process_time() - start_cpu)
    return {k: float(np.median(v)) for k, v in times.items()}


def stages(side: int, repeats: int) -> dict[str, float]:
    """Where today's CPU time goes on one side² radiograph (median of ``repeats``): the
    first detection (on a large frame: choosing the tiles and detecting in them), the
    detections around what was blanked, the whole-frame check, and everything else
    (windowing to 8 bits, padding, resizing, post-processing, hashing, filling in,
    storing)."""
    from dataclasses import replace

    from transforms.deid import redact

    ocr = load_ocr()
    original = _radiograph(side)
    later: list[tuple[tuple[int, ...], float]] = []
    first_pass = redact._first_pass
    first: list[float] = []

    def timed(x):
        start = time.process_time()
        out = ocr.detector(x)
        later.append((x.shape[2:], time.process_time() - start))
        return out

    def timed_first(*args):
        start = time.process_time()
        out = first_pass(*args)
        first.append(time.process_time() - start)
        later.clear()
        return out

    counting = replace(ocr, detector=timed)
    parts: dict[str, list[float]] = {"first": [], "windows": [], "check": [], "rest": []}
    redact._first_pass = timed_first
    try:
        redact_pixels(copy.deepcopy(original), PixelPolicy(), counting)  # warm-up
        for _ in range(repeats):
            first.clear()
            ds = copy.deepcopy(original)
            start = time.process_time()
            redact_pixels(ds, PixelPolicy(), counting)
            total = time.process_time() - start
            check = max(later, key=lambda s: s[0][0] * s[0][1]) if later else ((0, 0), 0.0)
            windows = sum(t for _, t in later) - check[1]
            parts["first"].append(sum(first))
            parts["check"].append(check[1])
            parts["windows"].append(windows)
            parts["rest"].append(total - sum(first) - check[1] - windows)
    finally:
        redact._first_pass = first_pass
    return {k: float(np.median(v)) for k, v in parts.items()}


def _ratio(n: collections.Counter, key: str) -> str:
    boxes = n[f"{key} boxes"]
    return f"{n[f'{key} blanked']}/{boxes} = {n[f'{key} blanked'] / max(boxes, 1):.1%}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--hard", type=int, default=6, help="hard images per kind")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats at 512²")
    parser.add_argument("--large", type=int, default=2, help="2048² images per kind")
    args = parser.parse_args()
    start = time.perf_counter()
    ocr = load_ocr()
    print(f"OCR models loaded in {time.perf_counter() - start:.2f} s on {ocr.provider}")
    for name in ("today", "baseline"):
        r = recall(args.patients, args.seed, baseline=name == "baseline")
        print(
            f"{name}: corpus ({args.patients} patients, seed {args.seed}) planted PHI boxes"
            f" blanked {r['phi_boxes_blanked']}/{r['phi_boxes']}"
            f" = {r['phi_boxes_blanked'] / max(r['phi_boxes'], 1):.2%}; dead-lettered"
            f" {r.get('burned_in_text_remaining', 0)} of {r['images']} images; changed"
            f" outside text {r['false_blank_fraction']:.3%}"
        )
    hard = hard_recall(args.hard, args.seed)
    for name, n in hard.items():
        kinds = "; ".join(f"{k} {_ratio(n, k)}" for k in HARD_KINDS)
        bands = "; ".join(f"{b} px {_ratio(n, b + ' px')}" for b in ("6-10", "11-20", "21-48"))
        total_boxes = sum(n[f"{k} boxes"] for k in HARD_KINDS)
        total = sum(n[f"{k} blanked"] for k in HARD_KINDS)
        print(
            f"{name}: hard text ({args.hard} per kind, {n['images']} images): boxes blanked"
            f" {total}/{total_boxes} = {total / max(total_boxes, 1):.1%}; dead-lettered"
            f" {n['burned_in_text_remaining'] + n['redact_failed']};"
            f" changed outside text {n['changed outside'] / max(n['outside'], 1):.3%}"
            f" (outside the boxes themselves"
            f" {n['changed outside boxes'] / max(n['outside boxes'], 1):.2%})"
        )
        print(f"  by kind: {kinds}")
        print(f"  by size: {bands}")
    large = large_frame_recall(args.large, args.seed)
    for name, n in large.items():
        bands = "; ".join(f"{b} px {_ratio(n, b + ' px')}" for b in ("6-10", "11-20", "21-48"))
        print(
            f"{name}: small and low-contrast text on 2048² frames ({args.large} per kind):"
            f" boxes blanked {_ratio(n, 'large')} ({bands}); dead-lettered"
            f" {n['burned_in_text_remaining'] + n['redact_failed']}"
        )
    for side, repeats in ((512, args.repeats), (2048, max(2, args.repeats // 2))):
        t = throughput(side, repeats)
        print(
            f"{side}x{side}: today {t['today']:.3f} CPU s/image ({1 / t['today']:.2f} images/s"
            f" per core; wall {t['wall']:.3f} s), baseline {t['baseline']:.3f} CPU s/image:"
            f" ratio {t['today'] / t['baseline']:.2f}; normalize {t['normalize']:.3f} CPU s"
            f" (redaction/normalize = {t['today'] / t['normalize']:.0f}x)"
        )
        c = stages(side, repeats)
        print(
            f"  today's CPU s at {side}x{side}: first detection (tiles on a large frame)"
            f" {c['first']:.3f}, around the"
            f" blanked regions {c['windows']:.3f}, whole-frame check {c['check']:.3f},"
            f" everything else {c['rest']:.3f}"
        )


if __name__ == "__main__":
    main()
