"""Input URIs: normalize, check and match them (globs) through Beam's FileSystems."""

import os
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.dicom_io.objects import _GLOB_CHARS


def normalize_uri(uri: str) -> str:
    """Turns ``file://`` URIs into plain local paths (Beam's local filesystem has no scheme)."""
    if uri.startswith("file://"):
        uri = uri[len("file://") :] or "/"
    if "://" in uri:
        return uri
    # One spelling per local file, so overlapping inputs are recognised as such.
    return os.path.abspath(uri) + ("/" if uri.endswith("/") and uri != "/" else "")


def has_glob(uri: str) -> bool:
    return any(c in _GLOB_CHARS for c in uri)


def to_pattern(uri: str) -> str:
    """Maps one input URI to a glob: a folder (or ``gs://`` prefix) means everything below it."""
    uri = normalize_uri(uri)
    if has_glob(uri):
        return uri
    if uri.endswith("/"):
        return uri + "**"
    if "://" not in uri:
        return os.path.join(uri, "**") if os.path.isdir(uri) else uri
    return uri if FileSystems.exists(uri) else uri + "/**"


def match_uri(uri: str) -> Iterator[tuple[str, int]]:
    """Yields ``(path, size)`` of every object an input URI stands for."""
    pattern = to_pattern(uri)
    for metadata in FileSystems.match([pattern])[0].metadata_list:
        path = metadata.path
        # Folder placeholders ("dir/" objects, or local directories matched by a glob).
        if path.endswith("/") or ("://" not in path and os.path.isdir(path)):
            continue
        yield path, metadata.size_in_bytes


def check_inputs(uris: list[str]) -> None:
    """Raises ValueError, naming the URI, when an input matches nothing: before any work."""
    for uri in uris:
        pattern = to_pattern(normalize_uri(uri))
        found = FileSystems.match([pattern], limits=[1000])[0].metadata_list
        if not any(not m.path.endswith("/") and not os.path.isdir(m.path) for m in found):
            raise ValueError(f"input matches no objects: {uri}")


class MatchInputs(beam.PTransform):
    """Input URIs (files, folders, prefixes, globs) → distinct ``(path, size)`` pairs.

    Matching runs inside the pipeline so that Dataflow lists the bucket on a worker; the
    per-path combine drops overlaps between inputs and spreads the paths across workers
    before the heavy reading starts.
    """

    def __init__(self, uris: list[str]):
        super().__init__()
        self._uris = [normalize_uri(u) for u in uris]

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[tuple[str, int]]:
        return (
            pbegin
            | "InputUris" >> beam.Create(self._uris)
            | "Match" >> beam.FlatMap(match_uri)
            | "OnePerPath" >> beam.CombinePerKey(max)
        )
