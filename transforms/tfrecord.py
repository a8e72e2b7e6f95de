"""tf.train.Example records for ingest: built from a normalized image and its pseudonyms.

The Example protobuf is written here by hand (it is four small messages), so the workers
that convert DICOM never import TensorFlow, which costs seconds per worker process. The
encoding is protobuf's canonical one (map entries in byte order of their keys, int64
lists packed), so the same input gives the same bytes in every run; tests check that
TensorFlow parses it to the very Example its own API builds.
"""

import numpy as np

from models import features as f

# Field numbers from tensorflow/core/example/{example,feature}.proto.
_LENGTH_DELIMITED = 2
_EXAMPLE_FEATURES = 1  # Example.features
_FEATURES_MAP = 1  # Features.feature (map<string, Feature>)
_MAP_KEY, _MAP_VALUE = 1, 2
_FEATURE_BYTES_LIST, _FEATURE_INT64_LIST = 1, 3
_LIST_VALUE = 1


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 → two's complement, ten bytes
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _bytes_feature(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _field(_FEATURE_BYTES_LIST, _field(_LIST_VALUE, data))


def _int_feature(value: int) -> bytes:
    return _field(_FEATURE_INT64_LIST, _field(_LIST_VALUE, _varint(int(value))))


def serialize_example(features: dict[str, bytes]) -> bytes:
    """Encoded Feature messages by name → a serialized Example, keys sorted."""
    entries = b"".join(
        _field(_FEATURES_MAP, _field(_MAP_KEY, name.encode()) + _field(_MAP_VALUE, feature))
        for name, feature in sorted(features.items())
    )
    return _field(_EXAMPLE_FEATURES, entries)


def quantize(pixels: np.ndarray) -> np.ndarray:
    """[0, 1] float → uint8, rounding half up: the stored and served form of an image."""
    return np.clip(np.floor(pixels * 255.0 + 0.5), 0, 255).astype(np.uint8)


def make_example(pixels: np.ndarray, ids: dict[str, str], label: str, frame: int) -> bytes:
    """One serialized example, byte-identical for the same input.

    Args:
        pixels: float32 in [0, 1], height x width x channels.
        ids: the pseudonymous ``sop_instance_uid``, ``series_instance_uid``,
            ``study_instance_uid``, ``patient_id`` and the ``modality``.
        label: the label, or "" when unlabeled.
        frame: the source frame index.
    """
    return encode_example(quantize(pixels).tobytes(), pixels.shape, ids, label, frame)


def encode_example(
    image: bytes, shape: tuple[int, int, int], ids: dict[str, str], label: str, frame: int
) -> bytes:
    """``make_example`` for an image already quantized: uint8 bytes of ``shape`` (H, W, C)."""
    height, width, channels = shape
    feature = {
        f.IMAGE: _bytes_feature(image),
        f.IMAGE_HEIGHT: _int_feature(height),
        f.IMAGE_WIDTH: _int_feature(width),
        f.IMAGE_CHANNELS: _int_feature(channels),
        f.LABEL: _bytes_feature(label),
        f.FRAME: _int_feature(frame),
        **{
            name: _bytes_feature(ids.get(name, ""))
            for name in (
                f.SOP_INSTANCE_UID,
                f.SERIES_INSTANCE_UID,
                f.STUDY_INSTANCE_UID,
                f.PATIENT_ID,
                f.MODALITY,
            )
        },
    }
    return serialize_example(feature)
