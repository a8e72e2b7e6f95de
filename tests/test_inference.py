"""The RunInference handler and Grad-CAM, over a real exported version."""

import io
import json

import apache_beam as beam
import keras
import numpy as np
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from models import export
from models.explain import Explainer
from models.inference import BatchWeight, ServingModelHandler, explanation_name, keyed_handler
from transforms.scoring import ScoreKey, inference_dead_letters

PIXELS = 64 * 64  # the score_model fixture's images: 64 x 64 x 1


def raw_images(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, PIXELS, dtype=np.uint8).tobytes() for _ in range(n)]


@pytest.fixture(scope="module")
def version(score_model) -> str:
    return export.resolve_model(str(score_model))


@pytest.fixture(scope="module")
def served(version) -> export.ServingModel:
    return export.load_serving(version)


def test_model_json_records_the_ingest_pixel_settings(served, train_data):
    ingest = json.loads((train_data / "manifest.json").read_text())["pixels"]
    assert served.info.pixels == ingest and ingest["size"] == 64


def test_handler_scores_every_image_of_every_element_in_one_call(version, served):
    handler = ServingModelHandler(version, PIXELS, batch_size=8)
    model = handler.load_model()
    three, one = raw_images(3, 1), raw_images(1, 2)
    results = handler.run_inference([b"".join(three), one[0]], model)
    assert [r.inference.shape for r in results] == [(3, 2), (1, 2)]
    assert results[0].example == b"".join(three) and results[1].model_id == version
    got = np.concatenate([r.inference for r in results])
    np.testing.assert_allclose(got, served.predict(three + one), atol=1e-6)
    assert handler.get_num_bytes([b"ab", b"cde"]) == 5
    with pytest.raises(ValueError, match="not whole"):
        handler.run_inference([b"x" * (PIXELS + 1)], model)


def test_batches_are_bounded_by_images_and_by_bytes():
    # 100-byte images, at most 4 images and 300 bytes a batch: an image weighs 2 units.
    weight = BatchWeight(100, 4, 300)
    assert [weight(b"x" * 100 * k) for k in (1, 2, 3)] == [2, 3, 4]
    assert weight(("key", b"x" * 200)) == 3  # keyed elements as KeyedModelHandler batches
    kwargs = keyed_handler("unused", 100, batch_size=4, max_batch_bytes=300).batch_elements_kwargs()
    sizes = [1, 2, 3, 1, 1, 1, 2, 1, 3, 3, 1]
    with TestPipeline() as p:
        batches = (
            p
            | beam.Create([(i, b"x" * 100 * k) for i, k in enumerate(sizes)])
            | beam.BatchElements(**kwargs)
            | beam.Map(lambda batch: (len(batch), sum(len(blob) for _, blob in batch)))
        )

        def bounded(found):
            assert sum(n for n, _ in found) == len(sizes)
            assert all(size <= 300 for n, size in found if n > 1), found
            assert all(size // 100 <= 4 for _, size in found), found

        assert_that(batches, bounded)


def test_keys_travel_and_a_failing_batch_becomes_dead_letters(version, served):
    good, bad = raw_images(2, 3), b"x" * 10  # not a whole image: its batch fails
    key = ScoreKey("gs://b/a.dcm", None, ("2.25.1", "2.25.2", "2.25.3", "PATX", "CT"), (0, 1))
    bad_key = ScoreKey("gs://b/b.dcm", "m", ("2.25.9", "", "", "PATY", "CR"), (0,))
    handler = keyed_handler(version, PIXELS, batch_size=2)  # the good element fills a batch
    with TestPipeline() as p:
        results, failed = (
            p
            | beam.Create([(key, b"".join(good)), (bad_key, bad)])
            | RunInference(handler).with_exception_handling()
        )
        scored = results | beam.Map(lambda kv: (kv[0], np.round(kv[1].inference, 5).tolist()))
        letters = failed.failed_inferences | beam.FlatMap(inference_dead_letters)
        expected = np.round(served.predict(good), 5).tolist()
        assert_that(scored, equal_to([(key, expected)]), label="Scored")
        assert_that(
            letters | beam.Map(lambda d: (d.source, d.member, d.stage, d.error_type)),
            equal_to([("gs://b/b.dcm", "m", "score", "inference_failed")]),
            label="DeadLetters",
        )


def test_the_normalized_input_gives_the_served_probabilities(version, served):
    images = raw_images(4, 4)
    network = keras.models.load_model(f"{version}/model.keras", compile=False)
    inputs = served.normalize(images)
    assert inputs.shape == (4, 64, 64, 1)
    got = np.asarray(network(inputs, training=False))
    np.testing.assert_allclose(got, served.predict(images), atol=1e-5)


def test_gradcam_maps_and_png_overlays(version):
    explainer = Explainer(version)
    images = raw_images(2, 5)
    heat = explainer.heat_maps(images, class_index=1)
    assert heat.shape == (2, 64, 64) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    png = explainer.png(images[0], class_index=1)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (64, 64) and image.mode == "RGB"


def test_explanation_names_carry_only_uids():
    assert explanation_name("2.25.123", 4) == "2.25.123-4.png"
    name = explanation_name("../Doe^John", 0)
    assert "Doe" not in name and "/" not in name and name.endswith("-0.png")
