"""Times `dicomflow ingest` against the honest bare loop, split into start-up and per file.

On N and 2N synthetic CT-like files (copies of pydicom's CT_small.dcm, 128², each with its
own patient, study and instance identifiers, so de-identification has real work):
(a) the bare loop, the least ingest must do: pydicom read + decode + modality rescale +
    min/max scale + resize to 224² + uint8 + a ``tf.train.Example`` (TensorFlow's own
    protobuf, the same features ingest writes, original identifiers) + one TFRecord file
    gzipped exactly as ingest gzips (ISA-L at ``transforms.tfrecord.GZIP_LEVEL``, the same
    framing); no de-identification, no labels, no tf.Transform;
(b) ``dicomflow ingest`` on DirectRunner, 1 worker in memory, with a label per patient
    (half positive) so the transform graph's statistics come from a real train split; full
    de-identification;
(c) with ``--workers``: the same with 2 worker processes.
Every run is a whole process timed from start to exit, imports included. The machine is
shared, so runs are interleaved (a N, b N, a 2N, b 2N, then again) and each figure is the
best of the repeats (the median too); wall-clock and CPU time (user + system of the
process) are both reported, the CPU time being the steadier on a loaded machine.

Per file = (T(2N) - T(N)) / N; start-up = T(N) - N x per file. Targets (issue 18): whole
run at 2N >= 0.6 x (a); per file >= 0.77 x (a); start-up < (a)'s + 4 s; (c) >= 1.6 x (b)
per file; peak RSS of (b) at 2N within 15% of N/2 (the memory check, with ``--memory``).

Run: ``.venv/bin/python benchmarks/ingest_speed.py [--files 1000] [--repeats 2]
[--workers] [--memory]``; ``--files 300`` for a quick look.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from models.layout import MANIFEST_NAME

REPO = Path(__file__).resolve().parents[1]
KEY = "b" * 64
ONE = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
TWO = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def make_corpus(root: Path, count: int) -> None:
    """``count`` CT files, a patient per 4 files, each with its own UIDs; their labels in
    ``<root>.labels.csv`` (beside the folder, not in it)."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    root.mkdir(parents=True, exist_ok=True)
    patients = range(-(-count // 4))
    rows = "".join(f"BENCH{p:06d},{'positive' if p % 2 else 'negative'}\n" for p in patients)
    labels_path(root).write_text("PatientID,label\n" + rows)
    for i in range(count):
        ds = template.copy()
        ds.PatientID = f"BENCH{i // 4:06d}"
        ds.PatientName = f"BENCH^PATIENT{i // 4}"
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", str(i // 4)])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", str(i // 4)])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["sop", str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(root / f"IMG{i:06d}.dcm")


def labels_path(root: Path) -> Path:
    return root.with_name(root.name + ".labels.csv")


def bare_loop(root: Path, out: Path, size: int = 224) -> float:
    """(a): the least work that still produces ingest's TFRecord file; returns the loop's
    seconds (the process's time minus this is its start-up)."""
    import numpy as np
    import tensorflow as tf
    from isal import isal_zlib
    from PIL import Image

    from transforms.tfrecord import GZIP_LEVEL, frame_record

    start = time.perf_counter()
    deflate = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 16 + 15)

    def feature(value):
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        data = value if isinstance(value, bytes) else value.encode()
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))

    with open(out, "wb") as fh:
        for path in sorted(root.iterdir()):
            ds = pydicom.dcmread(path)
            arr = ds.pixel_array.astype(np.float32)
            arr = arr * np.float32(ds.get("RescaleSlope", 1)) + np.float32(
                ds.get("RescaleIntercept", 0)
            )
            lo, hi = float(arr.min()), float(arr.max())
            img = Image.fromarray((arr - lo) / max(hi - lo, 1e-6), mode="F")
            pixels = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))
            data = np.floor(np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8).tobytes()
            values = {
                "image": data,
                "image_height": size,
                "image_width": size,
                "image_channels": 1,
                "label": "",
                "frame": 0,
                "sop_instance_uid": str(ds.SOPInstanceUID),
                "series_instance_uid": str(ds.SeriesInstanceUID),
                "study_instance_uid": str(ds.StudyInstanceUID),
                "patient_id": str(ds.PatientID),
                "modality": str(ds.Modality),
            }
            example = tf.train.Example(
                features=tf.train.Features(feature={k: feature(v) for k, v in values.items()})
            )
            fh.write(deflate.compress(frame_record(example.SerializeToString())))
        fh.write(deflate.flush())
    return time.perf_counter() - start


def timed_process(code: str) -> tuple[float, float, int, str]:
    """Runs Python ``code`` in its own process; returns (wall seconds, CPU seconds of the
    process and its children, peak RSS in MB, stdout)."""
    env = {**os.environ, "BENCH_KEY": KEY, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    before = os.times()
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    after = os.times()
    # The grandchildren (worker processes of (c)) are in os.times()' children once reaped.
    cpu = max(
        usage.ru_utime + usage.ru_stime,
        (after.children_user - before.children_user)
        + (after.children_system - before.children_system),
    )
    if status != 0:
        raise SystemExit(f"{code[:60]}... failed with status {status}")
    return wall, cpu, usage.ru_maxrss // 1024, out


def bare(root: Path, out: Path) -> dict:
    """(a) in its own process."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import ingest_speed; print(ingest_speed.bare_loop(ingest_speed.Path({str(root)!r}), "
        f"ingest_speed.Path({str(out)!r})))"
    )
    wall, cpu, rss, printed = timed_process(code)
    return {"wall": wall, "cpu": cpu, "rss": rss, "loop": float(printed)}


def ingest(root: Path, out: Path, beam_args: list[str]) -> dict:
    """(b) or (c) in its own process; checks the run was whole."""
    code = (
        "import sys; from pipelines import ingest; "
        f"sys.exit(ingest.run(['--input', {str(root)!r}, '--output', {str(out)!r}, "
        f"'--labels', {str(labels_path(root))!r}, '--key-env', 'BENCH_KEY', "
        f"*{beam_args!r}]))"
    )
    wall, cpu, rss, _ = timed_process(code)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    files = sum(1 for _ in root.iterdir())
    assert manifest["counts"]["converted"] == files, manifest["counts"]  # a real, whole run
    assert "pixel_mean" in manifest["tf_transform"], manifest["tf_transform"]
    return {"wall": wall, "cpu": cpu, "rss": rss}


def split_cost(small: float, large: float, n: int) -> tuple[float, float]:
    """(seconds per file, start-up seconds) from runs over n and 2n files."""
    per_file = (large - small) / n
    return per_file, small - n * per_file


def summarize(runs: dict[str, list[dict]], n: int, measure: str, pick) -> dict:
    """Per configuration: the picked (best or median) time at N and 2N, per file, start-up."""
    out = {}
    for name in ("bare", "one", "two"):
        if f"{name}@{n}" not in runs:
            continue
        small = pick([r[measure] for r in runs[f"{name}@{n}"]])
        large = pick([r[measure] for r in runs[f"{name}@{2 * n}"]])
        per_file, startup = split_cost(small, large, n)
        out[name] = {"n": small, "2n": large, "per_file": per_file, "startup": startup}
    return out


def report(runs: dict[str, list[dict]], n: int) -> None:
    for label, pick in (("best", min), ("median", statistics.median)):
        for measure in ("wall", "cpu"):
            s = summarize(runs, n, measure, pick)
            a, b = s["bare"], s["one"]
            print(f"\n{label} of {len(runs[f'bare@{n}'])}, {measure} time:")
            for name, row in s.items():
                print(
                    f"  ({dict(bare='a', one='b', two='c')[name]}) {name:4}: {n} files "
                    f"{row['n']:6.1f}s, {2 * n} files {row['2n']:6.1f}s; per file "
                    f"{1000 * row['per_file']:.2f} ms, start-up {row['startup']:.1f}s"
                )
            print(
                f"  whole run at {2 * n}: (b)/(a) {a['2n'] / b['2n']:.2f} (>= 0.6); at {n}: "
                f"{a['n'] / b['n']:.2f}; per file (b)/(a) {a['per_file'] / b['per_file']:.2f} "
                f"(>= 0.77); start-up (b) - (a) {b['startup'] - a['startup']:.1f}s (< 4)"
            )
            if "two" in s:
                print(f"  per file (c)/(b): {b['per_file'] / s['two']['per_file']:.2f} (>= 1.6)")
    # Within one round (a) and (b) ran minutes apart, not hours: the median of the
    # per-round ratios is the steadiest figure when the machine's speed drifts.
    for measure in ("wall", "cpu"):
        whole, per_file = [], []
        for i in range(len(runs[f"bare@{n}"])):
            a = [runs[f"bare@{c}"][i][measure] for c in (n, 2 * n)]
            b = [runs[f"one@{c}"][i][measure] for c in (n, 2 * n)]
            whole.append(a[1] / b[1])
            per_file.append((a[1] - a[0]) / (b[1] - b[0]) if b[1] > b[0] else float("nan"))
        print(
            f"per-round ratios, {measure}: whole run at {2 * n} "
            f"{' '.join(f'{r:.2f}' for r in whole)} (median {statistics.median(whole):.2f}); "
            f"per file {' '.join(f'{r:.2f}' for r in per_file)} "
            f"(median {statistics.median(per_file):.2f})"
        )
    loops = [r["loop"] for r in runs[f"bare@{2 * n}"]]
    print(f"(a)'s loop alone at {2 * n} files (best): {1000 * min(loops) / (2 * n):.2f} ms a file")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1000, help="N (runs at N and 2N)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--workers", action="store_true", help="also (c), 2 worker processes")
    parser.add_argument("--memory", action="store_true", help="also (b) at N/2: peak RSS")
    args = parser.parse_args()
    n = args.files
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f} at start"
    )
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for count in (n, 2 * n):
            make_corpus(base / str(count), count)
        for round_ in range(args.repeats):
            for count in (n, 2 * n):
                corpus = base / str(count)
                plan = [("bare", None), ("one", ONE)] + ([("two", TWO)] if args.workers else [])
                for name, flags in plan:
                    out = base / f"out-{name}-{count}-{round_}"
                    result = bare(corpus, out) if flags is None else ingest(corpus, out, flags)
                    runs.setdefault(f"{name}@{count}", []).append(result)
                    print(f"round {round_ + 1}: {name} {count} files: {result}", flush=True)
        report(runs, n)
        if args.memory:
            make_corpus(base / "half", n // 2)
            small = ingest(base / "half", base / "out-half", ONE)["rss"]
            large = min(r["rss"] for r in runs[f"one@{2 * n}"])
            print(
                f"peak RSS (b): {n // 2} files {small} MB, {2 * n} files {large} MB, ratio "
                f"{large / small:.2f} (<= 1.15)"
            )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
