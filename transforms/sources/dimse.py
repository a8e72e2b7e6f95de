"""DIMSE nodes (a hospital PACS, a research node) as a source and a sink, with pynetdicom.

``dimse://CALLED_AET@host:port[/studies/S[/series/R[/instances/I]]]``. Reading: C-FIND at
study level (with ``--dimse-query`` filters, as ``--dicomweb-query``), then per study at
series and instance level; the instances are grouped by series and retrieved with one
C-GET per series (``--dimse-retrieve move``: C-MOVE to a storage SCP that each worker
starts, for nodes that allow only that). An instance the series retrieval did not bring is
asked for on its own; one that still does not come is one dead letter. Writing: C-STORE
of de-identified instances (a re-run stores the same SOP Instance UIDs again, which the
node keeps once).

This module is the Beam shell, the ``Source`` and the ``Sink``; beneath it,
``dimse_association`` (URL, settings, associations, retries), ``dimse_query`` (C-FIND)
and ``dimse_retrieve`` (C-GET, C-MOVE).
"""

import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.deadletter import (
    DEAD_LETTER,
    STAGE_READ,
    STAGE_WRITE,
    DeadLetter,
    StageError,
    unexpected,
)
from transforms.dicom_io.limits import Limits
from transforms.dicom_io.objects import METRICS_NAMESPACE, ReadCounters, SourceObject
from transforms.sources.base import ListingFailed, Sink, Source
from transforms.sources.dimse_association import (
    SCHEME,
    VERIFICATION,
    WARNING,
    DimseFailed,
    DimseSettings,
    NodeUrl,
    Transient,
    associate,
    default_syntaxes,
    status_code,
    with_retries,
)
from transforms.sources.dimse_query import (
    Listed,
    find,
    list_instances,
    search_instances,
    search_studies,
)
from transforms.sources.dimse_retrieve import retrieve

# ------------------------------------------------------------------ listing


class _SearchFn(beam.DoFn):
    """URL in, what the search finds out (URLs or ``Listed``), or one dead letter."""

    def __init__(self, settings: DimseSettings, search, counter: str):
        self._settings = settings
        self._search = search
        self._found = Metrics.counter(METRICS_NAMESPACE, counter)
        self._failed = Metrics.counter(METRICS_NAMESPACE, "dimse_search_dead_letters")

    def process(self, uri: str):
        try:
            found = self._search(NodeUrl.parse(uri), self._settings)
        except DimseFailed as e:
            found = [StageError("search_failed", f"C-FIND failed: {e}")]
        except Exception as e:
            found = [unexpected(e)]
        for item in found:
            if isinstance(item, StageError):
                self._failed.inc()
                letter = DeadLetter(uri, None, STAGE_READ, item.error_type, item.message)
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
            else:
                self._found.inc()
                yield item.uri if isinstance(item, NodeUrl) else item


# ------------------------------------------------------------------ retrieval


class RetrieveSeriesFn(beam.DoFn):
    """One series' instances (each a tuple of candidate ``Listed``, more than one when the
    node lists the SOP Instance UID more than once) → SourceObjects, a dead letter per
    instance not retrieved and a ``duplicate_instance`` row per extra listing."""

    def __init__(self, settings: DimseSettings, max_bytes: int):
        self._settings = settings
        self._max_bytes = max_bytes
        self._counters = ReadCounters(
            "dimse_retrieved", "dimse_retrieved_bytes", "dimse_retrieve_dead_letters"
        )
        self._retries = Metrics.counter(METRICS_NAMESPACE, "dimse_retries")

    def _fetch(self, url: NodeUrl, listed: Sequence[Listed]) -> dict[str, bytes] | StageError:
        try:
            return retrieve(url, listed, self._settings, self._retries.inc)
        except DimseFailed as e:
            what = "C-MOVE" if self._settings.retrieve == "move" else "C-GET"
            return StageError("retrieve_failed", f"{what} failed: {e}")
        except Exception as e:
            return unexpected(e)

    def process(self, series: tuple[str, Iterable[tuple[Listed, ...]]]) -> Iterator:
        groups = sorted(series[1], key=lambda g: g[0].uri)
        first = NodeUrl.parse(groups[0][0].uri)
        whole = self._fetch(first.child(instance=None), [g[0] for g in groups])
        received = whole if isinstance(whole, dict) else {}
        # When the series could not be asked for at all, one instance is tried on its own;
        # if that fails too the node is down for this series, and the rest are not retried.
        self._down = False
        for group in groups:
            yield from map(self._counters.route, self._one(group, received, whole))

    def _one(self, group: tuple[Listed, ...], received: dict, whole) -> Iterator:
        """One instance: from the series retrieval, else asked for at each of its URLs."""
        sop = NodeUrl.parse(group[0].uri).instance or ""
        data = received.get(sop)
        error = whole if isinstance(whole, StageError) else None
        kept = group[0].uri
        for listed in dict.fromkeys(group):
            if data is not None or self._down:
                break
            answer = self._fetch(NodeUrl.parse(listed.uri), [listed])
            if isinstance(answer, dict) and sop in answer:
                data, kept = answer[sop], listed.uri
            elif isinstance(answer, StageError):
                error = answer
                self._down = isinstance(whole, StageError)
        if data is None:
            error = error or StageError("retrieve_failed", "the node did not send the instance")
            yield DeadLetter(kept, None, STAGE_READ, error.error_type, error.message)
        elif len(data) > self._max_bytes:
            message = f"{len(data)} bytes exceed --max-object-bytes"
            yield DeadLetter(kept, None, STAGE_READ, "too_large", message)
        else:
            yield SourceObject(kept, None, data)
        others = [x.uri for x in group]
        others.remove(kept)
        for uri in others:
            message = "the node lists this SOP Instance UID more than once; one copy is read"
            yield DeadLetter(uri, None, STAGE_READ, "duplicate_instance", message)


def _by_sop(listed: Listed) -> tuple[str, Listed]:
    return NodeUrl.parse(listed.uri).instance or "", listed


def _by_series(group: tuple[str, Iterable[Listed]]) -> tuple[str, tuple[Listed, ...]]:
    candidates = tuple(sorted(group[1], key=lambda x: x.uri))
    return NodeUrl.parse(candidates[0].uri).child(instance=None).uri, candidates


class ReadDimse(beam.PTransform):
    """DIMSE input URLs → (SourceObjects, dead letters), one of the two per instance."""

    def __init__(self, uris: Sequence[str], settings: DimseSettings, max_bytes: int):
        super().__init__()
        self._uris = sorted(set(uris))
        self._settings = settings
        self._max_bytes = max_bytes

    def expand(self, pbegin):
        settings = self._settings
        studies = (
            pbegin
            | "NodeUrls" >> beam.Create(self._uris)
            | "FindStudies"
            >> beam.ParDo(_SearchFn(settings, search_studies, "dimse_studies")).with_outputs(
                DEAD_LETTER, main="found"
            )
        )
        instances = (
            studies.found
            | "OnePerStudy" >> beam.Distinct()
            | "SpreadStudies" >> beam.Reshuffle()
            | "FindInstances"
            >> beam.ParDo(_SearchFn(settings, search_instances, "dimse_instances")).with_outputs(
                DEAD_LETTER, main="found"
            )
        )
        retrieved = (
            instances.found
            | "BySopInstanceUid" >> beam.Map(_by_sop)
            | "OnePerInstance" >> beam.GroupByKey()
            | "BySeries" >> beam.Map(_by_series)
            | "OnePerSeries" >> beam.GroupByKey()
            | "RetrieveSeries"
            >> beam.ParDo(RetrieveSeriesFn(settings, self._max_bytes)).with_outputs(
                DEAD_LETTER, main="objects"
            )
        )
        errors = (
            studies[DEAD_LETTER],
            instances[DEAD_LETTER],
            retrieved[DEAD_LETTER],
        ) | "DimseDeadLetters" >> beam.Flatten()
        return retrieved.objects, errors


# ------------------------------------------------------------------ the source


def check_node(url: NodeUrl, settings: DimseSettings, empty_ok: bool = False) -> None:
    """C-ECHO, then (unless ``empty_ok``) one C-FIND that must find something.

    Raises:
        ValueError: naming the node (AE title, host, port; never a UID).
    """
    where = url.root.uri
    try:
        with associate(url.root, settings, [(VERIFICATION, default_syntaxes())]) as assoc:
            code = status_code(assoc.send_c_echo())
            if code != 0x0000:
                raise DimseFailed(f"C-ECHO status 0x{code:04X}")
        if empty_ok or url.level == "instance":
            return
        if url.level == "node":
            keys = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", **settings.filters()}
        else:
            keys = {
                "QueryRetrieveLevel": "SERIES",
                "StudyInstanceUID": url.study or "",
                "SeriesInstanceUID": url.series or "",
            }
        found = find(url, settings, keys, first_only=True)
    except (Transient, DimseFailed) as e:
        raise ValueError(f"DIMSE node {where} cannot be reached: {e}") from None
    except OSError as e:
        raise ValueError(f"DIMSE node {where}: {type(e).__name__} (TLS files?)") from None
    if not found:
        what = "no studies" if url.level == "node" else f"nothing in the {url.level}"
        raise ValueError(f"DIMSE input matches {what}: {where}")


@dataclass(frozen=True)
class DimseSource(Source):
    """``dimse://CALLED_AET@host:port[/studies/S[/series/R[/instances/I]]]``."""

    nodes: tuple[NodeUrl, ...]
    settings: DimseSettings

    name = "dimse"
    settings_type = DimseSettings

    @classmethod
    def owns(cls, uri: str) -> bool:
        return uri.startswith(SCHEME)

    @classmethod
    def configure(
        cls, uris: Sequence[str], settings: DimseSettings, dataflow: bool = False
    ) -> "DimseSource":
        settings.check()
        return cls(tuple(dict.fromkeys(NodeUrl.parse(u) for u in uris)), settings)

    def check(self) -> None:
        for node in self.nodes:
            check_node(node, self.settings)

    def list_objects(self) -> dict[str, str]:
        try:
            return list_instances([n.uri for n in self.nodes], self.settings)
        except DimseFailed as e:
            raise ListingFailed(f"listing the DIMSE input failed: {e}") from None

    def read(self, limits: Limits, every_copy: bool = False) -> beam.PTransform:
        return ReadDimse([n.uri for n in self.nodes], self.settings, limits.max_object_bytes)

    def describe(self) -> list[str]:
        """A node by its root: the UIDs in a narrower URL are the originals."""
        described: dict[str, int] = {}
        for node in self.nodes:
            n = described.setdefault(node.root.uri, 0)
            described[node.root.uri] = n + (node.level != "node")
        return [
            f"{u} ({n} studies, series or instances in it)" if n else u
            for u, n in described.items()
        ]


# ------------------------------------------------------------------ the sink


def store_instances(
    node: NodeUrl, settings: DimseSettings, instances: Sequence[bytes]
) -> list[int | None]:
    """C-STOREs Part 10 instances on one association; each instance's status (None: not
    sent, its SOP Class or transfer syntax was refused).

    Raises:
        Transient: the association failed (the whole batch is tried again).
    """
    import pydicom

    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in instances]
    wanted: dict[str, set[str]] = {}
    for ds in datasets:
        syntax = str(ds.file_meta.TransferSyntaxUID)
        wanted.setdefault(str(ds.SOPClassUID), set()).update({syntax, *default_syntaxes()})
    # One context per SOP Class and transfer syntax: the node accepts one syntax per
    # context, and an instance goes in the syntax it is encoded in.
    contexts = [(c, [ts]) for c, syntaxes in sorted(wanted.items()) for ts in sorted(syntaxes)]
    statuses: list[int | None] = []
    with associate(node, settings, contexts) as assoc:
        for ds in datasets:
            try:
                statuses.append(status_code(assoc.send_c_store(ds)))
            except ValueError:  # no accepted context for its SOP Class / syntax
                statuses.append(None)
    return statuses


class StoreFn(beam.DoFn):
    """Batches of ``(source, member, DeidResult)`` → ``(modality, net_counts)`` per stored
    instance, or a dead letter per instance not stored."""

    def __init__(self, node: NodeUrl, settings: DimseSettings):
        self._node = node
        self._settings = settings
        self._stored = Metrics.counter(METRICS_NAMESPACE, "dimse_stored")
        self._retries = Metrics.counter(METRICS_NAMESPACE, "dimse_store_retries")
        self._failed = Metrics.counter(METRICS_NAMESPACE, "dimse_store_dead_letters")

    def process(self, batch: list):
        sendable = [(s, m, r) for s, m, r in batch if r.data is not None]
        for source, member, result in batch:
            if result.data is None:
                yield self._letter(source, member, "invalid_uid", "no encoded instance")
        if not sendable:
            return
        try:
            statuses = with_retries(
                lambda: store_instances(self._node, self._settings, [r.data for *_, r in sendable]),
                self._settings,
                self._retries.inc,
            )
        except DimseFailed as e:
            for source, member, _ in sendable:
                yield self._letter(source, member, "store_failed", f"C-STORE failed: {e}")
            return
        except Exception as e:
            for source, member, _ in sendable:
                error = unexpected(e)
                yield self._letter(source, member, error.error_type, error.message)
            return
        for (source, member, result), code in zip(sendable, statuses, strict=True):
            if code == 0x0000 or code in WARNING:
                self._stored.inc()
                yield result.modality, result.net_counts
            elif code is None:
                message = "the node accepts neither the SOP Class nor the transfer syntax"
                yield self._letter(source, member, "store_rejected", message)
            else:
                message = f"the node refused the instance (status 0x{code:04X})"
                yield self._letter(source, member, "store_rejected", message)

    def _letter(self, source: str, member: str | None, error_type: str, message: str):
        self._failed.inc()
        letter = DeadLetter(source, member, STAGE_WRITE, error_type, message)
        return beam.pvalue.TaggedOutput(DEAD_LETTER, letter)


class WriteDimse(beam.PTransform):
    def __init__(self, node: NodeUrl, settings: DimseSettings):
        super().__init__()
        self._node = node
        self._settings = settings

    def expand(self, results):
        stored = (
            results
            | "Batch"
            >> beam.BatchElements(min_batch_size=1, max_batch_size=self._settings.store_batch)
            | "Store"
            >> beam.ParDo(StoreFn(self._node, self._settings)).with_outputs(
                DEAD_LETTER, main="stored"
            )
        )
        return stored.stored, stored[DEAD_LETTER]


@dataclass(frozen=True)
class DimseSink(Sink):
    """C-STORE into a node: ``dimse://CALLED_AET@host:port``."""

    node: NodeUrl
    settings: DimseSettings

    name = "dimse"
    settings_type = DimseSettings

    @classmethod
    def owns(cls, url: str) -> bool:
        return url.startswith(SCHEME)

    @classmethod
    def configure(cls, url: str, settings: DimseSettings, dataflow: bool = False) -> "DimseSink":
        settings.check()
        node = NodeUrl.parse(url)
        if node.level != "node":
            raise ValueError("--output-store names a DIMSE node, not a study or instance")
        return cls(node, settings)

    def check(self) -> None:
        check_node(self.node, self.settings, empty_ok=True)

    def write(self) -> beam.PTransform:
        return WriteDimse(self.node, self.settings)

    def describe(self) -> str:
        return self.node.uri
