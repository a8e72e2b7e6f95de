"""C-FIND (Study Root) on a DIMSE node: the studies an input stands for, then every
instance of a study or series, with its SOP Class (proposed again for retrieval)."""

from collections.abc import Sequence
from dataclasses import dataclass

from transforms.deadletter import StageError
from transforms.dicomweb.urls import is_reference, is_uid
from transforms.sources.dimse_association import (
    FIND_MODEL,
    PENDING,
    TRANSIENT,
    DimseFailed,
    DimseSettings,
    NodeUrl,
    Transient,
    associate,
    default_syntaxes,
    status_code,
    with_retries,
)


def find_on(assoc, keys: dict[str, str], first_only: bool = False) -> list:
    """C-FIND (Study Root) on an open association with ``keys`` (QueryRetrieveLevel among
    them): the identifiers found (the first only, with ``first_only``).

    Raises:
        Transient, DimseFailed: naming the status.
    """
    from pydicom.dataset import Dataset

    request = Dataset()
    for keyword, value in keys.items():
        setattr(request, keyword, value)
    found = []
    for status, identifier in assoc.send_c_find(request, FIND_MODEL):
        code = status_code(status)
        if code in PENDING:
            found.append(identifier)
            if first_only:
                assoc.send_c_cancel(1, query_model=FIND_MODEL)
                break
        elif code in TRANSIENT:
            raise Transient(f"C-FIND status 0x{code:04X}")
        elif code not in (0x0000, 0xFE00):  # success, cancelled
            raise DimseFailed(f"C-FIND failed with status 0x{code:04X}")
    return found


def find(node: NodeUrl, settings: DimseSettings, keys: dict[str, str], first_only=False) -> list:
    """``find_on`` on an association of its own, retried.

    Raises:
        DimseFailed: after retries, naming the status.
    """

    def once() -> list:
        with associate(node, settings, [(FIND_MODEL, default_syntaxes())]) as assoc:
            return find_on(assoc, keys, first_only)

    return with_retries(once, settings)


def _value(identifier, keyword: str) -> str | None:
    value = getattr(identifier, keyword, None) if identifier is not None else None
    if isinstance(value, str | bytes):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        return text.strip("\0 ") or None
    return None


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
        with associate(study, settings, [(FIND_MODEL, default_syntaxes())]) as assoc:
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
