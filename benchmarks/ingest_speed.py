"""Times `dicomflow ingest` against a bare loop, and checks its memory stays flat.

On the same N synthetic CT-like files (copies of pydicom's CT_small.dcm with their own
patient, study and instance identifiers, so de-identification has real work):
(a) a bare loop in one process: pydicom read + decode + resize + serialize a tf.Example
    to one TFRecord (no de-identification, no labels, no tf.Transform);
(b) our ingest pipeline on DirectRunner, 1 worker (in memory), with a label per patient
    (half of them positive), so that tf.Transform analyzes a real train split;
(c) the same with 2 worker processes (multi_processing).
Each runs as its own process and is timed from start to exit, imports included, so all
three pay the same interpreter and TensorFlow start-up. The loop-only rate of (a) is
printed too. Then the peak memory (max RSS) of (b) for N/2 and 2N files (the issue's
1,000 and 4,000 for the default N).
Targets: (b) >= 0.6 x (a) files/s while doing the full de-id; (c) >= 1.6 x (b); peak
memory of (b) for 2N within 15% of N/2.

A run's time is a fixed start-up cost (imports, graph construction, worker start-up)
plus a cost per file. (b) and (c) also run on 2N files, and the extra N files' time
gives each its rate per file with start-up taken out, and the start-up it pays: what two
workers buy once a corpus is large enough to pay for starting them.

Run: ``.venv/bin/python benchmarks/ingest_speed.py [--files 2000]``.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

KEY = "b" * 64


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
    """(a): the least work that still produces a TFRecord of images; returns seconds."""
    import tensorflow as tf

    start = time.perf_counter()
    with tf.io.TFRecordWriter(str(out), options="GZIP") as writer:
        for path in sorted(root.iterdir()):
            ds = pydicom.dcmread(path)
            arr = ds.pixel_array.astype(np.float32)
            lo, hi = float(arr.min()), float(arr.max())
            img = Image.fromarray((arr - lo) / max(hi - lo, 1e-6), mode="F")
            pixels = np.asarray(img.resize((size, size), Image.BILINEAR))
            data = (np.clip(pixels, 0, 1) * 255).astype(np.uint8).tobytes()
            feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))}
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())
    return time.perf_counter() - start


def timed_process(code: str) -> tuple[float, int, str]:
    """Runs Python ``code`` in its own process; returns (seconds, peak RSS in MB, stdout)."""
    env = {**os.environ, "BENCH_KEY": KEY}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{code[:60]}... failed with status {status}")
    return seconds, usage.ru_maxrss // 1024, out


def bare(root: Path, out: Path) -> tuple[float, float]:
    """(a) in its own process; returns (process seconds, loop-only seconds)."""
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import ingest_speed; print(ingest_speed.bare_loop(ingest_speed.Path({str(root)!r}), "
        f"ingest_speed.Path({str(out)!r})))"
    )
    seconds, _, printed = timed_process(code)
    return seconds, float(printed)


def ingest(root: Path, out: Path, *beam_args: str) -> tuple[float, int]:
    """Runs ingest in its own process; returns (seconds, peak RSS in MB)."""
    code = (
        "import sys; from pipelines import ingest; "
        f"sys.exit(ingest.run(['--input', {str(root)!r}, '--output', {str(out)!r}, "
        f"'--labels', {str(labels_path(root))!r}, '--key-env', 'BENCH_KEY', "
        f"*{list(beam_args)!r}]))"
    )
    seconds, rss, _ = timed_process(code)
    manifest = json.loads((out / "manifest.json").read_text())
    files = sum(1 for _ in root.iterdir())
    assert manifest["counts"]["converted"] == files, manifest["counts"]  # a real, whole run
    assert "pixel_mean" in manifest["tf_transform"], manifest["tf_transform"]
    return seconds, rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args()
    n = args.files
    one = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
    two = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        make_corpus(base / "n", n)
        t_bare, t_loop = bare(base / "n", base / "bare.tfrecord.gz")
        t_one, _ = ingest(base / "n", base / "out1", *one)
        t_two, _ = ingest(base / "n", base / "out2", *two)
        make_corpus(base / "small", n // 2)
        _, rss_small = ingest(base / "small", base / "out3", *one)
        make_corpus(base / "large", 2 * n)
        t_one_large, rss_large = ingest(base / "large", base / "out4", *one)
        t_two_large, _ = ingest(base / "large", base / "out5", *two)
    rate = {k: n / v for k, v in {"bare": t_bare, "one": t_one, "two": t_two}.items()}
    marginal = {"one": n / (t_one_large - t_one), "two": n / (t_two_large - t_two)}
    fixed = {"one": t_one - n / marginal["one"], "two": t_two - n / marginal["two"]}
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(
        f"(a) bare loop: {n} files in {t_bare:.1f}s = {rate['bare']:.0f} files/s "
        f"(the loop alone, imports excluded: {n / t_loop:.0f} files/s)"
    )
    print(f"(b) ingest, 1 worker: {t_one:.1f}s = {rate['one']:.0f} files/s")
    print(f"(c) ingest, 2 workers: {t_two:.1f}s = {rate['two']:.0f} files/s")
    print(f"ratio (b)/(a): {rate['one'] / rate['bare']:.2f} (target >= 0.6)")
    print(f"ratio (c)/(b): {rate['two'] / rate['one']:.2f} (target >= 1.6)")
    print(
        f"{2 * n} files: (b) {t_one_large:.1f}s, (c) {t_two_large:.1f}s; per file, start-up "
        f"taken out: (b) {marginal['one']:.0f} files/s, (c) {marginal['two']:.0f} files/s, "
        f"ratio {marginal['two'] / marginal['one']:.2f}; start-up: (b) {fixed['one']:.1f}s, "
        f"(c) {fixed['two']:.1f}s"
    )
    print(
        f"peak RSS (b): {n // 2} files {rss_small} MB, {2 * n} files {rss_large} MB, "
        f"ratio {rss_large / rss_small:.2f} (target <= 1.15)"
    )


if __name__ == "__main__":
    main()
