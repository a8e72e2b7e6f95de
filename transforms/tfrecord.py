"""tf.train.Example records: written by ingest from a normalized image and its pseudonyms,
read back by scoring; and the gzipped TFRecord files that hold them.

The Example protobuf is written and read here by hand (it is four small messages), so the
workers that convert DICOM never import TensorFlow, which costs seconds per worker process. The
encoding is protobuf's canonical one (map entries in byte order of their keys, int64
lists packed), so the same input gives the same bytes in every run; tests check that
TensorFlow parses it to the very Example its own API builds.
"""

import contextlib
import struct
from collections.abc import Iterator

import numpy as np
from apache_beam.coders import BytesCoder
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from isal import igzip, isal_zlib

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
    image: bytes,
    shape: tuple[int, int, int],
    ids: dict[str, str],
    label: str,
    frame: int,
    mask: bytes | None = None,
) -> bytes:
    """``make_example`` for an image already quantized: uint8 bytes of ``shape`` (H, W, C);
    with ``mask`` (segmentation: H x W uint8 bytes), the ``mask`` feature too."""
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
    if mask is not None:
        feature[f.MASK] = _bytes_feature(mask)
    return serialize_example(feature)


# --- Reading: the inverse, for any valid Example (not only ours) ---------------------------

_VARINT, _FIXED64, _FIXED32 = 0, 1, 5
_FEATURE_FLOAT_LIST = 2


class ExampleError(ValueError):
    """A record that is not a valid serialized tf.train.Example."""


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ExampleError("truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview):
    """(field number, wire type, value) of one message: ints, or memoryviews of payloads."""
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        value: int | memoryview
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire == _LENGTH_DELIMITED:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise ExampleError("field runs past the end of its message")
            value, pos = buf[pos : pos + length], pos + length
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            if pos + size > len(buf):
                raise ExampleError("field runs past the end of its message")
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ExampleError(f"unsupported wire type {wire}")
        yield number, wire, value


def _payload(wire: int, value) -> memoryview:
    """A length-delimited payload, or ExampleError: a message field must be one."""
    if wire != _LENGTH_DELIMITED:
        raise ExampleError(f"wire type {wire} where a message or bytes belongs")
    return value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _feature_values(feature: memoryview) -> list:
    values: list = []
    for kind, wire, payload in _fields(feature):
        payload = _payload(wire, payload)
        if kind == _FEATURE_BYTES_LIST:
            for n, item_wire, v in _fields(payload):
                if n == _LIST_VALUE:
                    values.append(_payload(item_wire, v).tobytes())
        elif kind == _FEATURE_INT64_LIST:
            for n, item_wire, v in _fields(payload):
                if n != _LIST_VALUE:
                    continue
                if item_wire == _VARINT:  # unpacked
                    values.append(_signed(v))
                else:  # packed
                    pos = 0
                    while pos < len(v):
                        item, pos = _read_varint(v, pos)
                        values.append(_signed(item))
        elif kind == _FEATURE_FLOAT_LIST:
            for n, _, v in _fields(payload):
                if n == _LIST_VALUE:
                    values += np.frombuffer(v, "<f4").tolist()
    return values


def parse_example(record: bytes) -> dict[str, list]:
    """A serialized tf.train.Example → feature name → list of values (bytes, int or float).

    Any valid encoding is read (fields in any order, packed or unpacked lists), so
    examples written by TensorFlow itself parse the same as ours.

    Raises:
        ExampleError: the record is not a valid Example.
    """
    out: dict[str, list] = {}
    try:
        for number, wire, features in _fields(memoryview(record)):
            if number != _EXAMPLE_FEATURES:
                continue
            for entry_number, entry_wire, entry in _fields(_payload(wire, features)):
                if entry_number != _FEATURES_MAP:
                    continue
                name, value = "", memoryview(b"")
                for n, field_wire, v in _fields(_payload(entry_wire, entry)):
                    if n == _MAP_KEY:
                        name = _payload(field_wire, v).tobytes().decode()
                    elif n == _MAP_VALUE:
                        value = _payload(field_wire, v)
                out[name] = _feature_values(value)
    except ExampleError:
        raise
    except (TypeError, ValueError) as e:  # UnicodeDecodeError, a float list of odd length
        raise ExampleError(f"not an Example ({type(e).__name__})") from None
    return out


# --- TFRecord framing ----------------------------------------------------------------------

_MASK_DELTA = 0xA282EAD8


def _masked_crc(data: bytes | memoryview) -> int:
    import google_crc32c

    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def iter_records(stream) -> Iterator[bytes]:
    """The records of a TFRecord stream (already decompressed), checksums verified.

    Framing: uint64 length, uint32 masked CRC-32C of the length, the data, uint32 masked
    CRC-32C of the data (all little endian).

    Raises:
        ExampleError: the stream ends inside a record or a checksum does not match.
    """
    while True:
        header = stream.read(12)
        if not header:
            return
        if len(header) < 12:
            raise ExampleError("the file ends inside a record header")
        length, length_crc = struct.unpack("<QI", header)
        if _masked_crc(header[:8]) != length_crc:
            raise ExampleError("a record length fails its checksum")
        data = stream.read(length)
        footer = stream.read(4)
        if len(data) < length or len(footer) < 4:
            raise ExampleError("the file ends inside a record")
        if _masked_crc(data) != struct.unpack("<I", footer)[0]:
            raise ExampleError("a record fails its checksum")
        yield data


@contextlib.contextmanager
def open_stream(path: str):
    """A TFRecord file (local or gs://) opened for ``iter_records``: a ``.gz`` name is
    inflated by ISA-L, 2.5 times as fast as Beam's own gzip reader; any other name is
    opened as Beam's FileSystems opens it (compression by extension)."""
    if not path.endswith(".gz"):
        with FileSystems.open(path) as stream:
            yield stream
        return
    with (
        FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw,
        igzip.IGzipFile(fileobj=raw) as stream,
    ):
        yield stream


def frame_record(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, the data's masked CRC."""
    header = struct.pack("<Q", len(data))
    return b"".join(
        (header, struct.pack("<I", _masked_crc(header)), data, struct.pack("<I", _masked_crc(data)))
    )


# --- Writing gzipped TFRecord files from Beam ------------------------------------------------

# Gzip by ISA-L (``isal``), at its level 2: 101 MB of 224² CT examples take 0.42 s and
# give 63.1 MB, where zlib takes 1.76 s at level 1 (61.7 MB) and 5.5 s at its default
# level 6 (59.4 MB), which Beam's own TFRecord sink uses. At level 6, gzip was half of
# ingest's per-file cost. The stream is plain gzip: TensorFlow, ``gzip`` and Beam read it.
GZIP_LEVEL = 2


class _GzipStream:
    """A write-only gzip stream over an open file, at ``GZIP_LEVEL``."""

    def __init__(self, raw):
        self._raw = raw
        # wbits 16 + 15: a gzip header and trailer around a deflate stream of 32 KB window.
        self._deflate = isal_zlib.compressobj(GZIP_LEVEL, isal_zlib.DEFLATED, 16 + 15)

    def write(self, data: bytes) -> None:
        chunk = self._deflate.compress(data)
        if chunk:
            self._raw.write(chunk)

    def close(self) -> None:
        self._raw.write(self._deflate.flush())
        self._raw.close()


class GzipTFRecordSink(FileBasedSink):
    """Gzipped TFRecord files for ``beam.io.Write``, one record a value; TensorFlow reads
    them with ``compression_type="GZIP"``."""

    def __init__(self, file_path_prefix: str, file_name_suffix: str, num_shards: int = 0):
        super().__init__(
            file_path_prefix,
            coder=BytesCoder(),
            file_name_suffix=file_name_suffix,
            num_shards=num_shards,
            mime_type="application/octet-stream",
            # The sink compresses itself, at its own level; Beam must not add a layer.
            compression_type=CompressionTypes.UNCOMPRESSED,
        )

    def open(self, temp_path: str):
        return _GzipStream(super().open(temp_path))

    def write_encoded_record(self, file_handle, encoded_value: bytes) -> None:
        file_handle.write(frame_record(encoded_value))
