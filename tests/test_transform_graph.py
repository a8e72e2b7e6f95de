"""The train split's statistics (one combiner) and the tf.Transform graph written from them."""

import random
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.io.filesystems import FileSystems

from transforms import transform_graph as tg
from transforms.storage import write_bytes


@dataclass(frozen=True)
class Train:
    """What ingest's Converted offers the statistics."""

    label: str | None
    examples: tuple[bytes, ...]
    pixel_moments: tg.ImageMoments | None


def train(label: str, *images: bytes) -> Train:
    return Train(label, tuple(b"example" for _ in images), tg.image_moments(images))


def combine(instances: list[Train], groups: int = 1) -> tg.TrainStatistics:
    """What the combiner gives when a runner splits ``instances`` into ``groups`` bundles."""
    fn = tg.TrainStatisticsFn()
    accs = []
    for g in range(groups):
        acc = fn.create_accumulator()
        for instance in instances[g::groups]:
            acc = fn.add_input(acc, instance)
        accs.append(acc)
    return fn.extract_output(fn.merge_accumulators(accs))


def test_pixel_statistics_are_exact_and_the_same_however_the_data_is_split():
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in (50, 64, 3, 200, 17) * 4]
    instances = [train(str(i % 3), im.tobytes()) for i, im in enumerate(images)]
    pixels = np.concatenate(images).astype(np.float64) / 255
    stats = combine(instances)
    assert stats.examples == len(images) and stats.moments.pixels == len(pixels)
    assert stats.pixel_mean == pytest.approx(pixels.mean(), rel=1e-14)
    assert stats.pixel_std == pytest.approx(pixels.std(), rel=1e-14)
    random.Random(3).shuffle(instances)
    assert combine(instances, groups=7) == combine(instances, groups=2) == stats


def test_identical_pixels_have_no_spread_and_an_instance_counts_each_image():
    stats = combine([train("a", bytes([51]) * 4, bytes([51]) * 9), train("b", bytes([51]))])
    assert stats.pixel_mean == 0.2 and stats.pixel_std == 0.0
    assert stats.label_counts == (("a", 2), ("b", 1))  # one example per image, as tft counts


def test_labels_in_tf_transform_vocabulary_order():
    # Most frequent first; equal counts by the label's bytes, largest first; no empty
    # label, none with a line break (tf.Transform's text vocabulary leaves them out).
    counts = {"a": 1, "b": 1, "clear": 3, "lesion": 1, "x\ny": 5, "": 9, "B": 1}
    assert tg.label_vocabulary(counts) == ("clear", "lesion", "b", "a", "B")
    assert tg.label_vocabulary({"\r": 2}) == tg.EMPTY_VOCABULARY  # tf.Transform's dummy


def test_the_manifest_section():
    stats = combine(
        [train("lesion", bytes([0, 255])), train("clear", bytes([0, 255]), bytes([255, 0]))]
    )
    assert stats.describe() == {"pixel_mean": 0.5, "pixel_std": 0.5, "labels": ["clear", "lesion"]}
    assert combine([]).describe() == {"error": "no statistics (no train examples)"}


def listing(root: str) -> list[str]:
    (matched,) = FileSystems.match([f"{root}/**"])
    return sorted(m.path[len(root) + 1 :] for m in matched.metadata_list)


def test_the_graph_is_published_to_the_bucket_replacing_an_older_one(gcs, tmp_path):
    """Written on the worker's disk, then copied through Beam's FileSystems: a gs:// output
    works (here on the emulator), an older run's files go, and the vocabulary is the
    graph's own asset, not a path to a temporary file."""
    import tensorflow as tf
    import tensorflow_transform as tft
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from models import features as f
    from transforms.tfrecord import encode_example

    directory = f"{gcs}/graph/transform"
    write_bytes(f"{directory}/transform_fn/variables/stale", b"an older run's file")
    instances = [
        train("clear", bytes([0]) * 4),
        train("lesion", bytes([255]) * 4),
        train("clear", bytes([0]) * 4),
        train("clear", bytes([255]) * 4),
    ]
    section = {"pixel_mean": 0.5, "pixel_std": 0.5, "labels": ["clear", "lesion"]}
    with TestPipeline() as p:
        published = p | beam.Create(instances) | tg.AnalyzeTrain(directory, size=2, channels=1)
        assert_that(published, equal_to([section]))
    names = listing(directory)
    assert "transform_fn/variables/stale" not in names
    for name in ("saved_model.pb", "assets/label"):
        assert f"transform_fn/{name}" in names
    for name in ("schema.pbtxt", "asset_map"):
        assert f"transformed_metadata/{name}" in names
    local = tmp_path / "transform"
    for name in names:
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        with FileSystems.open(f"{directory}/{name}") as fh:
            (local / name).write_bytes(fh.read())

    output = tft.TFTransformOutput(str(local))
    assert output.vocabulary_by_name(f.LABEL_VOCABULARY) == [b"clear", b"lesion"]
    ids = {f.SOP_INSTANCE_UID: "2.25.1", f.PATIENT_ID: "P"}
    records = [
        encode_example(bytes([v]) * 4, (2, 2, 1), ids, label, 0)
        for v, label in ((255, "lesion"), (0, "unseen"))
    ]
    raw = tf.io.parse_example(tf.constant(records), f.raw_feature_spec())
    out = output.transform_features_layer()(raw)
    np.testing.assert_allclose(out[f.IMAGE_NORMALIZED].numpy(), [[1.0] * 4, [-1.0] * 4])
    assert out[f.LABEL_ID].numpy().tolist() == [1, -1]


def test_no_train_examples_no_graph_and_an_older_one_goes(tmp_path):
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    directory = tmp_path / "transform"
    (directory / "transform_fn").mkdir(parents=True)
    (directory / "transform_fn" / "saved_model.pb").write_bytes(b"an older run's graph")
    with TestPipeline() as p:
        nothing = p | beam.Create([]) | beam.Map(lambda x: x)
        published = nothing | tg.AnalyzeTrain(str(directory), size=2, channels=1)
        assert_that(published, equal_to([{"error": "no statistics (no train examples)"}]))
    assert not directory.exists()
