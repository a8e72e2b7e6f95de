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
from collections.abc import Iterator
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
from transforms.dicomweb.urls import StoreUrl, is_uid

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


def _value(result: dict, tag: str) -> str | None:
    values = (result.get(tag) or {}).get("Value") or [None]
    return str(values[0]) if values[0] is not None else None


def search_all(search, settings: DicomwebSettings, key: str) -> list[dict]:
    """Every result of a QIDO-RS search, page by page (``limit``/``offset``), each page
    retried on its own.

    dicomweb-client's ``get_remaining`` asks until a page comes back empty, which never
    happens on a server that ignores ``offset`` for some filters (Orthanc does, for
    ModalitiesInStudy): here a short page, or one with nothing new, ends the search.
    """
    results: dict[str | None, dict] = {}
    offset = 0
    while True:
        page = call_with_retries(functools.partial(search, limit=PAGE, offset=offset), settings)
        new = {_value(r, key): r for r in page if _value(r, key) not in results}
        results.update(new)
        if len(page) < PAGE or not new:
            return list(results.values())
        offset += len(page)


def search_studies(client, store: StoreUrl, settings: DicomwebSettings) -> list[StoreUrl]:
    """The studies an input stands for: QIDO-RS at the store's root with the query's filters,
    or the input itself when it names a study, series or instance.

    Raises:
        RequestFailed: when the search fails after retries.
        StageError: ``invalid_uid`` when the server answers with a malformed UID.
    """
    if store.level != "store":
        return [store]
    found = search_all(
        lambda **page: client.search_for_studies(
            search_filters=settings.filters(), fields=[STUDY_UID], **page
        ),
        settings,
        STUDY_UID,
    )
    studies = []
    for result in found:
        uid = _value(result, STUDY_UID)
        if not is_uid(uid):
            raise StageError("invalid_uid", "the store answered a search with a malformed UID")
        studies.append(store.child(study=uid))
    return sorted(set(studies), key=lambda s: s.uri)


def search_instances(client, study: StoreUrl, settings: DicomwebSettings) -> list[StoreUrl]:
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
        SOP_UID,
    )
    instances = []
    for result in found:
        series = _value(result, SERIES_UID) or study.series
        sop = _value(result, SOP_UID)
        if not (is_uid(series) and is_uid(sop)):
            raise StageError("invalid_uid", "the store listed an instance with a malformed UID")
        instances.append(study.child(series=series, instance=sop))
    return sorted(set(instances), key=lambda s: s.uri)


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
                self._found.inc()
                yield item.uri
            return
        self._failed.inc()
        letter = DeadLetter(uri, None, STAGE_READ, error.error_type, error.message)
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)


class RetrieveFn(beam.DoFn):
    """Batches of instance URLs → SourceObjects, or a dead letter per instance.

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

    def fetch(self, uri: str) -> SourceObject | DeadLetter:
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

    def process(self, batch: list[str]) -> Iterator:
        for item in self._pool.map(self.fetch, batch):
            yield self._counters.route(item)


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
            | "SpreadStudies" >> beam.Reshuffle()
            | "SearchInstances"
            >> beam.ParDo(_SearchFn(settings, search_instances, "dicomweb_instances")).with_outputs(
                DEAD_LETTER, main="found"
            )
        )
        retrieved = (
            instances.found
            | "OnePerInstance" >> beam.Distinct()
            # Listing happened on few workers; the reshuffle spreads retrieval over all.
            | "SpreadInstances" >> beam.Reshuffle()
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
