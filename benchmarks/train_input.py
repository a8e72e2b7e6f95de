"""Times the training input pipeline alone against the training step alone, on this machine.

(a) input: ``models.inputs.make_dataset`` for the train split exactly as the trainer builds
it (shards interleaved, gzip, parse, tf.Transform graph, shuffle, augmentation, class
weights, prefetch), iterated without a model — first from the shards (no cache: the first
epoch, and every epoch of a dataset too big to cache), then from the in-memory cache.
(b) step: the CNN's training step (forward, backward, Adam update) on one batch held in
memory and repeated, so no input work is in the way.
Target: (a) ≥ 3 x (b), so the input will not starve a faster accelerator.

Run: ``.venv/bin/python benchmarks/train_input.py [--data INGEST_OUTPUT | --patients N]``;
without ``--data`` it synthesizes N patients and ingests them (224 x 224) first.
"""

import argparse
import os
import platform
import statistics
import tempfile
import time

import keras
import tensorflow as tf
import tensorflow_transform as tft

from models import features as f
from models import inputs
from models.networks import build_network
from models.train_config import DEFAULT_AUGMENT


def make_ingest_output(patients: int, root: str) -> str:
    from pipelines import ingest, synth

    corpus, out = os.path.join(root, "corpus"), os.path.join(root, "ingest")
    synth.run(["--output", corpus, "--patients", str(patients), "--seed", "0"])
    os.environ["DF_BENCH_KEY"] = "b" * 64  # throwaway: benchmark data only
    argv = ["--input", f"{corpus}/export", "--output", out, "--labels", f"{corpus}/labels.csv"]
    assert ingest.run([*argv, "--key-env", "DF_BENCH_KEY"]) == 0
    return out


def input_rate(dataset: tf.data.Dataset, passes: int = 5) -> tuple[float, float]:
    """Examples per second over whole passes (epochs), median and slowest of ``passes``
    after one untimed pass (tracing; for a cached dataset, filling the cache)."""
    rates = []
    for i in range(passes + 1):
        start, n = time.perf_counter(), 0
        for batch in dataset:
            n += int(tf.shape(batch[0])[0])
        if i:
            rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates), min(rates)


def step_rate(info: inputs.DataInfo, batch_size: int, steps: int) -> tuple[float, float]:
    """Examples per second of training steps: median and fastest of 3 timed runs."""
    model = build_network("cnn", info.image_shape, len(info.labels))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=[keras.metrics.AUC(name="auc", multi_label=True, num_labels=len(info.labels))],
    )
    x = tf.random.normal([batch_size, *info.image_shape])
    y = tf.one_hot(tf.range(batch_size) % len(info.labels), len(info.labels))
    w = tf.ones([batch_size])
    data = tf.data.Dataset.from_tensors((x, y, w)).repeat().prefetch(2)
    model.fit(data, steps_per_epoch=3, epochs=1, shuffle=False, verbose=0)  # build, trace
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        model.fit(data, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0)
        rates.append(steps * batch_size / (time.perf_counter() - start))
    return statistics.median(rates), max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="an ingest output (default: synthesize and ingest one)")
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40, help="training steps timed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or make_ingest_output(args.patients, tmp)
        info = inputs.read_info(data)
        layer = tft.TFTransformOutput(info.transform_dir).transform_features_layer()
        weights = inputs.class_weights(info)

        def dataset(cache: bool) -> tf.data.Dataset:
            return inputs.make_dataset(
                info,
                f.TRAIN,
                layer,
                args.batch_size,
                training=True,
                augment=inputs.Augment.parse(DEFAULT_AUGMENT),
                class_weights=weights,
                cache=cache,
            )

        from_shards = input_rate(dataset(False))
        from_cache = input_rate(dataset(True))
        step = step_rate(info, args.batch_size, args.steps)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, TensorFlow {tf.__version__}; GPUs: "
        f"{len(tf.config.list_physical_devices('GPU'))}"
    )
    print(f"train examples: {info.labelled(f.TRAIN)}, images {info.image_shape}")
    for name, (median, slowest) in (
        ("from the shards", from_shards),
        ("from the cache", from_cache),
    ):
        print(f"(a) input, {name}: {median:,.0f} examples/s (slowest pass {slowest:,.0f})")
    print(
        f"(b) training step (cnn, batch {args.batch_size}): {step[0]:,.0f} examples/s "
        f"(fastest run {step[1]:,.0f})"
    )
    print(
        f"ratio (a)/(b), medians: {from_shards[0] / step[0]:.1f} from the shards, "
        f"{from_cache[0] / step[0]:.1f} cached; worst case (slowest input pass / fastest "
        f"step run): {min(from_shards[1], from_cache[1]) / step[1]:.1f}"
    )


if __name__ == "__main__":
    main()
