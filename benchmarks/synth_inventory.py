"""Times `dicomflow synth` + `dicomflow inventory` on a ~1,000-file corpus.

Baseline: bare pydicom, one process, reading the same objects (archives expanded in
memory) with ``dcmread`` — the floor that any inventory pays for parsing. Prints both
rates and the ratio. Run: ``.venv/bin/python benchmarks/synth_inventory.py [--patients N]``.
"""

import argparse
import contextlib
import io
import os
import platform
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import pydicom

from pipelines import inventory, synth


def bare_pydicom(root: Path) -> tuple[int, float]:
    """dcmread on every object and archive member; returns (objects, seconds)."""
    start = time.perf_counter()
    count = 0

    def parse(data: bytes) -> None:
        nonlocal count
        count += 1
        with contextlib.suppress(Exception):  # a failed parse costs time too; count it
            pydicom.dcmread(io.BytesIO(data), force=True)

    for path in root.rglob("*"):
        if not path.is_file():
            continue
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    try:
                        parse(zf.read(info))
                    except Exception:
                        count += 1
        elif path.name.endswith(".tar.gz"):
            with tarfile.open(path, "r|gz") as tf:
                for member in tf:
                    if member.isfile():
                        parse(tf.extractfile(member).read())
        else:
            parse(path.read_bytes())
    return count, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=270)  # about 1,000 files
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    mode = [f"--direct_num_workers={args.workers}", "--direct_running_mode=multi_processing"]
    with tempfile.TemporaryDirectory() as tmp:
        corpus, out = Path(tmp) / "corpus", Path(tmp) / "inventory"
        t0 = time.perf_counter()
        synth.run(["--output", str(corpus), "--patients", str(args.patients), *mode])
        t_synth = time.perf_counter() - t0
        files = sum(1 for p in (corpus / "export").rglob("*") if p.is_file())
        t0 = time.perf_counter()
        inventory.run(["--input", str(corpus / "export"), "--output", str(out), *mode])
        t_inv = time.perf_counter() - t0
        t0 = time.perf_counter()
        inventory.run(["--input", str(corpus / "export"), "--output", str(out) + "-1"])
        t_inv1 = time.perf_counter() - t0
        objects, t_bare = bare_pydicom(corpus / "export")
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"synth: {args.patients} patients, {files} files in {t_synth:.1f}s")
    print(
        f"inventory ({args.workers} processes): {objects} objects in {t_inv:.1f}s "
        f"= {objects / t_inv:.0f} objects/s"
    )
    print(f"inventory (in-memory, 1 worker): {t_inv1:.1f}s = {objects / t_inv1:.0f} objects/s")
    print(f"bare pydicom dcmread, 1 process: {t_bare:.1f}s = {objects / t_bare:.0f} objects/s")
    print(f"synth + inventory: {t_synth + t_inv:.1f}s")
    print(f"ratio inventory/bare (objects/s), {args.workers} processes: {t_bare / t_inv:.2f}")
    print(f"ratio inventory/bare (objects/s), in-memory: {t_bare / t_inv1:.2f}")


if __name__ == "__main__":
    main()
