"""Grad-CAM heat maps for an exported version, as PNG overlays on the scored image.

The network is ``model.keras`` (input: the normalized image); the normalized image comes
from the transform graph inside the SavedModel (``ServingModel.normalize``), so the map
explains exactly the probabilities that scoring wrote. The layer is ``model.json``'s
``gradcam_layer`` (the last layer with a spatial output).
"""

from __future__ import annotations

import io
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from models import calibration  # noqa: F401  (registers the Calibrate layer model.keras uses)
from models.export import MODEL_KERAS, ServingModel, is_local, load_serving
from models.inputs import join

OVERLAY_ALPHA = 0.45  # weight of the heat map over the grey image


def gradcam(grad_model: keras.Model, inputs: np.ndarray, class_index: int) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) of ``class_index`` for a batch of network inputs.

    Args:
        grad_model: maps the network input to (the layer's activations, probabilities).
        inputs: float32 [N, H, W, C], the normalized images.
        class_index: the probability column to explain.

    Returns:
        float32 [N, H, W] in [0, 1]: channel-weighted activations (weights: the mean
        gradient over space), rectified, scaled to their maximum (all zeros when nothing
        speaks for the class), resized bilinearly to the input.
    """
    x = tf.convert_to_tensor(inputs, tf.float32)
    with tf.GradientTape() as tape:
        activations, probabilities = grad_model(x, training=False)
        target = probabilities[:, class_index]
    gradients = tape.gradient(target, activations)
    weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))
    peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    cam = tf.math.divide_no_nan(cam, peak)
    resized = tf.image.resize(cam[..., None], inputs.shape[1:3], method="bilinear")
    return np.clip(resized[..., 0].numpy(), 0.0, 1.0).astype(np.float32)


def overlay_png(image: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> bytes:
    """A PNG of ``heat`` ([H, W] in [0, 1], "jet" colours) over ``image`` (uint8 H x W x C).

    Grey images (one channel) are shown as grey; colour images as they are.
    """
    from matplotlib import colormaps
    from PIL import Image

    base = image.astype(np.float32) / 255.0
    if base.shape[-1] == 1:
        base = np.repeat(base, 3, axis=-1)
    colours = colormaps["jet"](heat)[..., :3].astype(np.float32)
    blended = (1.0 - alpha) * base + alpha * colours
    buffer = io.BytesIO()
    Image.fromarray(np.round(blended * 255.0).astype(np.uint8), "RGB").save(buffer, "PNG")
    return buffer.getvalue()


class Explainer:
    """Grad-CAM PNGs for one version: the serving model, ``model.keras`` and the layer."""

    def __init__(self, version_dir: str, serving: ServingModel | None = None):
        self.serving = serving or load_serving(version_dir)
        info = self.serving.info
        self.shape = info.image_shape
        with tempfile.TemporaryDirectory() as tmp:
            path = join(version_dir, MODEL_KERAS)
            if not is_local(path):  # Keras reads local files only
                local = os.path.join(tmp, MODEL_KERAS)
                tf.io.gfile.copy(path, local)
                path = local
            network = keras.models.load_model(path.removeprefix("file://"), compile=False)
        layer = network.get_layer(info.gradcam_layer)
        self._grad_model = keras.Model(network.inputs, [layer.output, network.output])

    def heat_maps(self, images: list[bytes], class_index: int) -> np.ndarray:
        """[N, H, W] Grad-CAM maps of raw images (uint8 bytes as scoring reads them)."""
        return gradcam(self._grad_model, self.serving.normalize(images), class_index)

    def png(self, image: bytes, class_index: int) -> bytes:
        """The overlay PNG of one raw image for one probability column."""
        heat = self.heat_maps([image], class_index)[0]
        pixels = np.frombuffer(image, np.uint8).reshape(self.shape)
        return overlay_png(pixels, heat)
