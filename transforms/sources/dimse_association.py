"""How DIMSE nodes are addressed and reached: the ``dimse://`` URL, the ``--dimse-*``
settings, and associations (pynetdicom) capped per worker process and retried with
exponential backoff on failed associations and transient statuses.

No secret goes in a URL; TLS files are named by path. pynetdicom's own log lines (which can
quote identifiers) are silenced. Queries are ``dimse_query``, retrieval ``dimse_retrieve``,
the Beam source and sink ``dimse``.
"""

import contextlib
import dataclasses
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from models.configs import arg
from transforms.dicomweb.urls import is_reference

logging.getLogger("pynetdicom").setLevel(logging.CRITICAL + 1)

SCHEME = "dimse://"
DEFAULT_PORT = 104
_LEVELS = ("studies", "series", "instances")
# Retryable C-FIND/C-GET/C-MOVE/C-STORE statuses: out of resources, and "unable to
# process" that some nodes answer while busy.
TRANSIENT = frozenset({0xA700, 0xA701, 0xA702, 0xC001, 0xC002})
PENDING = frozenset({0xFF00, 0xFF01})
WARNING = frozenset({0x0001, 0xB000, 0xB006, 0xB007})
# Study Root query/retrieve models and Verification (PS3.4), by UID.
FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"
MOVE_MODEL = "1.2.840.10008.5.1.4.1.2.2.2"
GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"
VERIFICATION = "1.2.840.10008.1.1"
T = TypeVar("T")


class DimseFailed(Exception):
    """A DIMSE exchange failed for good; the message holds a status, never a UID."""


class Transient(Exception):
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
    """Runs ``call`` until it succeeds, retrying ``Transient`` with exponential backoff.

    Raises:
        DimseFailed: after the last attempt, or at once for a failure that is not transient.
    """
    for attempt in range(1, settings.attempts + 1):
        try:
            return call()
        except Transient as e:
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


def storage_syntaxes() -> list[str]:
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
        Transient: when the node does not accept the association.
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
            raise Transient(f"association {what}")
        try:
            yield assoc
        except BaseException:
            assoc.abort()
            raise
        else:
            assoc.release()


def status_code(status) -> int:
    """A DIMSE response's status; ``Transient`` when there was no answer."""
    if status is None or "Status" not in status:
        raise Transient("no answer (connection lost or timed out)")
    return int(status.Status)


def default_syntaxes() -> list[str]:
    """The transfer syntaxes every node takes: proposed for queries, retrieval and echo."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    return [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
