"""Whole objects through Beam's FileSystems (local paths and gs:// alike): bytes and JSON."""

import json
import os

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


def read_json(uri: str) -> dict | None:
    """The JSON object at ``uri``, or None when there is none."""
    if not FileSystems.exists(uri):
        return None
    with FileSystems.open(uri) as fh:
        return json.loads(fh.read().decode())


def write_json(uri: str, data: dict, sort_keys: bool = True) -> None:
    """Writes ``data`` whole, indented, one object per file.

    Object stores replace objects atomically; a local file is written beside and renamed,
    so a reader never sees half a file. ``sort_keys=False`` keeps the mapping's order
    (a run record's finished stages, in the order they ran).
    """
    payload = json.dumps(data, indent=2, sort_keys=sort_keys).encode() + b"\n"
    if uri.startswith("gs://"):
        write_bytes(uri, payload, "application/json")
        return
    local = uri.removeprefix("file://")
    os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
    tmp = f"{local}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(payload)
    os.replace(tmp, local)


def delete_tree(uri: str) -> None:
    """Deletes a folder and everything below it, if it is there.

    On GCS a folder is only a prefix: no object bears its name, so ``exists`` is false
    for it; the trailing slash makes Beam delete everything under the prefix instead.
    """
    if uri.startswith("gs://"):
        FileSystems.delete([uri.rstrip("/") + "/"])
    elif FileSystems.exists(uri):
        FileSystems.delete([uri])


def publish_tree(local_dir: str, uri: str) -> None:
    """Replaces the folder ``uri`` (local or gs://) with a copy of the local folder
    ``local_dir``: what was there goes first, so no file of an earlier version stays.

    Safe to repeat (a retried bundle publishes the whole folder again). Files go through
    Beam's FileSystems, not TensorFlow's, so this works wherever the rest of a run writes.
    """
    delete_tree(uri)
    for root, _, files in sorted(os.walk(local_dir)):
        for name in sorted(files):
            path = os.path.join(root, name)
            parts = os.path.relpath(path, local_dir).split(os.sep)
            with open(path, "rb") as fh:
                write_bytes(FileSystems.join(uri, *parts), fh.read())
