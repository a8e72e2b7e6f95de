"""The preprocessing: how a raw example becomes network input, as a tf.Transform graph.

This is its one definition. ``make_preprocessing_fn`` standardizes pixels with the train
split's mean and standard deviation (``tft.scale_to_z_score``'s semantics: a split of
identical pixels is only centred) and maps a label to its id in the train split's
vocabulary (-1 for an unlabeled example or a label train never saw). The statistics are
constants: ingest computes them in one Beam pass over the train split
(``transforms/transform_graph.py``), and ``write_transform`` writes the graph with
tf.Transform's own writer. There are no tf.Transform analyzers, so no tf.Transform Beam
analysis: the format is still tf.Transform's, and the trainer and the exported model read
``transform/`` with ``tft.TFTransformOutput``, so training and serving see the same numbers.
"""

import json
import os
import tempfile
from collections.abc import Sequence

import tensorflow as tf
import tensorflow_transform as tft

from models import features as f


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """Raw uint8 pixel bytes → float32 in [0, 1], one flat row per example."""
    return tf.cast(tf.io.decode_raw(image_bytes, tf.uint8), tf.float32) / 255.0


def make_preprocessing_fn(
    pixel_mean: float,
    pixel_std: float,
    vocabulary_file: str,
    size: int = f.DEFAULT_IMAGE_SIZE,
    channels: int = f.DEFAULT_IMAGE_CHANNELS,
):
    """The preprocessing_fn for images of ``size`` x ``size`` x ``channels``.

    tf.Transform needs every output's shape to be known, and the image geometry is an
    ingest setting, so the function is made for it.

    Args:
        pixel_mean: mean of the train split's pixels, on the [0, 1] scale.
        pixel_std: their standard deviation; 0 (identical pixels) only centres.
        vocabulary_file: the label vocabulary, one label a line, label id = line number;
            tracked as an asset, so the graph carries its own copy.
        size: image height and width.
        channels: image channels.
    """
    pixels = size * size * channels

    def preprocessing_fn(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Standardizes pixels with the train split's statistics; maps labels to ids.

        Args:
            inputs: a batch of raw features (see ``features.raw_feature_spec``).

        Returns:
            ``image_normalized`` (float32, size*size*channels per example) and ``label_id``
            (int64, -1 for an unlabeled example or a label not seen in training).
        """
        image = tf.reshape(decode_image(inputs[f.IMAGE]), [-1, pixels])
        normalized = image - tf.constant(pixel_mean, tf.float32)
        if pixel_std > 0:
            normalized /= tf.constant(pixel_std, tf.float32)
        label_id = tft.apply_vocabulary(inputs[f.LABEL], vocabulary_file, default_value=-1)
        return {f.IMAGE_NORMALIZED: normalized, f.LABEL_ID: label_id}

    return preprocessing_fn


def write_transform(
    directory: str,
    pixel_mean: float,
    pixel_std: float,
    labels: Sequence[str],
    size: int = f.DEFAULT_IMAGE_SIZE,
    channels: int = f.DEFAULT_IMAGE_CHANNELS,
) -> None:
    """Writes the graph under ``directory`` as ``tft_beam.WriteTransformFn`` lays it out:
    ``transform_fn/`` (a SavedModel, the vocabulary in its assets/ as ``label``) and
    ``transformed_metadata/`` (the output schema and the asset map).

    Args:
        directory: a local folder to write in.
        pixel_mean, pixel_std: see ``make_preprocessing_fn``.
        labels: the vocabulary, in label-id order; no label empty or with a line break.
        size, channels: the image geometry.
    """
    from tensorflow_transform import impl_helper

    specs = f.raw_feature_spec()
    with tempfile.TemporaryDirectory(prefix="dicomflow-vocabulary-") as tmp:
        vocabulary_file = os.path.join(tmp, f.LABEL_VOCABULARY)
        with open(vocabulary_file, "wb") as fh:
            fh.write(b"".join(label.encode() + b"\n" for label in labels))
        impl_helper.analyze_in_place(
            make_preprocessing_fn(pixel_mean, pixel_std, vocabulary_file, size, channels),
            force_tf_compat_v1=False,
            feature_specs=specs,
            type_specs=impl_helper.get_type_specs_from_feature_specs(specs),
            transform_output_path=directory,
        )
    # What tf.Transform's Beam writer adds: the vocabulary's name → its file in assets/.
    asset_map = os.path.join(directory, tft.TFTransformOutput.TRANSFORMED_METADATA_DIR, "asset_map")
    with open(asset_map, "w") as fh:
        fh.write(json.dumps({f.LABEL_VOCABULARY: f.LABEL_VOCABULARY}))
