"""Retrieval from a DIMSE node: a series (or one instance) as Part 10 bytes by SOP
Instance UID, by C-GET on the association that asks, or by C-MOVE to a storage SCP that
each worker process starts (for nodes that allow only that)."""

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from transforms.sources.dimse_association import (
    GET_MODEL,
    MOVE_MODEL,
    PENDING,
    TRANSIENT,
    DimseSettings,
    NodeUrl,
    Transient,
    associate,
    default_syntaxes,
    status_code,
    storage_syntaxes,
    with_retries,
)
from transforms.sources.dimse_query import Listed


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
            ae.add_supported_context(str(context.abstract_syntax), storage_syntaxes())
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
        if code in TRANSIENT:
            raise Transient(f"{what} status 0x{code:04X}")
        # Failure and warning statuses still leave what was sent; what is missing is
        # asked for again, one instance at a time, by the caller.

    def get_once() -> dict[str, bytes]:
        received: dict[str, bytes] = {}

        def on_store(event) -> int:
            received[str(event.request.AffectedSOPInstanceUID)] = event.encoded_dataset()
            return 0x0000

        syntaxes = storage_syntaxes()
        # One context per SOP Class and transfer syntax: the node picks the one it holds.
        contexts = [(GET_MODEL, default_syntaxes())]
        contexts += [(c, [ts]) for c in classes for ts in syntaxes][:127]
        handlers = [(evt.EVT_C_STORE, on_store)]
        with associate(target, settings, contexts, classes, handlers) as assoc:
            for status, _ in assoc.send_c_get(request, GET_MODEL):
                code = status_code(status)
                if code not in PENDING:
                    check(code, "C-GET")
        return received

    def move_once() -> dict[str, bytes]:
        scp = _MoveScp.of(settings)
        with associate(target, settings, [(MOVE_MODEL, default_syntaxes())]) as assoc:
            for status, _ in assoc.send_c_move(request, settings.calling_aet, MOVE_MODEL):
                code = status_code(status)
                if code not in PENDING:
                    check(code, "C-MOVE")
        return scp.collect(expected)

    return with_retries(move_once if move else get_once, settings, on_retry)
