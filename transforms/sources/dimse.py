"""DIMSE nodes (a hospital PACS, a research node) as a source and a sink, with pynetdicom.

``dimse://CALLED_AET@host:port[/studies/S[/series/R[/instances/I]]]``. Reading: C-FIND at
study level (with ``--dimse-query`` filters, as ``--dicomweb-query``), then per study at
series and instance level; the instances are grouped by series and retrieved with one
C-GET per series (``--dimse-retrieve move``: C-MOVE to a storage SCP that each worker
starts, for nodes that allow only that). An instance the series retrieval did not bring is
asked for on its own; one that still does not come is one dead letter. Writing: C-STORE
of de-identified instances (a re-run stores the same SOP Instance UIDs again, which the
node keeps once).

Associations are capped per worker process (``--dimse-max-associations``), and failed
associations and transient statuses are retried with exponential backoff. No secret goes
in a URL; TLS files are named by path. pynetdicom's own log lines (which can quote
identifiers) are silenced.
"""

import contextlib
import dataclasses
import io
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import apache_beam as beam
from apache_beam.metrics import Metrics

from models.configs import arg
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
from transforms.dicomweb.urls import is_reference, is_uid
from transforms.sources.base import ListingFailed, Sink, Source

logging.getLogger("pynetdicom").setLevel(logging.CRITICAL + 1)

SCHEME = "dimse://"
DEFAULT_PORT = 104
_LEVELS = ("studies", "series", "instances")
# Retryable C-FIND/C-GET/C-MOVE/C-STORE statuses: out of resources, and "unable to
# process" that some nodes answer while busy.
_TRANSIENT = frozenset({0xA700, 0xA701, 0xA702, 0xC001, 0xC002})
_PENDING = frozenset({0xFF00, 0xFF01})
_WARNING = frozenset({0x0001, 0xB000, 0xB006, 0xB007})
# Study Root query/retrieve models and Verification (PS3.4), by UID.
FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"
MOVE_MODEL = "1.2.840.10008.5.1.4.1.2.2.2"
GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"
VERIFICATION = "1.2.840.10008.1.1"
T = TypeVar("T")


class DimseFailed(Exception):
    """A DIMSE exchange failed for good; the message holds a status, never a UID."""


class _Transient(Exception):
    """A failure worth another try (no association, an abort, a busy status)."""


@dataclass(frozen=True, kw_only=True)
class DimseSettings:
    """How DIMSE nodes are reached: a declared config (``models.configs``) whose flagged
    fields are the ``--dimse-*`` flags and run.yaml's ``sources: {dimse: ...}`` keys."""

    calling_aet: str = arg("DICOMFLOW", "our AE title (the node must know it)")
    query: str | None = arg(
        None, 'C-FIND study filters, e.g. "ModalitiesInStudy=CR&StudyDate=20260101-"'
    )
    retrieve: str = arg(
        "get", "get: C-GET per series; move: C-MOVE to a storage SCP each worker starts"
    )
    move_port: int = arg(11113, "port of the workers' storage SCP for --dimse-retrieve move")
    max_associations: int = arg(2, "DIMSE associations open at once per worker")
    timeout_seconds: float = arg(30.0, "network, association and DIMSE timeout (seconds)")
    tls_ca_file: str | None = arg(None, "CA certificate(s) of the node: turns TLS on")
    tls_cert_file: str | None = arg(None, "our TLS client certificate (with the key)")
    tls_key_file: str | None = arg(None, "our TLS client key")
    # Set from code only (tests, benchmarks): no flag, no run.yaml key.
    attempts: int = arg(4, flag=False)
    backoff_seconds: float = arg(0.5, flag=False)
    max_backoff_seconds: float = arg(10.0, flag=False)
    store_batch: int = arg(20, flag=False)
    move_bind: str = arg("0.0.0.0", flag=False)  # the C-MOVE SCP's address (tests: loopback)

    def filters(self) -> dict[str, str]:
        """The C-FIND filters, keyed by DICOM keyword.

        Raises:
            ValueError: for a malformed pair or a key that is not a DICOM keyword.
        """
        from pydicom.datadict import tag_for_keyword

        if not self.query:
            return {}
        try:
            pairs = parse_qsl(self.query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise ValueError("--dimse-query must look like Keyword=value&Keyword=value") from None
        for key, _ in pairs:
            if tag_for_keyword(key) is None:
                raise ValueError(f"--dimse-query: {key!r} is not a DICOM keyword")
        return dict(pairs)

    def check(self) -> None:
        """Raises ValueError for settings that cannot work (before any work)."""
        self.filters()
        if self.retrieve not in ("get", "move"):
            raise ValueError("--dimse-retrieve is get or move")
        if not 0 < len(self.calling_aet.strip()) <= 16:
            raise ValueError("--dimse-calling-aet takes 1 to 16 characters")
        if min(self.max_associations, self.attempts, self.store_batch, self.move_port) < 1:
            raise ValueError("DIMSE associations, attempts, batch and port must be positive")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("give both --dimse-tls-cert-file and --dimse-tls-key-file")
        if self.tls_cert_file and not self.tls_ca_file:
            raise ValueError("a TLS client certificate needs --dimse-tls-ca-file")


@dataclass(frozen=True)
class NodeUrl:
    """A DIMSE node (called AE title, host, port) and an optional study/series/instance."""

    called_aet: str
    host: str
    port: int
    study: str | None = None
    series: str | None = None
    instance: str | None = None

    @classmethod
    def parse(cls, uri: str) -> "NodeUrl":
        """Parses ``dimse://AET@host:port[/studies/S[/series/R[/instances/I]]]``.

        Raises:
            ValueError: naming what is wrong (never quoting a password).
        """
        if not uri.startswith(SCHEME):
            raise ValueError("a DIMSE input starts with dimse://")
        parts = urlsplit(uri)
        if parts.password is not None:
            raise ValueError("a dimse:// URL takes no password (DIMSE has none; use TLS)")
        if parts.query or parts.fragment:
            raise ValueError("a dimse:// URL takes no query; put filters in --dimse-query")
        aet = parts.username or ""
        if not 0 < len(aet) <= 16 or "\\" in aet:
            raise ValueError("a dimse:// URL names the called AE title: dimse://AET@host:port")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise ValueError("a dimse:// URL's port is a number") from None
        if not parts.hostname:
            raise ValueError("a dimse:// URL needs a host")
        segments = [s for s in parts.path.split("/") if s]
        if len(segments) % 2 or len(segments) > 6:
            raise ValueError("a dimse:// URL ends in /studies/S[/series/R[/instances/I]]")
        uids: list[str] = []
        for i in range(0, len(segments), 2):
            if segments[i] != _LEVELS[i // 2]:
                raise ValueError("a dimse:// URL ends in /studies/S[/series/R[/instances/I]]")
            if not is_reference(segments[i + 1]):
                raise ValueError(f"the {segments[i]} part of a dimse:// URL needs a UID")
            uids.append(segments[i + 1])
        return cls(aet, parts.hostname, port, *uids)

    @property
    def level(self) -> str:
        if self.instance:
            return "instance"
        if self.series:
            return "series"
        return "study" if self.study else "node"

    @property
    def root(self) -> "NodeUrl":
        return NodeUrl(self.called_aet, self.host, self.port)

    @property
    def uri(self) -> str:
        url = f"{SCHEME}{self.called_aet}@{self.host}:{self.port}"
        for level, uid in zip(_LEVELS, (self.study, self.series, self.instance), strict=True):
            if uid is None:
                break
            url += f"/{level}/{uid}"
        return url

    def child(self, **changes: Any) -> "NodeUrl":
        """The same node with the given study/series/instance (or host, port)."""
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------ associations


_SLOTS: dict[int, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def worker_slots(cap: int) -> threading.BoundedSemaphore:
    """The process-wide cap on open associations (every DoFn instance shares it)."""
    with _SLOTS_LOCK:
        return _SLOTS.setdefault(cap, threading.BoundedSemaphore(cap))


def with_retries(
    call: Callable[[], T],
    settings: DimseSettings,
    on_retry: Callable[[], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Runs ``call`` until it succeeds, retrying ``_Transient`` with exponential backoff.

    Raises:
        DimseFailed: after the last attempt, or at once for a failure that is not transient.
    """
    for attempt in range(1, settings.attempts + 1):
        try:
            return call()
        except _Transient as e:
            if attempt == settings.attempts:
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                raise DimseFailed(f"{e}{tries}") from None
        if on_retry is not None:
            on_retry()
        backoff = min(settings.max_backoff_seconds, settings.backoff_seconds * 2 ** (attempt - 1))
        sleep(backoff * (0.5 + random.random()))
    raise AssertionError("unreachable")


def _tls(settings: DimseSettings, host: str):
    if not settings.tls_ca_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.tls_ca_file)
    if settings.tls_cert_file:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context, host


def _storage_syntaxes() -> list[str]:
    """The transfer syntaxes we take instances in: every one pydicom names, so the node
    sends what it holds instead of transcoding."""
    from pydicom import uid

    return [
        uid.ExplicitVRLittleEndian,
        uid.ImplicitVRLittleEndian,
        uid.DeflatedExplicitVRLittleEndian,
        uid.ExplicitVRBigEndian,
        *uid.JPEGTransferSyntaxes,
        *uid.JPEGLSTransferSyntaxes,
        *uid.JPEG2000TransferSyntaxes,
        *uid.RLETransferSyntaxes,
    ]


@contextlib.contextmanager
def associate(
    node: NodeUrl,
    settings: DimseSettings,
    contexts: Sequence[tuple[str, Sequence[str]]],
    scp_roles: Sequence[str] = (),
    handlers: Sequence = (),
) -> Iterator[Any]:
    """An established association with the node (released on exit, aborted on error),
    within the worker's cap.

    Args:
        contexts: (abstract syntax, transfer syntaxes) to propose.
        scp_roles: storage SOP classes we take C-STOREs for on this association (C-GET).

    Raises:
        _Transient: when the node does not accept the association.
    """
    from pynetdicom import AE
    from pynetdicom.presentation import build_role

    ae = AE(ae_title=settings.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = settings.timeout_seconds
    ae.connection_timeout = settings.timeout_seconds
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, list(syntaxes))
    roles = [build_role(c, scp_role=True) for c in scp_roles]
    with worker_slots(settings.max_associations):
        assoc = ae.associate(
            node.host,
            node.port,
            ae_title=node.called_aet,
            ext_neg=list[Any](roles) or None,
            tls_args=_tls(settings, node.host),
            evt_handlers=list(handlers) or None,
        )
        if not assoc.is_established:
            what = "rejected" if assoc.is_rejected else "not established"
            raise _Transient(f"association {what}")
        try:
            yield assoc
        except BaseException:
            assoc.abort()
            raise
        else:
            assoc.release()


def _status(status) -> int:
    if status is None or "Status" not in status:
        raise _Transient("no answer (connection lost or timed out)")
    return int(status.Status)


def find_on(assoc, keys: dict[str, str], first_only: bool = False) -> list:
    """C-FIND (Study Root) on an open association with ``keys`` (QueryRetrieveLevel among
    them): the identifiers found (the first only, with ``first_only``).

    Raises:
        _Transient, DimseFailed: naming the status.
    """
    from pydicom.dataset import Dataset

    request = Dataset()
    for keyword, value in keys.items():
        setattr(request, keyword, value)
    found = []
    for status, identifier in assoc.send_c_find(request, FIND_MODEL):
        code = _status(status)
        if code in _PENDING:
            found.append(identifier)
            if first_only:
                assoc.send_c_cancel(1, query_model=FIND_MODEL)
                break
        elif code in _TRANSIENT:
            raise _Transient(f"C-FIND status 0x{code:04X}")
        elif code not in (0x0000, 0xFE00):  # success, cancelled
            raise DimseFailed(f"C-FIND failed with status 0x{code:04X}")
    return found


def find(node: NodeUrl, settings: DimseSettings, keys: dict[str, str], first_only=False) -> list:
    """``find_on`` on an association of its own, retried.

    Raises:
        DimseFailed: after retries, naming the status.
    """

    def once() -> list:
        with associate(node, settings, [(FIND_MODEL, _default_syntaxes())]) as assoc:
            return find_on(assoc, keys, first_only)

    return with_retries(once, settings)


def _default_syntaxes() -> list[str]:
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    return [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def _value(identifier, keyword: str) -> str | None:
    value = getattr(identifier, keyword, None) if identifier is not None else None
    if isinstance(value, str | bytes):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        return text.strip("\0 ") or None
    return None


# ------------------------------------------------------------------ listing


@dataclass(frozen=True)
class Listed:
    """One instance a search found: its URL and SOP Class (to propose for retrieval)."""

    uri: str
    sop_class: str


Found = NodeUrl | Listed | StageError


def search_studies(url: NodeUrl, settings: DimseSettings) -> list[Found]:
    """The studies an input stands for (C-FIND at study level with the query's filters),
    or the input itself when it names a study, series or instance."""
    if url.level != "node":
        return [url]
    keys = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", **settings.filters()}
    studies: set[NodeUrl] = set()
    errors: list[Found] = []
    for identifier in find(url, settings, keys):
        uid = _value(identifier, "StudyInstanceUID")
        if is_reference(uid):
            studies.add(url.child(study=uid))
        else:
            errors.append(StageError("invalid_uid", "the node listed a study with no usable UID"))
    return [*sorted(studies, key=lambda s: s.uri), *errors]


def search_instances(study: NodeUrl, settings: DimseSettings) -> list[Found]:
    """Every instance of a study (series, then instance level, on one association), or of
    a series; an instance URL is looked up for its SOP Class.

    Raises:
        DimseFailed: after retries.
    """

    def once() -> list[Found]:
        with associate(study, settings, [(FIND_MODEL, _default_syntaxes())]) as assoc:
            return _instances(assoc, study)

    return with_retries(once, settings)


def _instances(assoc, study: NodeUrl) -> list[Found]:
    if study.level in ("series", "instance"):
        series = [study.series]
    else:
        keys = {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": study.study or ""}
        series = [
            _value(i, "SeriesInstanceUID")
            for i in find_on(assoc, {**keys, "SeriesInstanceUID": ""})
        ]
    listed: list[Found] = []
    errors: list[Found] = []
    for uid in sorted(set(series), key=str):
        if not is_reference(uid):
            errors.append(StageError("invalid_uid", "the node listed a series with no usable UID"))
            continue
        keys = {
            "QueryRetrieveLevel": "IMAGE",
            "StudyInstanceUID": study.study or "",
            "SeriesInstanceUID": uid,
            "SOPInstanceUID": study.instance or "",
            "SOPClassUID": "",
        }
        for identifier in find_on(assoc, keys):
            sop = _value(identifier, "SOPInstanceUID")
            sop_class = _value(identifier, "SOPClassUID")
            if is_reference(sop) and is_uid(sop_class):
                listed.append(Listed(study.child(series=uid, instance=sop).uri, sop_class))
            else:
                message = "the node listed an instance with a missing or unusable UID"
                errors.append(StageError("invalid_uid", message))
    # Repeats stay: an instance listed twice is two rows downstream.
    return [*sorted(listed, key=lambda x: x.uri if isinstance(x, Listed) else ""), *errors]


def list_instances(uris: Sequence[str], settings: DimseSettings) -> dict[str, str]:
    """Every instance the inputs stand for now → its version (``listed``: DIMSE has no
    "stored at" time either, so an instance is new when its UIDs are)."""
    found: dict[str, str] = {}
    for uri in uris:
        for study in search_studies(NodeUrl.parse(uri), settings):
            if isinstance(study, NodeUrl):
                for item in search_instances(study, settings):
                    if isinstance(item, Listed):
                        found[item.uri] = "listed"
    return found


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


class _MoveScp:
    """The storage SCP a worker process starts for C-MOVE: instances land here by SOP
    Instance UID until the C-MOVE that asked for them collects them."""

    _lock = threading.Lock()
    _servers: dict[tuple[str, str, int], "_MoveScp"] = {}

    def __init__(self, aet: str, bind: str, port: int):
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self._received: dict[str, bytes] = {}
        self._guard = threading.Lock()
        ae = AE(ae_title=aet)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(str(context.abstract_syntax), _storage_syntaxes())
        self._server: Any = ae.start_server(
            (bind, port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    @classmethod
    def of(cls, settings: DimseSettings) -> "_MoveScp":
        where = (settings.calling_aet, settings.move_bind, settings.move_port)
        with cls._lock:
            if where not in cls._servers:
                cls._servers[where] = cls(*where)
            return cls._servers[where]

    def _store(self, event) -> int:
        with self._guard:
            self._received[str(event.request.AffectedSOPInstanceUID)] = event.encoded_dataset()
        return 0x0000

    def collect(self, uids: Iterable[str]) -> dict[str, bytes]:
        with self._guard:
            return {u: self._received.pop(u) for u in uids if u in self._received}

    @classmethod
    def stop_all(cls) -> None:
        with cls._lock:
            for server in cls._servers.values():
                server._server.shutdown()
            cls._servers.clear()


def stop_move_servers() -> None:
    """Stops the storage SCPs this process started for C-MOVE (they otherwise live as
    long as the worker)."""
    _MoveScp.stop_all()


def retrieve(
    target: NodeUrl,
    listed: Sequence[Listed],
    settings: DimseSettings,
    on_retry: Callable[[], None] | None = None,
) -> dict[str, bytes]:
    """The instances of a series (or one instance; ``listed``: what the search found there)
    as Part 10 bytes by SOP Instance UID, by C-GET (or C-MOVE to this worker's storage
    SCP). What the node did not send is missing from the answer; a failed association is
    retried.

    Raises:
        DimseFailed: when the node cannot be asked after retries.
    """
    from pydicom.dataset import Dataset
    from pynetdicom import evt

    request = Dataset()
    request.QueryRetrieveLevel = "IMAGE" if target.instance else "SERIES"
    request.StudyInstanceUID = target.study
    request.SeriesInstanceUID = target.series
    if target.instance:
        request.SOPInstanceUID = target.instance
    classes = sorted({x.sop_class for x in listed})
    expected = {NodeUrl.parse(x.uri).instance or "" for x in listed}
    move = settings.retrieve == "move"

    def check(code: int, what: str) -> None:
        if code in _TRANSIENT:
            raise _Transient(f"{what} status 0x{code:04X}")
        # Failure and warning statuses still leave what was sent; what is missing is
        # asked for again, one instance at a time, by the caller.

    def get_once() -> dict[str, bytes]:
        received: dict[str, bytes] = {}

        def on_store(event) -> int:
            received[str(event.request.AffectedSOPInstanceUID)] = event.encoded_dataset()
            return 0x0000

        syntaxes = _storage_syntaxes()
        # One context per SOP Class and transfer syntax: the node picks the one it holds.
        contexts = [(GET_MODEL, _default_syntaxes())]
        contexts += [(c, [ts]) for c in classes for ts in syntaxes][:127]
        handlers = [(evt.EVT_C_STORE, on_store)]
        with associate(target, settings, contexts, classes, handlers) as assoc:
            for status, _ in assoc.send_c_get(request, GET_MODEL):
                code = _status(status)
                if code not in _PENDING:
                    check(code, "C-GET")
        return received

    def move_once() -> dict[str, bytes]:
        scp = _MoveScp.of(settings)
        with associate(target, settings, [(MOVE_MODEL, _default_syntaxes())]) as assoc:
            for status, _ in assoc.send_c_move(request, settings.calling_aet, MOVE_MODEL):
                code = _status(status)
                if code not in _PENDING:
                    check(code, "C-MOVE")
        return scp.collect(expected)

    return with_retries(move_once if move else get_once, settings, on_retry)


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
        with associate(url.root, settings, [(VERIFICATION, _default_syntaxes())]) as assoc:
            code = _status(assoc.send_c_echo())
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
    except (_Transient, DimseFailed) as e:
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
        _Transient: the association failed (the whole batch is tried again).
    """
    import pydicom

    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in instances]
    wanted: dict[str, set[str]] = {}
    for ds in datasets:
        syntax = str(ds.file_meta.TransferSyntaxUID)
        wanted.setdefault(str(ds.SOPClassUID), set()).update({syntax, *_default_syntaxes()})
    # One context per SOP Class and transfer syntax: the node accepts one syntax per
    # context, and an instance goes in the syntax it is encoded in.
    contexts = [(c, [ts]) for c, syntaxes in sorted(wanted.items()) for ts in sorted(syntaxes)]
    statuses: list[int | None] = []
    with associate(node, settings, contexts) as assoc:
        for ds in datasets:
            try:
                statuses.append(_status(assoc.send_c_store(ds)))
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
            if code == 0x0000 or code in _WARNING:
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
