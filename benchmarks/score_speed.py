"""Times scoring against its limit and against a naive per-element DoFn, on this machine.

One exported model, the same 2,000 preprocessed images (an ingest-like TFRecord folder),
each rate a whole process timed from start to exit (imports, model load, reading included),
the median of ``--repeat`` interleaved runs:
(a) the limit: ``load_serving(...).predict`` over batches of the scoring batch size, in one
    process, reading the same shards, writing nothing;
(b) ``dicomflow score`` from the TFRecords on DirectRunner (in_memory, 1 worker), Parquet;
(c) a naive Beam pipeline: the same shards, a DoFn that calls the model once per element,
    rows written with ``WriteToParquet``. Two of them, once each model API:
    (c1) the SavedModel's serving signature, as our handler calls it, one image a call;
    (c2) the Keras model (``model.keras``) with ``model.predict``, one image a call, the
         input made by the same transform graph: the per-element DoFn as it is usually
         written. It runs once (``--repeat`` does not apply): about a minute.
Targets: (b) >= 0.85 x (a) images/s; (b) >= 5 x (c).

``--task segmentation`` times a U-Net instead (``models.unet.build_unet``, untrained: its
speed does not depend on its weights) exported as the trainer exports one, on ``--images``
random textured images of ``--size`` pixels: (a) the same bare predict loop (its output is
size x size x classes per image); (b) ``dicomflow score`` on them, whose rows add the
argmax, 8-connected components and boxes of every image (TFRecord input: the model's grid).
Target: (b) >= 0.9 x (a).

Run: ``.venv/bin/python benchmarks/score_speed.py [--workdir DIR] [--images 2000]``. The
first run synthesizes a corpus, ingests it (224 x 224 x 1), trains one epoch and writes
the image folder under DIR; later runs with the same DIR reuse them.
"""

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEY_ENV = "DF_BENCH_KEY"
SHARDS = 4


def prepare(workdir: Path, patients: int, images: int) -> tuple[Path, Path]:
    """(model dir, image folder): synth → ingest → train 1 epoch → N examples in shards."""
    from models import trainer
    from pipelines import ingest, synth
    from transforms.tfrecord import encode_example, iter_records, parse_example

    corpus, ingested, models = workdir / "corpus", workdir / "ingest", workdir / "models"
    folder = workdir / f"images-{images}"
    os.environ[KEY_ENV] = "b" * 64  # throwaway: benchmark data only
    if not ingested.exists():
        synth.run(["--output", str(corpus), "--patients", str(patients), "--seed", "0"])
        argv = ["--input", f"{corpus}/export", "--output", str(ingested), "--key-env", KEY_ENV]
        assert ingest.run([*argv, "--labels", f"{corpus}/labels.csv"]) == 0
    if not models.exists():
        config = trainer.TrainConfig(
            data=str(ingested), model_dir=str(models), epochs=1, augment="none", min_auc=0.0
        )
        trainer.train(config)
    if not folder.exists():
        examples = []
        for path in sorted(ingested.glob("tfrecords/*/part-*.tfrecord.gz")):
            with gzip.open(path) as fh:
                examples += [parse_example(r) for r in iter_records(fh)]

        def record(i: int) -> bytes:
            ex = examples[i % len(examples)]
            shape = tuple(ex[k][0] for k in ("image_height", "image_width", "image_channels"))
            ids = {
                k: ex[k][0].decode()
                for k in ("series_instance_uid", "study_instance_uid", "patient_id", "modality")
            }
            ids["sop_instance_uid"] = f"2.25.{10**20 + i}"  # every image its own instance
            return encode_example(ex["image"][0], shape, ids, "", 0)

        _write_shards(folder, images, record)
    return models, folder


def prepare_segmentation(workdir: Path, images: int, size: int, depth: int, width: int):
    """(version folder, image folder): an exported U-Net version and N random images."""
    import datetime

    import numpy as np

    from models import export
    from models.features import UNET
    from models.transform_writer import write_transform
    from transforms.pixels import PixelConfig
    from transforms.tfrecord import encode_example

    version = workdir / f"unet-{size}-{depth}-{width}" / "1"
    if not version.exists():
        import tensorflow_transform as tft

        from models.unet import build_unet

        transform = version.parent / "transform"
        write_transform(str(transform), 0.5, 0.25, ["0", "1"], size, 1)
        network = build_unet((size, size, 1), 2, depth=depth, width=width)
        layer = tft.TFTransformOutput(str(transform)).transform_features_layer()
        module = export.ServingModule(layer, network, (size, size, 1))
        export.save_serving(module, str(version / export.SAVED_MODEL))
        now = datetime.datetime.now(datetime.UTC).isoformat()
        info = export.model_info(
            "1", ["0", "1"], (size, size, 1), UNET, None, now, "bench",
            PixelConfig(size=size).describe(), task="segmentation",
        )  # fmt: skip
        export.write_json(str(version / export.MODEL_JSON), info.to_json())
    folder = workdir / f"seg-images-{images}-{size}"
    if not folder.exists():
        rng = np.random.default_rng(0)

        def record(i: int) -> bytes:  # called in order: the images do not depend on SHARDS
            coarse = rng.random((size // 8, size // 8))  # blobs, not white noise
            image = np.kron(coarse, np.ones((8, 8))) * 255
            ids = {"sop_instance_uid": f"2.25.{10**20 + i}", "patient_id": f"P{i}"}
            return encode_example(image.astype(np.uint8).tobytes(), (size, size, 1), ids, "", 0)

        _write_shards(folder, images, record)
    return version, folder


def _write_shards(folder: Path, images: int, record: Callable[[int], bytes]) -> None:
    """Records 0 to ``images`` - 1 (``record(i)`` each, in order) in ``SHARDS`` gzip shards of
    the folder's test split, as ingest lays them out."""
    from models.layout import TFRECORDS_DIR
    from transforms.tfrecord import frame_record

    shard_dir = folder / TFRECORDS_DIR / "test"
    shard_dir.mkdir(parents=True)
    per_shard = -(-images // SHARDS)
    for shard in range(SHARDS):
        path = shard_dir / f"part-{shard:05d}-of-{SHARDS:05d}.tfrecord.gz"
        with gzip.open(path, "wb") as fh:
            for i in range(shard * per_shard, min(images, (shard + 1) * per_shard)):
                fh.write(frame_record(record(i)))


BARE = """
import glob, gzip, sys
from models.export import load_serving, resolve_model
from transforms.tfrecord import iter_records, parse_example
model = load_serving(resolve_model(sys.argv[1]))
images = []
for path in sorted(glob.glob(sys.argv[2] + "/tfrecords/*/part-*.tfrecord.gz")):
    with gzip.open(path) as fh:
        images += [parse_example(r)["image"][0] for r in iter_records(fh)]
batch = int(sys.argv[3])
scored = sum(len(model.predict(images[i : i + batch])) for i in range(0, len(images), batch))
assert scored == len(images)
"""

NAIVE = """
import glob, sys
import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions

class PredictEach(beam.DoFn):
    def setup(self):
        from models.export import load_serving, resolve_model
        self.model = load_serving(resolve_model(sys.argv[1]))
    def process(self, record):
        from transforms.tfrecord import parse_example
        ex = parse_example(record)
        p = self.model.predict([ex["image"][0]])[0]
        yield {"sop_instance_uid": ex["sop_instance_uid"][0].decode(), "score": float(p[-1])}

class PredictEachKeras(beam.DoFn):
    def setup(self):
        import keras
        import models.calibration  # registers the Calibrate layer model.keras ends with
        from models.export import load_serving, resolve_model
        version = resolve_model(sys.argv[1])
        self.serving = load_serving(version)  # its transform graph makes the input
        self.model = keras.saving.load_model(version + "/model.keras")
    def process(self, record):
        from transforms.tfrecord import parse_example
        ex = parse_example(record)
        p = self.model.predict(self.serving.normalize([ex["image"][0]]), verbose=0)[0]
        yield {"sop_instance_uid": ex["sop_instance_uid"][0].decode(), "score": float(p[-1])}

schema = pa.schema([("sop_instance_uid", pa.string()), ("score", pa.float32())])
options = PipelineOptions(["--direct_num_workers=1", "--direct_running_mode=in_memory"])
with beam.Pipeline(options=options) as p:
    _ = (
        p
        | beam.io.ReadFromTFRecord(sys.argv[2] + "/tfrecords/*/part-*.tfrecord.gz")
        | beam.ParDo(PredictEachKeras() if sys.argv[4] == "keras" else PredictEach())
        | beam.io.WriteToParquet(sys.argv[3] + "/part", schema, file_name_suffix=".parquet")
    )
"""


def timed(argv: list[str]) -> float:
    """Seconds from process start to exit."""
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{argv[:3]} failed:\n{done.stderr[-3000:]}")
    return seconds


def time_runs(args, model: Path, folder: Path, naive: bool) -> tuple[dict[str, list], dict]:
    """Seconds of each run of (a) and (b), and with ``naive`` of (c1) and, once, (c2); and
    the last (b)'s manifest. Runs are interleaved, so a slow spell of the VM hits them all."""
    n, python = args.images, sys.executable
    seconds: dict[str, list[float]] = {"a": [], "b": []}
    if naive:
        seconds |= {"c1": [], "c2": []}
    with tempfile.TemporaryDirectory() as out:
        for i in range(args.repeat):
            seconds["a"].append(
                timed([python, "-c", textwrap.dedent(BARE), str(model), str(folder),
                       str(args.batch_size)])
            )  # fmt: skip
            seconds["b"].append(timed([
                python, "-m", "pipelines.cli", "score", "--input", str(folder), "--model",
                str(model), "--output", f"{out}/b", "--run-id", "bench", "--batch-size",
                str(args.batch_size), "--direct_num_workers=1", "--direct_running_mode=in_memory",
            ]))  # fmt: skip
            manifest = json.loads(Path(f"{out}/b/manifest.json").read_text())
            assert manifest["counts"]["scored"] == n, manifest["counts"]
            if naive:
                seconds["c1"].append(
                    timed([python, "-c", textwrap.dedent(NAIVE), str(model), str(folder),
                           f"{out}/c{i}", "signature"])
                )  # fmt: skip
        if naive:
            seconds["c2"].append(
                timed([python, "-c", textwrap.dedent(NAIVE), str(model), str(folder),
                       f"{out}/keras", "keras"])
            )  # fmt: skip
    return seconds, manifest


LABELS = {
    "a": "bare predict",
    "b": "score pipeline",
    "c1": "naive DoFn, signature",
    "c2": "naive DoFn, Keras predict",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="keeps corpus, model and images between runs")
    parser.add_argument("--task", choices=("classification", "segmentation"),
                        default="classification")  # fmt: skip
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; medians")
    parser.add_argument("--size", type=int, default=224, help="segmentation: image size")
    parser.add_argument("--unet-depth", type=int, default=3, help="segmentation")
    parser.add_argument("--unet-width", type=int, default=16, help="segmentation")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="score-speed-"))
    workdir.mkdir(parents=True, exist_ok=True)
    n = args.images
    if args.task == "segmentation":
        model, folder = prepare_segmentation(
            workdir, n, args.size, args.unet_depth, args.unet_width
        )
        subject = (
            f"{n} images of {args.size}x{args.size}, U-Net depth {args.unet_depth} width "
            f"{args.unet_width}, batch {args.batch_size}"
        )
    else:
        model, folder = prepare(workdir, args.patients, n)
        subject = f"{n} images of {folder}, model {model}, batch {args.batch_size}"
    seconds, manifest = time_runs(args, model, folder, naive=args.task == "classification")
    rates = {name: n / statistics.median(s) for name, s in seconds.items()}
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(subject)
    print(f"whole processes, median of {args.repeat} (seconds of each run in brackets)")
    for name, runs in seconds.items():
        listed = ", ".join(f"{s:.1f}" for s in runs)
        print(f"({name}) {LABELS[name]:<26} {rates[name]:7.1f} images/s ({listed} s)")
    if args.task == "segmentation":
        print(f"(b)/(a) = {rates['b'] / rates['a']:.2f} (target >= 0.9)")
        return
    inside = manifest["timings"]["images_per_second"]
    print(f"(b) from its graph's construction to its manifest (no imports): {inside:.1f} images/s")
    print(f"(b)/(a) = {rates['b'] / rates['a']:.2f} (target >= 0.85)")
    print(f"(b)/(c1) = {rates['b'] / rates['c1']:.2f} (target >= 5)")
    print(f"(b)/(c2) = {rates['b'] / rates['c2']:.2f} (target >= 5)")


if __name__ == "__main__":
    main()
