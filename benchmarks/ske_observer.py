"""The project's CNN against the ideal observer on a signal-known-exactly (SKE) task.

SKE on white noise is the one detection task whose best possible ROC AUC is known in
closed form: the ideal observer is the matched filter ``t = s·g`` and reaches
``AUC = Φ(d'/√2)``, ``d' = ‖s‖/sigma``. This script writes an SKE corpus
(``dicomflow synth --difficulty ske``), ingests it (64 px: no resampling), trains the CNN
with the trainer's defaults, and prints, on the same test split:

- the CNN's test ROC AUC with its DeLong 95 % interval;
- the ideal observer's AUC, analytic;
- the matched filter's AUC measured on the very test images the CNN saw (after ingest's
  windowing and 8-bit quantization: how much the pipeline itself gives away);
- the CNN's efficiency relative to the ideal observer, ``η = (d'_CNN / d'_ideal)²`` with
  ``d' = √2 Φ⁻¹(AUC)`` (the usual figure of merit for a model observer).

Run: ``.venv/bin/python benchmarks/ske_observer.py [--patients 200] [--difficulty ske]
[--epochs 15] [--seed 0]``.
"""

import argparse
import math
import os
import platform
import tempfile
import time

import numpy as np
import tensorflow as tf

from models import features as f
from models import inputs, trainer, uncertainty
from transforms.testing import Difficulty


def d_prime(auc: float) -> float:
    from scipy.stats import norm

    return math.sqrt(2) * float(norm.ppf(min(max(auc, 1e-9), 1 - 1e-9)))


def make_data(root: str, patients: int, spec: str, seed: int) -> str:
    from pipelines import ingest, synth

    corpus, out = os.path.join(root, "corpus"), os.path.join(root, "ingest")
    argv = ["--output", corpus, "--patients", str(patients), "--seed", str(seed)]
    assert synth.run([*argv, "--positive-rate", "0.5", "--difficulty", spec]) == 0
    with open(os.path.join(root, "pixels.yaml"), "w") as fh:
        fh.write("size: 64\n")
    os.environ["DF_SKE_KEY"] = "s" * 64  # throwaway: benchmark data only
    argv = ["--input", f"{corpus}/export", "--output", out, "--labels", f"{corpus}/labels.csv"]
    argv += ["--key-env", "DF_SKE_KEY", "--pixel-config", os.path.join(root, "pixels.yaml")]
    assert ingest.run([*argv, "--split", "0.6,0.2,0.2"]) == 0
    return out


def matched_filter_auc(data: str, difficulty: Difficulty) -> tuple[float, int]:
    """The matched filter on ingest's stored test images (uint8, as the CNN's input)."""
    info = inputs.read_info(data)
    spec = {k: f.raw_feature_spec()[k] for k in (f.IMAGE, f.LABEL)}
    signal = difficulty.ske_signal().ravel()
    stats, labels = [], []
    records = tf.data.TFRecordDataset(inputs.shard_files(data, f.TEST), "GZIP")
    for record in records:
        example = tf.io.parse_single_example(record, spec)
        pixels = np.frombuffer(example[f.IMAGE].numpy(), np.uint8).astype(float)
        stats.append(float(signal @ pixels))
        labels.append(example[f.LABEL].numpy().decode() == "1")
    y = np.asarray(labels)
    assert info.labelled(f.TEST) == len(y)
    return uncertainty.delong(y, np.asarray(stats))[0], len(y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--difficulty", default="ske")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    difficulty = Difficulty.parse(args.difficulty)
    if difficulty.mode != "ske":
        parser.error("--difficulty must be an ske task (e.g. ske or ske,contrast=1.5)")
    with tempfile.TemporaryDirectory(prefix="ske-bench-") as root:
        started = time.perf_counter()
        data = make_data(root, args.patients, args.difficulty, args.seed)
        prepared = time.perf_counter() - started
        config = trainer.TrainConfig(
            data=data,
            model_dir=os.path.join(root, "models"),
            epochs=args.epochs,
            min_auc=0.0,
            seed=args.seed,
        )
        started = time.perf_counter()
        outcome = trainer.train(config, log=lambda line: None)
        trained = time.perf_counter() - started
        filter_auc, n = matched_filter_auc(data, difficulty)
    m = outcome.metrics
    ci = m["ci"]["roc_auc"]
    ideal = difficulty.ideal_auc()
    efficiency = (d_prime(m["roc_auc"]) / difficulty.d_prime()) ** 2
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}")
    print(
        f"SKE task {difficulty}: d' = {difficulty.d_prime():.3f}, {args.patients} patients, "
        f"{n} test images; corpus + ingest {prepared:.0f} s, training {trained:.0f} s"
    )
    print(f"ideal observer AUC (analytic, Φ(d'/√2)):          {ideal:.3f}")
    print(f"matched filter AUC on the stored test images:      {filter_auc:.3f}")
    print(
        f"CNN test ROC AUC:                                  {m['roc_auc']:.3f} "
        f"(95% CI {ci['low']:.3f}-{ci['high']:.3f}), best epoch {m['best_epoch']}"
    )
    print(f"CNN / ideal AUC ratio: {m['roc_auc'] / ideal:.3f}; efficiency η = {efficiency:.2f}")


if __name__ == "__main__":
    main()
