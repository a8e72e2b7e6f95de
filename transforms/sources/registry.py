"""The registry of sources and sinks, keyed by URL scheme, and what pipelines ask of it.

A source or sink is one module under ``transforms/sources/`` plus its entries here: in
``SOURCES`` (or ``SINKS``) and, when it has settings, its section of ``SourceSettings``.
The settings of every registered source travel together as one ``SourceSettings``, a
declared config (``models.configs``): its flags are ``--<source>-<field>``, its run.yaml
section ``sources: {<source>: {...}}``.
"""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from models.configs import nested
from transforms.composite import NamedOutputs
from transforms.dicom_io.limits import Limits
from transforms.dicom_io.objects import ReadOutputs
from transforms.dicomweb.client import DicomwebSettings
from transforms.sources.base import Sink, Source
from transforms.sources.dicomweb import DicomwebSink, DicomwebSource
from transforms.sources.dimse import DimseSink, DimseSource
from transforms.sources.dimse_association import DimseSettings
from transforms.sources.files import FileSource

# Asked in order; files last, since they take every URL the others do not.
SOURCES: tuple[type[Source], ...] = (DicomwebSource, DimseSource, FileSource)
SINKS: tuple[type[Sink], ...] = (DicomwebSink, DimseSink)
_CREDENTIALS = ("credentials_env", "credentials_file")


def source_for(uri: str) -> type[Source]:
    return next(s for s in SOURCES if s.owns(uri))


def sink_for(url: str) -> type[Sink]:
    """Raises ValueError for a URL no sink writes."""
    for sink in SINKS:
        if sink.owns(url):
            return sink
    raise ValueError(f"--output-store takes {', '.join(s.name for s in SINKS)} URLs")


@dataclass(frozen=True, kw_only=True)
class SourceSettings:
    """Every registered source's settings (its defaults where none were given)."""

    dicomweb: DicomwebSettings = nested(DicomwebSettings, "dicomweb-")
    dimse: DimseSettings = nested(DimseSettings, "dimse-")

    def of(self, source: type[Source] | type[Sink]) -> Any:
        return getattr(self, source.name, None) or source.settings_type()

    def for_inputs(self, uris: Sequence[str]) -> "SourceSettings":
        """These settings with each source that has none of ``uris`` back at its defaults
        (a stage of ``dicomflow run`` whose inputs do not use a source is not given its
        flags)."""
        used = {source_for(uri).name for uri in uris}
        defaults = {
            f.name: type(getattr(self, f.name))()
            for f in dataclasses.fields(self)
            if f.name not in used
        }
        return dataclasses.replace(self, **defaults)

    def check(self) -> None:
        """Each source's settings checked alone (ValueError naming the section)."""
        for source in SOURCES:
            try:
                source.configure([], self.of(source))
            except ValueError as e:
                raise ValueError(f"sources.{source.name}: {e}") from None


def configure_inputs(
    uris: Sequence[str], settings: SourceSettings, dataflow: bool = False
) -> tuple[Source, ...]:
    """One typed source per kind of input, in registry order.

    Raises:
        ValueError: for a URL or settings that cannot work, or a source's flags given
            without one of its inputs.
    """
    groups: dict[type[Source], list[str]] = {}
    for uri in uris:
        groups.setdefault(source_for(uri), []).append(uri)
    configured = []
    for source in SOURCES:
        if source in groups:
            configured.append(source.configure(groups[source], settings.of(source), dataflow))
            continue
        unused = source.flags_given(settings.of(source))
        if unused:
            raise ValueError(f"{', '.join(unused)}: for {source.name} inputs only")
    return tuple(configured)


def configure_sink(
    url: str,
    settings: SourceSettings,
    credentials_env: str | None = None,
    credentials_file: str | None = None,
    dataflow: bool = False,
) -> Sink:
    """The typed sink for ``--output-store``, with the output's own credentials (none
    given: none, or the platform's, as for the Cloud Healthcare API).

    Raises:
        ValueError: as ``configure_inputs``.
    """
    sink = sink_for(url)
    own = settings.of(sink)
    fields = {f.name for f in dataclasses.fields(own)}
    if set(_CREDENTIALS) <= fields:
        own = dataclasses.replace(
            own, credentials_env=credentials_env, credentials_file=credentials_file
        )
    elif credentials_env or credentials_file:
        raise ValueError(f"--output-store-credentials-*: a {sink.name} store takes none")
    return sink.configure(url, own, dataflow)


def check_inputs(sources: Sequence[Source]) -> None:
    """Every source checks its inputs can be reached (ValueError, one line, if not)."""
    for source in sources:
        source.check()


def list_objects(sources: Sequence[Source]) -> dict[str, str]:
    """Every object the sources hold now → its version, sorted by URI."""
    found: dict[str, str] = {}
    for source in sources:
        found.update(source.list_objects())
    return dict(sorted(found.items()))


def describe_inputs(sources: Sequence[Source]) -> list[str]:
    return [line for source in sources for line in source.describe()]


class ReadInstances(NamedOutputs):
    """Every source's instances as one ``SourceObject`` stream, and the dead letters of
    getting them. ``every_copy``: one object per copy found (inventory), not per instance."""

    def __init__(self, sources: Sequence[Source], limits: Limits, every_copy: bool = False):
        super().__init__()
        self._sources = list(sources)
        self._limits = limits
        self._every_copy = every_copy

    def expand(self, pbegin) -> ReadOutputs:
        parts = [
            pbegin | f"Read{s.name.capitalize()}" >> s.read(self._limits, self._every_copy)
            for s in self._sources
        ]
        objects = tuple(o for o, _ in parts) | "AllObjects" >> beam.Flatten()
        errors = tuple(e for _, e in parts) | "AllReadDeadLetters" >> beam.Flatten()
        return ReadOutputs(objects, errors)


def describe_uris(uris: Sequence[str]) -> list[str]:
    """Input URLs as a manifest records them (a store by its root; no identifiers)."""
    return describe_inputs(configure_inputs(uris, SourceSettings()))


def in_object_storage(uri: str) -> bool:
    """True for a file, folder, prefix or glob (what holds ingest outputs too), False for
    a store or node that only serves instances."""
    return source_for(uri) is FileSource
