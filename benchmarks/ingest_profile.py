"""Where `dicomflow ingest` spends its time: start-up by phase, and per file by stage.

One in-process run (DirectRunner, 1 worker, in memory) on ``--files`` synthetic CT files
(the corpus of ``ingest_speed.py``, labels included). Start-up phases are timed with the
process's CPU clock (steadier than the wall clock on a shared machine) and no profiler:
interpreter and Beam import, our modules, graph construction, the run (the transform
graph is a copy of the one shipped for the image geometry: no TensorFlow import unless
the geometry is not shipped; the script says whether TensorFlow was imported before and
during the run); interpreter exit is not counted.
Then the same run again in a fresh process under cProfile, summarised by stage: each
stage's cumulative time over the files (profiler overhead included, so read the shares
rather than the absolute figures), and the runner's own work as the rest.

Run: ``.venv/bin/python benchmarks/ingest_profile.py [--files 300]``.
"""

import argparse
import cProfile
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Start-up inside the profiled call: graph construction.
STARTUP = {"graph construction": [("pipelines/ingest.py", "build_pipeline")]}
# Stage → functions whose cumulative time is the stage's (file:line-free name match).
STAGES = {
    "read (match, open, bytes)": [("transforms/dicom_io/read.py", "process")],
    "duplicate pre-pass (headers)": [("transforms/dicom_io/dedupe.py", "_places")],
    "parse (pydicom + completeness)": [("transforms/dicom_io/parse.py", "parse_dataset")],
    "labels join": [("transforms/labels.py", "process")],
    "de-identification": [("transforms/deid/objects.py", "deidentify_dataset")],
    "pixels (decode, LUT, window, resize)": [("transforms/pixels.py", "normalize")],
    "uint8 + tf.Example + index rows": [
        ("transforms/convert.py", "to_image"),
        ("pipelines/ingest.py", "to_converted"),
    ],
    "gzip TFRecord write": [("transforms/tfrecord.py", "write_encoded_record")],
    "Parquet index and errors": [("transforms/parquet.py", "_write_table")],
    "train statistics: pixel moments and label counts": [
        ("transforms/transform_graph.py", "image_moments"),
        ("transforms/transform_graph.py", "add_input"),
    ],
    "transform graph: one SavedModel write, publish": [
        ("transforms/transform_graph.py", "process")
    ],
}

PHASES = """
import sys, time
marks = [("interpreter", time.process_time())]
import apache_beam
marks.append(("Beam import", time.process_time()))
from pipelines import ingest
from pipelines.options import execute, new_pipeline, parse_options
marks.append(("our modules (pydicom, pyarrow, ...)", time.process_time()))
opts, beam_options = parse_options("ingest", sys.argv[1:], ingest.IngestOptions)
config = ingest.configure(opts, beam_options)
pipeline = ingest.build_pipeline(new_pipeline(beam_options), config)
marks.append(("configuration + graph construction", time.process_time()))
launcher_tf = "tensorflow" in sys.modules
execute(pipeline, config.inputs, config.output)
marks.append(("run (files + runner + transform graph + manifest)", time.process_time()))
last = 0.0
for name, t in marks:
    print(f"{t - last:6.2f} s  {name}")
    last = t
print(
    f"{last:6.2f} s  in all; TensorFlow imported before the run: {launcher_tf}, "
    f"by its end: {'tensorflow' in sys.modules}"
)
"""


def argv_for(corpus: Path, out: Path) -> list[str]:
    from ingest_speed import labels_path

    return [
        "--input",
        str(corpus),
        "--output",
        str(out),
        "--labels",
        str(labels_path(corpus)),
        "--key-env",
        "BENCH_KEY",
        "--direct_num_workers=1",
        "--direct_running_mode=in_memory",
    ]


def phases(corpus: Path, out: Path) -> None:
    env = {"BENCH_KEY": "b" * 64, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    import os

    done = subprocess.run(
        [sys.executable, "-c", PHASES, *argv_for(corpus, out)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    print(done.stdout, end="")


def stages(corpus: Path, out: Path, files: int) -> None:
    import os

    os.environ["BENCH_KEY"] = "b" * 64
    import tensorflow_transform  # noqa: F401  (imports are timed above, not here)

    from pipelines import ingest

    profile = cProfile.Profile(time.process_time)  # CPU time: steadier on a shared machine
    profile.enable()
    ingest.run(argv_for(corpus, out))
    profile.disable()
    stats = pstats.Stats(profile).stats
    total = sum(row[2] for row in stats.values())
    print(f"profiled: {total:.1f} s CPU (graph construction and run)")
    accounted = 0.0
    for stage, functions in {**STARTUP, **STAGES}.items():
        seconds = _cumulative(stats, functions)
        accounted += seconds
        print(f"{1000 * seconds / files:7.2f} ms a file  {100 * seconds / total:5.1f}%  {stage}")
    rest = total - accounted
    print(f"{1000 * rest / files:7.2f} ms a file  {100 * rest / total:5.1f}%  runner and the rest")


def _cumulative(stats: dict, functions: list[tuple[str, str]]) -> float:
    """Sum of cumulative time of the matching functions, counting no nested call twice."""
    total = 0.0
    for (path, _, name), (_, _, _, cumulative, callers) in stats.items():
        if any(path.endswith(p) or p in path for p, n in functions if n == name):
            nested = any(
                any(c[0].endswith(p) or p in c[0] for p, n in functions if n == c[2])
                for c in callers
            )
            if not nested:
                total += cumulative
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=300)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from ingest_speed import make_corpus

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        make_corpus(corpus, args.files)
        print(f"start-up and run by phase, CPU seconds, {args.files} files:")
        phases(corpus, Path(tmp) / "phases")
        print(f"\nper file by stage, cProfile, {args.files} files:")
        stages(corpus, Path(tmp) / "stages", args.files)


if __name__ == "__main__":
    main()
