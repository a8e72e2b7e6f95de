"""Writing whole objects through Beam's FileSystems (local paths and gs:// alike)."""

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems


def write_bytes(uri: str, data: bytes, mime_type: str = "application/octet-stream") -> None:
    """Writes ``data`` to ``uri`` exactly as given, replacing what was there.

    FileSystems would gzip anything whose name ends in ``.gz`` by default; an archive we
    write must keep its own bytes. On GCS the object appears whole or not at all.
    """
    with FileSystems.create(
        uri, mime_type=mime_type, compression_type=CompressionTypes.UNCOMPRESSED
    ) as fh:
        fh.write(data)
