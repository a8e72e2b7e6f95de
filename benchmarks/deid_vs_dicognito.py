"""Times our de-identification engine against dicognito on the same ~1,000 DICOM objects.

Both sides do the same bytes-in → Part 10 bytes-out work, one process each, over objects
already in memory (file I/O excluded): dicognito parses with ``pydicom.dcmread``,
anonymizes, and writes with ``save_as``; ours runs ``deid.deidentify_object`` (parse,
the full PS3.15 Annex E profile, write). Pixels are kept on our side
(``PixelPolicy(policy="keep")``) so that both tools process every object; dicognito does
not look at pixels. Prints both rates, the ratio (ours / dicognito) and a verdict against
the 2x target. dicognito is a benchmark-only dependency.

Run: ``.venv/bin/python benchmarks/deid_vs_dicognito.py [--files N] [--profile]``.
"""

import argparse
import collections
import cProfile
import io
import os
import platform
import pstats
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom

from pipelines import synth
from transforms import deid, dicom_io
from transforms.deadletter import StageError

try:
    import dicognito
    from dicognito.anonymizer import Anonymizer
except ImportError:
    sys.exit(
        "dicognito is not installed (benchmark-only dependency): "
        ".venv/bin/pip install dicognito==0.19.0"
    )

TARGET_RATIO = 2.0
REPETITIONS = 3
WARMUP_FILES = 20

Tool = Callable[[bytes], bytes]


def build_corpus(root: Path, limit: int) -> tuple[list[bytes], collections.Counter]:
    """The first ``limit`` objects of a synth corpus that pydicom parses and ours accepts.

    Returns the objects' bytes and, by reason, the candidates that were passed over.
    """
    synth.run(["--output", str(root), "--patients", "270", "--seed", "0"])
    engine = _our_engine()
    objects: list[bytes] = []
    skipped: collections.Counter = collections.Counter()
    for path in sorted(p for p in (root / "export").rglob("*") if p.is_file()):
        for item in dicom_io.iter_objects(str(path), path.stat().st_size):
            if len(objects) == limit:
                return objects, skipped
            if not isinstance(item, dicom_io.SourceObject):
                skipped[f"unreadable ({item.error_type})"] += 1
                continue
            try:
                pydicom.dcmread(io.BytesIO(item.data))
            except Exception as e:
                skipped[f"pydicom cannot parse ({type(e).__name__})"] += 1
                continue
            try:
                deid.deidentify_object(item.data, engine)
            except StageError as e:
                skipped[f"ours rejects ({e.error_type})"] += 1
                continue
            objects.append(item.data)
    return objects, skipped


def _our_engine() -> deid.Deidentifier:
    config = deid.DeidConfig(pixels=deid.PixelPolicy(policy="keep"))
    return deid.Deidentifier(deid.Profile.load(), config, secrets.token_bytes(32))


def make_ours() -> Tool:
    engine = _our_engine()

    def run(data: bytes) -> bytes:
        result, _ = deid.deidentify_object(data, engine)
        return result.data

    return run


def make_dicognito() -> Tool:
    anonymizer = Anonymizer()

    def run(data: bytes) -> bytes:
        ds = pydicom.dcmread(io.BytesIO(data))
        anonymizer.anonymize(ds)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    return run


def failures(tool: Tool, objects: list[bytes]) -> dict[int, str]:
    """Index → reason for each object on which ``tool`` raised or wrote no Part 10 file."""
    failed = {}
    for i, data in enumerate(objects):
        try:
            out = tool(data)
        except Exception as e:
            failed[i] = e.error_type if isinstance(e, StageError) else type(e).__name__
            continue
        if out[128:132] != b"DICM":
            failed[i] = "no Part 10 output"
    return failed


def best_time(tools: dict[str, Tool], objects: list[bytes]) -> dict[str, float]:
    """Best of REPETITIONS passes per tool; the tools alternate so drift hits both alike."""
    for tool in tools.values():
        for data in objects[:WARMUP_FILES]:
            tool(data)
    best = dict.fromkeys(tools, float("inf"))
    for _ in range(REPETITIONS):
        for name, tool in tools.items():
            start = time.perf_counter()
            for data in objects:
                tool(data)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _describe_failures(failed: dict[int, str]) -> str:
    if not failed:
        return "0"
    by_reason = collections.Counter(failed.values())
    return f"{len(failed)} ({', '.join(f'{r}: {n}' for r, n in by_reason.most_common())})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000, help="objects to de-identify")
    parser.add_argument(
        "--profile", action="store_true", help="also profile ours (top 15 by cumulative time)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        objects, skipped = build_corpus(Path(tmp), args.files)
    tools = {"dicognito": make_dicognito(), "ours": make_ours()}
    failed = {name: failures(tool, objects) for name, tool in tools.items()}
    excluded = set().union(*failed.values())
    timed = [data for i, data in enumerate(objects) if i not in excluded]
    best = best_time(tools, timed)
    rate = {name: len(timed) / seconds for name, seconds in best.items()}
    ratio = rate["ours"] / rate["dicognito"]

    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(
        f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} cores, "
        f"{memory_gb:.0f} GB, Python {platform.python_version()}"
    )
    print(f"versions: pydicom {pydicom.__version__}, dicognito {dicognito.__version__}")
    passed_over = ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items()))
    print(f"corpus: {len(objects)} objects (synth, 270 patients; passed over: {passed_over})")
    print(
        "work: bytes in -> Part 10 bytes out, in memory, one process each, best of "
        f"{REPETITIONS} after {WARMUP_FILES} warm-up objects; ours runs the full Annex E "
        "profile with pixels kept (policy keep), as dicognito does not look at pixels"
    )
    for name in tools:
        print(f"failures, {name}: {_describe_failures(failed[name])}")
    print(f"excluded from both timings: {len(excluded)}; timed: {len(timed)} objects")
    for name in tools:
        print(f"{name}: {best[name]:.2f}s = {rate[name]:.0f} files/s")
    print(f"ratio ours/dicognito (files/s): {ratio:.2f}")
    verdict = "meets" if ratio >= TARGET_RATIO else "misses"
    print(f"verdict: ours is {ratio:.2f}x dicognito, {verdict} the {TARGET_RATIO:.0f}x target")

    if args.profile:
        profiler = cProfile.Profile()
        ours = tools["ours"]
        profiler.enable()
        for data in timed:
            ours(data)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(15)


if __name__ == "__main__":
    main()
