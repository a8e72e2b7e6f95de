"""Beam RunInference over an exported model version: the model handler and its batching.

The handler loads ``<version>/saved_model`` with plain TensorFlow (``export.load_serving``):
once per worker process, shared by the process's threads through Beam's ``Shared``
(or, with ``share_across_processes``, once per machine). Each element is one instance's
images: raw uint8 bytes as ingest writes them, H x W x C each, concatenated (one image for
a TFRecord example or a single-frame policy; several under ``frame_policy: all``). An
instance's images therefore share a batch, and an instance is scored, or fails, whole.

Batches are bounded by a count of images and by their bytes at once. Beam's
``BatchElements`` (2.77) takes one size bound and an ``element_size_fn``, and rejects the
``max_batch_weight`` that ``ModelHandler`` would pass it, so both bounds are folded into
one weight: an element weighs the larger of its image count and its bytes scaled so that
``max_batch_bytes`` weighs ``batch_size``. A batch of total weight <= ``batch_size`` then
holds at most ``batch_size`` images and at most ``max_batch_bytes`` bytes (a single larger
element still goes alone).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult

from models.uids import is_valid_uid

_LOG = logging.getLogger(__name__)

if TYPE_CHECKING:  # TensorFlow loads with the model, not with the command's options
    from models.export import ServingModel

DEFAULT_BATCH_SIZE = 64
DEFAULT_MAX_BATCH_BYTES = 64 << 20  # 64 MiB of input pixels per batch


class ServingModelHandler(ModelHandler[bytes, PredictionResult, "ServingModel"]):
    """RunInference handler for an exported version (``<model-dir>/<version>``).

    ``PredictionResult.inference`` is float32 [images, classes]: the probabilities of each
    of the element's images, columns in ``model.json`` ``labels`` order.
    """

    def __init__(
        self,
        version_dir: str,
        image_bytes: int,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        share_across_processes: bool = False,
    ):
        """
        Args:
            version_dir: the version folder (``export.resolve_model`` gives it).
            image_bytes: bytes of one image, H x W x C from ``model.json``.
            batch_size: the most images per batch; batches are this size (a fixed size is
                what a GPU's memory is planned for) except a bundle's last one.
            max_batch_bytes: the most input bytes per batch.
            share_across_processes: one model per machine instead of per process (a
                large model on a many-process worker).
        """
        if image_bytes < 1 or batch_size < 1 or max_batch_bytes < image_bytes:
            raise ValueError("need image_bytes >= 1, batch_size >= 1, max_batch_bytes >= image")
        weight = BatchWeight(image_bytes, batch_size, max_batch_bytes)
        super().__init__(
            min_batch_size=batch_size,
            max_batch_size=batch_size,
            element_size_fn=weight,
            large_model=share_across_processes,
        )
        self._version_dir = version_dir
        self._image_bytes = image_bytes

    def load_model(self) -> ServingModel:
        _gpu_memory_growth()
        from models.export import load_serving

        return load_serving(self._version_dir)

    def run_inference(
        self,
        batch: Sequence[bytes],
        model: ServingModel,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """One batched call for all images of all elements, split back per element."""
        size = self._image_bytes
        counts = []
        images: list[bytes] = []
        for blob in batch:
            if not blob or len(blob) % size:
                raise ValueError(f"an element of {len(blob)} bytes is not whole {size}-byte images")
            counts.append(len(blob) // size)
            images += [blob[i : i + size] for i in range(0, len(blob), size)]
        probabilities = model.predict(images)
        ends = np.cumsum(counts)
        return [
            PredictionResult(blob, probabilities[end - n : end], self._version_dir)
            for blob, n, end in zip(batch, counts, ends, strict=True)
        ]

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(blob) for blob in batch)  # the default pickles the whole batch

    def get_metrics_namespace(self) -> str:
        return "dicomflow_inference"


class BatchWeight:
    """An element's weight for ``BatchElements``: images, or scaled bytes if more.

    Elements may be keyed (``(key, bytes)``, as ``KeyedModelHandler`` batches them).
    """

    def __init__(self, image_bytes: int, batch_size: int, max_batch_bytes: int):
        self._image_bytes = image_bytes
        self._per_unit = max_batch_bytes / batch_size  # bytes that weigh as one image

    def __call__(self, element: bytes | tuple[Any, bytes]) -> int:
        blob = element[1] if isinstance(element, tuple) else element
        images = max(1, len(blob) // self._image_bytes)
        return max(images, math.ceil(len(blob) / self._per_unit))


def keyed_handler(
    version_dir: str,
    image_bytes: int,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    share_across_processes: bool = False,
) -> KeyedModelHandler:
    """The handler scoring uses: ``(key, images)`` → ``(key, PredictionResult)``."""
    return KeyedModelHandler(
        ServingModelHandler(
            version_dir,
            image_bytes,
            batch_size=batch_size,
            max_batch_bytes=max_batch_bytes,
            share_across_processes=share_across_processes,
        )
    )


def _gpu_memory_growth() -> None:
    """Let TensorFlow take GPU memory as it needs it, not all at once: a worker may run
    several processes, each with its own model."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        with contextlib.suppress(RuntimeError):  # already initialized in this process
            tf.config.experimental.set_memory_growth(gpu, True)


def explanation_name(sop_instance_uid: str, frame: int) -> str:
    """``<SOPInstanceUID>-<frame>.png``; a UID that is not one (a path, text) is hashed."""
    name = sop_instance_uid
    if not is_valid_uid(name):
        name = hashlib.sha256(name.encode()).hexdigest()[:32]
    return f"{name}-{frame}.png"


class ExplainFn(beam.DoFn):
    """The run's top-scoring images → Grad-CAM PNGs in ``directory``.

    Input: lists of candidates (``transforms.scoring.Candidate``: score, SOP instance
    UID, frame, class index, raw image), as ``Top.Of`` gives them. Output:
    ``((sop_instance_uid, frame), uri)`` per PNG written. An image that cannot be
    explained is logged (by type) and counted, and its row has no explanation.
    """

    def __init__(self, version_dir: str, directory: str):
        self._version_dir = version_dir
        self._directory = directory

    def setup(self):
        from models.explain import Explainer

        self._explainer = Explainer(self._version_dir)
        self._failed = Metrics.counter("dicomflow", "explanations_failed")

    def process(self, top: list):
        for candidate in top:
            uri = FileSystems.join(
                self._directory, explanation_name(candidate.sop_instance_uid, candidate.frame)
            )
            try:
                png = self._explainer.png(candidate.image, candidate.class_index)
                with FileSystems.create(
                    uri, mime_type="image/png", compression_type=CompressionTypes.UNCOMPRESSED
                ) as fh:
                    fh.write(png)
            except Exception as e:
                _LOG.warning("Grad-CAM failed for one image (%s)", type(e).__name__)
                self._failed.inc()
                continue
            yield (candidate.sop_instance_uid, candidate.frame), uri
