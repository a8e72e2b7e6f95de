"""tf.Transform preprocessing: full-pass statistics over the training split only.

``preprocessing_fn`` is small and top-level, over a dict of tensors named in
``models.features``. Ingest analyzes it over the train split and writes the graph to
``transform/``; the trainer and the exported model apply that graph to the raw examples,
so training and serving see exactly the same numbers.
"""

import tensorflow as tf
import tensorflow_transform as tft

from models import features as f


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """Raw uint8 pixel bytes → float32 in [0, 1], one flat row per example."""
    return tf.cast(tf.io.decode_raw(image_bytes, tf.uint8), tf.float32) / 255.0


def make_preprocessing_fn(
    size: int = f.DEFAULT_IMAGE_SIZE, channels: int = f.DEFAULT_IMAGE_CHANNELS
):
    """The preprocessing_fn for images of ``size`` x ``size`` x ``channels``.

    tf.Transform needs every output's shape to be known, and the image geometry is an
    ingest setting, so the function is made for it; ``preprocessing_fn`` below is the one
    for the default geometry.
    """
    pixels = size * size * channels

    def preprocessing_fn(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Standardizes pixels with the train split's mean and variance; maps labels to ids.

        Args:
            inputs: a batch of raw features (see ``features.raw_feature_spec``).

        Returns:
            ``image_normalized`` (float32, size*size*channels per example) and ``label_id``
            (int64, -1 for an unlabeled example or a label not seen in training).
        """
        image = tf.reshape(decode_image(inputs[f.IMAGE]), [-1, pixels])
        # Mean and variance over every pixel of every training image, from one analyzer
        # (tft.mean plus tft.var would be two, each a set of Beam stages); a split of
        # identical images (variance 0) is only centred.
        normalized = tft.scale_to_z_score(image)
        label_id = tft.compute_and_apply_vocabulary(
            inputs[f.LABEL], vocab_filename=f.LABEL_VOCABULARY, default_value=-1
        )
        return {f.IMAGE_NORMALIZED: normalized, f.LABEL_ID: label_id}

    return preprocessing_fn


preprocessing_fn = make_preprocessing_fn()
