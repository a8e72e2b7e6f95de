"""The long fuzz run: thousands of hostile inputs, family by family, through the commands.

The same generator as the test suite (``transforms/testing/fuzz.py``), at full strength:
the default limits (no limit flags), bombs sized ``--scale-mib`` MiB (a zip member of a
header and 64-256 MiB of zeros, deflated datasets inflating past the default limit, ...),
two workers. Each family gets its own input folder and each command its own process under
a watchdog that samples the resident memory of the whole process tree from /proc; the
table gives peak memory, time, exit status and conservation (every input in exactly one
row: ``seen`` equals the rows the generator expects, where it knows them).

Run: ``.venv/bin/python benchmarks/fuzz_run.py [--count 2400] [--workdir DIR]
[--commands inventory,deidentify,ingest] [--model MODEL_DIR]`` (``--model`` adds score).
Prints a Markdown table and writes ``results.json`` under the workdir.
"""

import argparse
import collections
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.layout import MANIFEST_NAME  # noqa: E402
from transforms.testing import fuzz  # noqa: E402

KEY_ENV = "DF_FUZZ_BENCH_KEY"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2400)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--scale-mib", type=int, default=64)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--commands", default="inventory,deidentify,ingest")
    parser.add_argument("--model", default=None, help="a model directory: adds score")
    parser.add_argument("--families", default=",".join(fuzz.FAMILIES))
    parser.add_argument("--mode", default="multi_processing")
    parser.add_argument("--ceiling-gib", type=float, default=8.0, help="watchdog kill line")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dicomflow-fuzz-"))
    families = tuple(args.families.split(","))
    commands = args.commands.split(",") + (["score"] if args.model else [])
    per_family = max(1, args.count // len(fuzz.FAMILIES))
    env = {**os.environ, KEY_ENV: "b" * 64, "PYTHONPATH": str(REPO)}
    beam = ["--direct_num_workers=2", f"--direct_running_mode={args.mode}"]
    results = []
    started = time.monotonic()
    for family in families:
        cases = fuzz.fuzz_corpus(args.seed, per_family, (family,), args.scale_mib * fuzz.MiB)
        source = workdir / "in" / family
        if not source.exists():
            fuzz.write_corpus(cases, str(source))
        known = [c.rows for c in cases]
        expected = sum(r for r in known if r is not None)
        unknown = sum(1 for r in known if r is None)
        for command in commands:
            out = workdir / "out" / family / command
            argv = [sys.executable, "-m", "pipelines.cli", command, "--input", str(source)]
            argv += ["--output", str(out), *beam]
            if command != "inventory":
                argv += ["--key-env", KEY_ENV]
            if command == "score":
                argv += ["--model", args.model]
            done = fuzz.run_watched(argv, int(args.ceiling_gib * 2**30), args.timeout, env=env)
            counts = {}
            if done.returncode == 0:
                counts = json.loads((out / MANIFEST_NAME).read_text())["counts"]
            seen = counts.get("seen", 0)
            conserved = seen == expected if not unknown else seen >= expected + unknown
            row = {
                "family": family,
                "command": command,
                "inputs": len(cases),
                "peak_rss_mib": round(done.peak_rss / 2**20),
                "seconds": round(done.seconds, 1),
                "exit": done.returncode,
                "killed": done.killed,
                "seen": seen,
                "conserved": conserved,
                "error_types": dict(collections.Counter(counts.get("by_error_type", {}))),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
    total = round(time.monotonic() - started)
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n{platform.machine()}, {os.cpu_count()} cores; {total} s in all; {workdir}\n")
    print("| family | command | inputs | peak RSS (MiB) | time (s) | exit | conserved |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in results:
        print(
            f"| {r['family']} | {r['command']} | {r['inputs']} | {r['peak_rss_mib']} | "
            f"{r['seconds']} | {r['exit']}{' ' + r['killed'] if r['killed'] else ''} | "
            f"{'yes' if r['conserved'] else 'NO'} |"
        )
    return 0 if all(r["exit"] == 0 and r["conserved"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
