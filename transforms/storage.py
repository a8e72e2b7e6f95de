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


def delete_tree(uri: str) -> None:
    """Deletes a folder and everything below it, if it is there.

    On GCS a folder is only a prefix: no object bears its name, so ``exists`` is false
    for it; the trailing slash makes Beam delete everything under the prefix instead.
    """
    if uri.startswith("gs://"):
        FileSystems.delete([uri.rstrip("/") + "/"])
    elif FileSystems.exists(uri):
        FileSystems.delete([uri])
