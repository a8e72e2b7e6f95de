"""Writing to a DICOMweb store: de-identified instances by STOW-RS, in batches.

A batch is one multipart POST of Part 10 instances. Re-sending a batch (a retry, or a
re-run with the same key) stores the same SOP Instance UIDs again, which servers replace
or ignore, so the write is idempotent. Instances the server rejects (FailedSOPSequence)
and batches that fail after retries become dead letters, one per instance.
"""

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.deadletter import DEAD_LETTER, STAGE_WRITE, DeadLetter, StageError, unexpected
from transforms.dicom_io.objects import METRICS_NAMESPACE
from transforms.dicomweb.client import (
    Clients,
    DicomwebSettings,
    RequestFailed,
    call_with_retries,
    worker_slots,
)
from transforms.dicomweb.urls import StoreUrl, is_uid

_FAILED_SOP_SEQUENCE = "FailedSOPSequence"


def output_store(url: str) -> StoreUrl:
    """The store an ``--output-store`` URL names (``dicomweb+`` prefix optional).

    Raises:
        ValueError: for a malformed URL, or one that names a study or instance.
    """
    uri = url if url.startswith("dicomweb+") else f"dicomweb+{url}"
    store = StoreUrl.parse(uri)
    if store.level != "store":
        raise ValueError("--output-store names a DICOMweb store's root, not a study or instance")
    return store


def store_instances(client, store: StoreUrl, instances: list[bytes]) -> set[str]:
    """POSTs Part 10 instances (STOW-RS); returns the SOP Instance UIDs the server rejected.

    Raises:
        requests.HTTPError and friends, for ``call_with_retries``.
    """
    answer = client._http_post_multipart_application_dicom(f"{store.http}/studies", instances)
    failed = set()
    for item in answer.get(_FAILED_SOP_SEQUENCE, None) or []:
        failed.add(str(item.get("ReferencedSOPInstanceUID", "")))
    return failed


class StoreFn(beam.DoFn):
    """Batches of ``(source, member, DeidResult)`` → ``(modality, net_counts)`` per stored
    instance (as the file writer yields), or a dead letter per instance not stored."""

    def __init__(self, url: str, settings: DicomwebSettings):
        self._store = output_store(url)
        self._settings = settings
        self._stored = Metrics.counter(METRICS_NAMESPACE, "dicomweb_stored")
        self._retries = Metrics.counter(METRICS_NAMESPACE, "dicomweb_store_retries")
        self._failed = Metrics.counter(METRICS_NAMESPACE, "dicomweb_store_dead_letters")

    def setup(self):
        self._clients = Clients(self._settings)
        self._slots = worker_slots(self._settings.max_concurrency)

    def _post(self, client, instances: list[bytes]) -> set[str]:
        with self._slots:
            return store_instances(client, self._store, instances)

    def process(self, batch: list):
        sendable = []
        for source, member, result in batch:
            if is_uid(result.sop_instance_uid) and result.data is not None:
                sendable.append((source, member, result))
                continue
            message = "the instance has no valid SOP Instance UID or no encoded data"
            yield self._letter(source, member, StageError("invalid_uid", message))
        if not sendable:
            return
        try:
            client = self._clients.get(self._store)
            rejected = call_with_retries(
                lambda: self._post(client, [r.data for _, _, r in sendable]),
                self._settings,
                self._retries.inc,
            )
        except RequestFailed as e:
            error = StageError("store_failed", f"STOW-RS store failed: {e.message}")
            for source, member, _ in sendable:
                yield self._letter(source, member, error)
            return
        except Exception as e:
            for source, member, _ in sendable:
                yield self._letter(source, member, unexpected(e))
            return
        for source, member, result in sendable:
            if result.sop_instance_uid in rejected:
                message = "the store rejected the instance (FailedSOPSequence)"
                yield self._letter(source, member, StageError("store_rejected", message))
            else:
                self._stored.inc()
                yield result.modality, result.net_counts

    def _letter(self, source: str, member: str | None, error: StageError):
        self._failed.inc()
        letter = DeadLetter(source, member, STAGE_WRITE, error.error_type, error.message)
        return beam.pvalue.TaggedOutput(DEAD_LETTER, letter)


class WriteDicomweb(beam.PTransform):
    """``(source, member, DeidResult)`` → ((modality, net_counts) per stored instance,
    dead letters)."""

    def __init__(self, url: str, settings: DicomwebSettings | None = None):
        super().__init__()
        self._url = url
        self._settings = settings or DicomwebSettings()

    def expand(self, results):
        size = self._settings.store_batch
        stored = (
            results
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=size)
            | "Store"
            >> beam.ParDo(StoreFn(self._url, self._settings)).with_outputs(
                DEAD_LETTER, main="stored"
            )
        )
        return stored.stored, stored[DEAD_LETTER]
