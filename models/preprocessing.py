"""The preprocessing: how a raw example becomes network input, as a tf.Transform graph.

This is its one definition. The graph standardizes pixels with the train split's mean and
standard deviation (``tft.scale_to_z_score``'s semantics: a split of identical pixels is
only centred) and maps a label to its id in the train split's vocabulary (-1 for an
unlabeled example or a label train never saw). There are no tf.Transform analyzers: ingest
computes the statistics in one Beam pass over the train split
(``transforms/transform_graph.py``), and the graph reads them, like the vocabulary, from
its own asset files (``models/transform_writer.py`` names and formats them). So the graph
depends only on the image geometry: it is built once per geometry with tf.Transform's own
writer (``build_graph``), and a run only writes the assets of its split into a copy of it,
without importing TensorFlow. The trainer and the exported model read ``transform/`` with
``tft.TFTransformOutput``, so training and serving see the same numbers.

``python -m models.transform_writer`` rebuilds the graphs shipped in
``models/transform_templates/`` (``make transform-templates``); a test fails when they no
longer match this definition.
"""

import json
import os

import tensorflow as tf
import tensorflow_transform as tft
from tensorflow_transform import impl_helper, tf_utils

from models import features as f


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """Raw uint8 pixel bytes → float32 in [0, 1], one flat row per example."""
    return tf.cast(tf.io.decode_raw(image_bytes, tf.uint8), tf.float32) / 255.0


def _statistics_table(path):
    return tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            path, tf.string, 0, tf.float32, 1, delimiter=f.STATISTICS_DELIMITER
        ),
        default_value=float("nan"),  # a statistic missing from the file shows, loudly
    )


def make_preprocessing_fn(
    statistics_file: str,
    vocabulary_file: str,
    size: int = f.DEFAULT_IMAGE_SIZE,
    channels: int = f.DEFAULT_IMAGE_CHANNELS,
):
    """The preprocessing_fn for images of ``size`` x ``size`` x ``channels``.

    tf.Transform needs every output's shape to be known, and the image geometry is an
    ingest setting, so the function is made for it.

    Args:
        statistics_file: the train split's pixel mean and standard deviation, on the
            [0, 1] scale (``transform_writer.statistics_text``); a standard deviation of
            0 (identical pixels) only centres.
        vocabulary_file: the label vocabulary, one label a line, label id = line number.
        size: image height and width.
        channels: image channels.

    Both files are tracked as assets: the graph carries its own copies.
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
        keys = tf.constant([f.PIXEL_MEAN, f.PIXEL_STD])
        statistics, _ = tf_utils.construct_and_lookup_table(
            _statistics_table, statistics_file, keys
        )
        mean, std = statistics[0], statistics[1]
        normalized = (image - mean) / tf.where(std > 0, std, tf.ones_like(std))
        label_id = tft.apply_vocabulary(inputs[f.LABEL], vocabulary_file, default_value=-1)
        return {f.IMAGE_NORMALIZED: normalized, f.LABEL_ID: label_id}

    return preprocessing_fn


def build_graph(directory: str, assets: str, size: int, channels: int) -> None:
    """Writes the graph for one image geometry under ``directory`` as
    ``tft_beam.WriteTransformFn`` lays it out (``transform_fn/``, ``transformed_metadata/``
    with the asset map), from the statistics and vocabulary files in the folder ``assets``.
    """
    specs = f.raw_feature_spec()
    impl_helper.analyze_in_place(
        make_preprocessing_fn(
            os.path.join(assets, f.STATISTICS_ASSET),
            os.path.join(assets, f.LABEL_VOCABULARY),
            size,
            channels,
        ),
        force_tf_compat_v1=False,
        feature_specs=specs,
        type_specs=impl_helper.get_type_specs_from_feature_specs(specs),
        transform_output_path=directory,
    )
    # What tf.Transform's Beam writer adds: the vocabulary's name → its file in assets/.
    asset_map = os.path.join(directory, tft.TFTransformOutput.TRANSFORMED_METADATA_DIR, "asset_map")
    with open(asset_map, "w") as fh:
        fh.write(json.dumps({f.LABEL_VOCABULARY: f.LABEL_VOCABULARY}))
