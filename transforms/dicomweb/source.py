"""Reading a DICOMweb store: QIDO-RS search, then WADO-RS retrieval of Part 10 instances.

Studies are searched on one worker (one paginated request per input), their instances on
the workers (one request per study), and the instances, reshuffled so that Dataflow
spreads them, are retrieved in batches by a thread pool per worker, capped by a
process-wide semaphore. Each instance becomes a ``SourceObject`` (``source`` is its
``dicomweb+http(s)://.../studies/S/series/R/instances/I`` URL, as a file's path is its
source) or a dead-letter row: conservation holds per instance. A study whose instances
cannot be listed gets one row of its own.
"""

import functools
import json
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.deadletter import DEAD_LETTER, STAGE_READ, DeadLetter, StageError, unexpected
from transforms.dicom_io.objects import (
    DEFAULT_MAX_OBJECT_BYTES,
    METRICS_NAMESPACE,
    ReadCounters,
    SourceObject,
)
from transforms.dicomweb.client import (
    Clients,
    DicomwebSettings,
    RequestFailed,
    call_with_retries,
    worker_slots,
)
from transforms.dicomweb.urls import StoreUrl, is_reference

STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
SOP_UID = "00080018"
# Retrieve as stored (transfer-syntax=*): the default would make the server transcode to
# Explicit VR Little Endian, and the instance would no longer be what the store holds. No
# gzip: pixel data is mostly compressed already or compresses poorly, and compressing it
# costs the server and the worker CPU (on loopback it doubled the time per instance).
RETRIEVE_HEADERS = {
    "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*',
    "Accept-Encoding": "identity",
}


PAGE = 500  # QIDO-RS results per request


def _value(result: object, tag: str) -> str | None:
    """The first value of ``tag`` in one QIDO-RS result, or None when the result, the
    attribute or its value is missing or not a string (a malformed answer is data)."""
    element = result.get(tag) if isinstance(result, dict) else None
    values = element.get("Value") if isinstance(element, dict) else None
    first = values[0] if isinstance(values, list) and values else None
    return first.strip() if isinstance(first, str) else None


def _identity(result: object) -> str:
    """What tells a page's results from an earlier page's: the whole answer, so that a
    page repeated by a server is read once and two different results are never merged."""
    return json.dumps(result, sort_keys=True, default=str)


def search_all(search, settings: DicomwebSettings) -> list:
    """Every result of a QIDO-RS search, page by page (``limit``/``offset``), each page
    retried on its own.

    dicomweb-client's ``get_remaining`` asks until a page comes back empty, which never
    happens on a server that ignores ``offset`` for some filters (Orthanc does, for
    ModalitiesInStudy): here a short page, or one with nothing new, ends the search.
    """
    results: list = []
    seen: set[str] = set()
    offset = 0
    while True:
        page = call_with_retries(functools.partial(search, limit=PAGE, offset=offset), settings)
        if not isinstance(page, list):
            raise StageError("bad_response", "the store answered a search with no result list")
        # Within a page every result counts (a store may hold two instances under one set
        # of UIDs); a page that only repeats earlier ones ends the search.
        new = [r for r in page if _identity(r) not in seen]
        seen.update(_identity(r) for r in new)
        results += new
        if len(page) < PAGE or not new:
            return results
        offset += len(page)


# One item a search finds: a URL to search further or retrieve, or the dead letter of one
# result the store answered with but that cannot be followed (a missing UID, a UID that no
# URL can carry). One bad result is one row, never the whole store's failure.
Found = StoreUrl | StageError


def search_studies(client, store: StoreUrl, settings: DicomwebSettings) -> list[Found]:
    """The studies an input stands for: QIDO-RS at the store's root with the query's filters,
    or the input itself when it names a study, series or instance.

    Raises:
        RequestFailed: when the search fails after retries.
        StageError: ``bad_response`` when the answer is not a list of results.
    """
    if store.level != "store":
        return [store]
    found = search_all(
        lambda **page: client.search_for_studies(
            search_filters=settings.filters(), fields=[STUDY_UID], **page
        ),
        settings,
    )
    studies: list[StoreUrl] = []
    errors: list[Found] = []
    for result in found:
        uid = _value(result, STUDY_UID)
        if is_reference(uid):
            studies.append(store.child(study=uid))
        else:
            what = "no" if uid is None else "an unusable"
            errors.append(
                StageError("invalid_uid", f"the store listed a study with {what} Study UID")
            )
    return [*sorted(set(studies), key=lambda s: s.uri), *errors]


def search_instances(client, study: StoreUrl, settings: DicomwebSettings) -> list[Found]:
    """Every instance of a study (or series) by QIDO-RS; an instance URL stands for itself.

    Raises:
        RequestFailed, StageError: as ``search_studies``.
    """
    if study.level == "instance":
        return [study]
    found = search_all(
        lambda **page: client.search_for_instances(
            study_instance_uid=study.study,
            series_instance_uid=study.series,
            fields=[SERIES_UID, SOP_UID],
            **page,
        ),
        settings,
    )
    instances: list[StoreUrl] = []
    errors: list[Found] = []
    for result in found:
        series = _value(result, SERIES_UID) or study.series
        sop = _value(result, SOP_UID)
        if is_reference(series) and is_reference(sop):
            instances.append(study.child(series=series, instance=sop))
        else:
            errors.append(
                StageError(
                    "invalid_uid",
                    "the store listed an instance with a missing or unusable Series or "
                    "SOP Instance UID",
                )
            )
    # Repeats stay: two instances listed under one set of UIDs are two rows downstream.
    return [*sorted(instances, key=lambda s: s.uri), *errors]


def retrieve_instance(client, instance: StoreUrl) -> bytes:
    """One instance as Part 10 bytes, by WADO-RS (multipart/related; application/dicom).

    Raises:
        requests.HTTPError and friends (for ``call_with_retries``), or StageError
        ``bad_response`` when the answer holds no instance or several.
    """
    # dicomweb-client's public retrieve_instance parses the bytes into a Dataset; the
    # reading layer wants the bytes as stored, so its request and multipart decoder are used.
    response = client._http_get(instance.http, headers=dict(RETRIEVE_HEADERS))
    if response.headers.get("Content-Type", "").startswith("application/dicom"):
        return response.content  # a non-encapsulated answer, as some servers send
    parts = list(client._decode_multipart_message(response, stream=False))
    if len(parts) != 1:
        raise StageError("bad_response", f"the server sent {len(parts)} parts for one instance")
    return bytes(parts[0])


class _SearchFn(beam.DoFn):
    """A search step: URL in, URLs out, or one dead letter for the URL that failed."""

    def __init__(self, settings: DicomwebSettings, search, counter: str):
        self._settings = settings
        self._search = search
        self._found = Metrics.counter(METRICS_NAMESPACE, counter)
        self._failed = Metrics.counter(METRICS_NAMESPACE, "dicomweb_search_dead_letters")

    def setup(self):
        self._clients = Clients(self._settings)

    def process(self, uri: str):
        try:
            url = StoreUrl.parse(uri)
            found = self._search(self._clients.get(url), url, self._settings)
        except RequestFailed as e:
            error = StageError("search_failed", f"QIDO-RS search failed: {e.message}")
        except StageError as e:
            error = e
        except Exception as e:
            error = unexpected(e)
        else:
            for item in found:
                if isinstance(item, StageError):
                    yield self._letter(uri, item)
                else:
                    self._found.inc()
                    yield item.uri
            return
        yield self._letter(uri, error)

    def _letter(self, uri: str, error: StageError):
        self._failed.inc()
        letter = DeadLetter(uri, None, STAGE_READ, error.error_type, error.message)
        return beam.pvalue.TaggedOutput(DEAD_LETTER, letter)


class RetrieveFn(beam.DoFn):
    """Batches of candidate URLs (one tuple per instance) → SourceObjects, or a dead letter
    per instance and one per duplicate listing.

    The batch is fetched by a thread pool of ``max_concurrency``; a process-wide semaphore
    of the same size keeps every DoFn instance on the worker together within the cap.
    """

    def __init__(self, settings: DicomwebSettings, max_bytes: int = DEFAULT_MAX_OBJECT_BYTES):
        self._settings = settings
        self._max_bytes = max_bytes
        self._counters = ReadCounters(
            "dicomweb_retrieved", "dicomweb_retrieved_bytes", "dicomweb_retrieve_dead_letters"
        )
        self._retries = Metrics.counter(METRICS_NAMESPACE, "dicomweb_retries")

    def setup(self):
        self._clients = Clients(self._settings)
        self._slots = worker_slots(self._settings.max_concurrency)
        self._pool = ThreadPoolExecutor(self._settings.max_concurrency)

    def teardown(self):
        self._pool.shutdown(wait=False)

    def _fetch_once(self, client, url: StoreUrl) -> bytes:
        with self._slots:
            return retrieve_instance(client, url)

    def fetch_one(self, uri: str) -> SourceObject | DeadLetter:
        """One instance, retried; every failure becomes this instance's dead letter."""
        try:
            url = StoreUrl.parse(uri)
            client = self._clients.get(url)
            data = call_with_retries(
                lambda: self._fetch_once(client, url), self._settings, self._retries.inc
            )
        except RequestFailed as e:
            error = StageError("retrieve_failed", f"WADO-RS retrieve failed: {e.message}")
        except StageError as e:
            error = e
        except Exception as e:
            error = unexpected(e)
        else:
            if len(data) > self._max_bytes:
                error = StageError("too_large", f"{len(data)} bytes exceed --max-object-bytes")
            else:
                return SourceObject(uri, None, data)
        return DeadLetter(uri, None, STAGE_READ, error.error_type, error.message)

    def fetch(self, urls: tuple[str, ...]) -> list[SourceObject | DeadLetter]:
        """One instance from the first of its URLs that the store serves; one row for each
        URL: the object, or its dead letter (the first failure), and ``duplicate_instance``
        rows for the other places it is listed."""
        first: DeadLetter | None = None
        read: SourceObject | None = None
        for uri in dict.fromkeys(urls):
            item = self.fetch_one(uri)
            if isinstance(item, SourceObject):
                read = item
                break
            first = first or item
        kept = read or first
        assert kept is not None
        rows: list[SourceObject | DeadLetter] = [kept]
        others = list(urls)
        others.remove(kept.source)
        for uri in others:
            message = "the store lists this SOP Instance UID more than once; one copy is read"
            if read is None:
                message = "the store lists this SOP Instance UID more than once and serves none"
            rows.append(DeadLetter(uri, None, STAGE_READ, "duplicate_instance", message))
        return rows

    def process(self, batch: list[tuple[str, ...]]) -> Iterator:
        for items in self._pool.map(self.fetch, batch):
            for item in items:
                yield self._counters.route(item)


def by_sop_instance_uid(uri: str) -> tuple[str, str]:
    return StoreUrl.parse(uri).instance or "", uri


def candidates(sop_urls: tuple[str, Iterable[str]]) -> tuple[str, ...]:
    """One SOP Instance UID's URLs (as often as the store listed it), in sorted order."""
    return tuple(sorted(sop_urls[1]))


class OneUrlPerInstance(beam.PTransform):
    """Instance URLs → one tuple of candidate URLs per SOP Instance UID. Retrieval reads
    the first the store can serve and gives each other one a ``duplicate_instance`` row:
    a store that holds one instance twice (in two series, or under two patients) yields
    it once, as the file reader does."""

    def expand(self, urls):
        return (
            urls
            | "BySopInstanceUid" >> beam.Map(by_sop_instance_uid)
            | "Group" >> beam.GroupByKey()
            | "Candidates" >> beam.Map(candidates)
        )


class ReadDicomweb(beam.PTransform):
    """DICOMweb input URLs → (SourceObjects, dead letters), one of the two per instance."""

    def __init__(
        self,
        uris: list[str],
        settings: DicomwebSettings | None = None,
        max_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
    ):
        super().__init__()
        self._uris = sorted(set(uris))
        self._settings = settings or DicomwebSettings()
        self._max_bytes = max_bytes

    def expand(self, pbegin):
        settings = self._settings
        studies = (
            pbegin
            | "StoreUrls" >> beam.Create(self._uris)
            | "SearchStudies"
            >> beam.ParDo(_SearchFn(settings, search_studies, "dicomweb_studies")).with_outputs(
                DEAD_LETTER, main="found"
            )
        )
        instances = (
            studies.found
            | "OnePerStudy" >> beam.Distinct()  # inputs may name a study twice
            | "SpreadStudies" >> beam.Reshuffle()
            | "SearchInstances"
            >> beam.ParDo(_SearchFn(settings, search_instances, "dicomweb_instances")).with_outputs(
                DEAD_LETTER, main="found"
            )
        )
        # Grouping by SOP Instance UID also spreads retrieval over all workers (listing
        # happened on few).
        unique = instances.found | "OnePerInstance" >> OneUrlPerInstance()
        retrieved = (
            unique
            | "Batch"
            >> beam.BatchElements(
                min_batch_size=settings.max_concurrency,
                max_batch_size=4 * settings.max_concurrency,
            )
            | "Retrieve"
            >> beam.ParDo(RetrieveFn(settings, self._max_bytes)).with_outputs(
                DEAD_LETTER, main="objects"
            )
        )
        errors = (
            studies[DEAD_LETTER],
            instances[DEAD_LETTER],
            retrieved[DEAD_LETTER],
        ) | "DicomwebDeadLetters" >> beam.Flatten()
        return retrieved.objects, errors
