"""tf.train.Example records for ingest: built from a normalized image and its pseudonyms."""

import numpy as np
import tensorflow as tf

from models import features as f


def _bytes(value: str | bytes) -> tf.train.Feature:
    data = value.encode() if isinstance(value, str) else value
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def quantize(pixels: np.ndarray) -> np.ndarray:
    """[0, 1] float → uint8, rounding half up: the stored and served form of an image."""
    return np.clip(np.floor(pixels * 255.0 + 0.5), 0, 255).astype(np.uint8)


def make_example(pixels: np.ndarray, ids: dict[str, str], label: str, frame: int) -> bytes:
    """One serialized example, byte-identical for the same input (deterministic maps).

    Args:
        pixels: float32 in [0, 1], height x width x channels.
        ids: the pseudonymous ``sop_instance_uid``, ``series_instance_uid``,
            ``study_instance_uid``, ``patient_id`` and the ``modality``.
        label: the label, or "" when unlabeled.
        frame: the source frame index.
    """
    height, width, channels = pixels.shape
    feature = {
        f.IMAGE: _bytes(quantize(pixels).tobytes()),
        f.IMAGE_HEIGHT: _int(height),
        f.IMAGE_WIDTH: _int(width),
        f.IMAGE_CHANNELS: _int(channels),
        f.LABEL: _bytes(label),
        f.FRAME: _int(frame),
        **{
            name: _bytes(ids.get(name, ""))
            for name in (
                f.SOP_INSTANCE_UID,
                f.SERIES_INSTANCE_UID,
                f.STUDY_INSTANCE_UID,
                f.PATIENT_ID,
                f.MODALITY,
            )
        },
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)
