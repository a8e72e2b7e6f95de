"""The interface every source and sink implements, and the settings they share a flag layout.

A ``Source`` is one kind of place instances are read from (files, a DICOMweb store, a DIMSE
node). ``configure`` parses its inputs' URLs and its settings into one typed, frozen
object (``ValueError`` for what cannot work, before any I/O); that object checks the inputs
can be reached (``check``), lists what they hold for incremental runs (``list_objects``)
and reads them (``read``: a PTransform from the pipeline's start to ``ReadOutputs``, one
``SourceObject`` or one dead letter per instance). A ``Sink`` stores de-identified
instances, one dead letter per instance it could not store. Pipelines ask the registry
(``transforms.sources.registry``) and never branch on which kind they hold.

Settings: each source declares one frozen dataclass, a declared config
(``models.configs``): a field made by ``arg`` is a flag ``--<source>-<field>`` and a key of
run.yaml's ``sources: {<source>: {...}}`` (``registry.SourceSettings`` nests them all);
``arg(..., flag=False)`` fields are set from code (tests, benchmarks).
"""

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import apache_beam as beam

from transforms.dicom_io.limits import Limits


class ListingFailed(Exception):
    """A source could not list its inputs (the message names no secret and no UID)."""


def flagged(settings_type: type) -> list[dataclasses.Field]:
    """The fields of a settings dataclass that are flags."""
    return [f for f in dataclasses.fields(settings_type) if f.metadata.get("flag")]


class Source(abc.ABC):
    """One kind of input. Subclasses are frozen dataclasses made by ``configure``."""

    name: ClassVar[str]  # flags --<name>-*, run.yaml sources.<name>
    settings_type: ClassVar[type]  # a frozen dataclass with a default for every field

    @classmethod
    @abc.abstractmethod
    def owns(cls, uri: str) -> bool:
        """True for an input URL this source reads."""

    @classmethod
    @abc.abstractmethod
    def configure(cls, uris: Sequence[str], settings: Any, dataflow: bool = False) -> "Source":
        """The typed source for these inputs (all owned by it).

        Raises:
            ValueError: one line naming what is wrong (never a secret).
        """

    @abc.abstractmethod
    def check(self) -> None:
        """Raises ValueError (one line, no secret) when an input cannot be reached or holds
        nothing. Runs on the launcher before the pipeline starts."""

    @abc.abstractmethod
    def list_objects(self) -> dict[str, str]:
        """Every object the inputs hold now → its version, for the incremental plan of
        scheduled runs (an object is planned again when its version changes).

        Raises:
            ListingFailed: the run stops; nothing is planned.
        """

    @abc.abstractmethod
    def read(self, limits: Limits, every_copy: bool = False) -> beam.PTransform:
        """PBegin → ``ReadOutputs``. ``every_copy``: one object per copy (inventory)
        instead of one per instance."""

    @abc.abstractmethod
    def describe(self) -> list[str]:
        """The inputs as a manifest records them (no identifiers)."""

    @classmethod
    def flags_given(cls, settings: Any) -> list[str]:
        """The flags whose values differ from the defaults (to refuse them when no input
        of this kind is given)."""
        default = cls.settings_type()
        return [
            f"--{cls.name}-{f.name.replace('_', '-')}"
            for f in flagged(cls.settings_type)
            if getattr(settings, f.name) != getattr(default, f.name)
        ]


class Sink(abc.ABC):
    """One kind of output store for de-identified instances."""

    name: ClassVar[str]
    settings_type: ClassVar[type]

    @classmethod
    @abc.abstractmethod
    def owns(cls, url: str) -> bool:
        """True for an output URL this sink writes."""

    @classmethod
    @abc.abstractmethod
    def configure(cls, url: str, settings: Any, dataflow: bool = False) -> "Sink":
        """The typed sink (``settings`` already holds the output's own credentials).

        Raises:
            ValueError: one line naming what is wrong.
        """

    @abc.abstractmethod
    def check(self) -> None:
        """Raises ValueError when the store cannot be reached (an empty store is fine)."""

    @abc.abstractmethod
    def write(self) -> beam.PTransform:
        """``(source, member, DeidResult)`` → (``(modality, net_counts)`` per stored
        instance, dead letters): a re-run stores the same instances again, no duplicates."""

    @abc.abstractmethod
    def describe(self) -> str:
        """The store as a manifest records it."""
