"""Files as a source: local paths, ``file://`` and ``gs://`` (folders, prefixes, globs),
through Beam's FileSystems; archives are streamed member by member (``dicom_io``)."""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms import dicom_io
from transforms.composite import NamedOutputs
from transforms.dicom_io.limits import Limits
from transforms.dicom_io.objects import ReadOutputs
from transforms.sources.base import Source


@dataclass(frozen=True)
class FileSettings:
    """Files need no settings of their own (limits apply to every source)."""


class _ReadFiles(NamedOutputs):
    def __init__(self, uris: list[str], limits: Limits, every_copy: bool):
        super().__init__()
        self._uris = uris
        self._limits = limits
        self._every_copy = every_copy

    def expand(self, pbegin) -> ReadOutputs:
        if not self._every_copy:
            return pbegin | "ReadInstances" >> dicom_io.ReadInstances(self._uris, self._limits)
        paths = pbegin | "MatchInputs" >> dicom_io.MatchInputs(self._uris)
        return paths | "ReadObjects" >> dicom_io.ReadObjects(self._limits)


@dataclass(frozen=True)
class FileSource(Source):
    """Everything no other source owns: object storage and local files."""

    uris: tuple[str, ...]

    name = "files"
    settings_type = FileSettings

    @classmethod
    def owns(cls, uri: str) -> bool:
        return True  # the registry asks the other sources first

    @classmethod
    def configure(cls, uris: Sequence[str], settings: Any = None, dataflow: bool = False):
        return cls(tuple(uris))

    def check(self) -> None:
        dicom_io.check_inputs(list(self.uris))

    def list_objects(self) -> dict[str, str]:
        """Each object → ``size:mtime``."""
        found: dict[str, str] = {}
        for uri in self.uris:
            for meta in FileSystems.match([dicom_io.to_pattern(uri)])[0].metadata_list:
                path = meta.path
                if path.endswith("/") or ("://" not in path and os.path.isdir(path)):
                    continue  # folder placeholders, as the reading layer skips them
                mtime = getattr(meta, "last_updated_in_seconds", 0) or 0
                found[path] = f"{meta.size_in_bytes}:{mtime:.6f}"
        return found

    def read(self, limits: Limits, every_copy: bool = False) -> beam.PTransform:
        return _ReadFiles(list(self.uris), limits, every_copy)

    def describe(self) -> list[str]:
        return list(self.uris)
