"""DICOMweb connections: settings, credentials, a dicomweb-client per store, retries, slots.

Credentials are read on the worker, never put in an option value, a URL, a log line or an
exception message: a bearer token or ``user:password`` from an environment variable or a
secret file (local or ``gs://``), or Google application-default credentials for the Cloud
Healthcare API. Retries with exponential backoff (and the server's Retry-After) cover
429, 5xx, timeouts and dropped connections; everything else fails at once.
"""

import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qsl

import requests

from models.configs import arg
from transforms.dicomweb.urls import StoreUrl

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
GOOGLE_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
T = TypeVar("T")


class CredentialsError(Exception):
    """The credentials cannot be read; the message names the variable or file, not a value."""


class RequestFailed(Exception):
    """A DICOMweb request failed for good. The message holds a status, never a URL."""

    def __init__(self, status: int | None, attempts: int, cause: str):
        self.status = status
        self.attempts = attempts
        what = f"HTTP {status}" if status is not None else cause
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"{what}{tries}")
        self.message = str(self)


@dataclass(frozen=True, kw_only=True)
class DicomwebSettings:
    """How DICOMweb inputs and outputs are reached. Holds names of secrets, never secrets.

    A declared config (``models.configs``): the first four fields are the ``--dicomweb-*``
    flags (``nested(DicomwebSettings, "dicomweb-")`` in ``SourceSettings``) and run.yaml's
    ``sources: {dicomweb: ...}`` section.

    Attributes:
        query: QIDO-RS study filters, ``"ModalitiesInStudy=CR&StudyDate=20260101-"``.
        credentials_env: environment variable holding a bearer token or ``user:password``.
        credentials_file: file (local or gs://) holding the same.
        max_concurrency: requests in flight at once per worker process.
        attempts: tries per request (429/5xx/timeouts retried with backoff).
        backoff_seconds: the first retry's delay; doubled per retry, up to max_backoff.
        timeout_seconds: per request (connect and read).
        store_batch: instances per STOW-RS request.
    """

    query: str | None = arg(
        None,
        'QIDO-RS study filters for dicomweb+http(s):// inputs, e.g. "ModalitiesInStudy=CR'
        '&StudyDate=20260101-"',
    )
    credentials_env: str | None = arg(
        None, "variable holding a bearer token or user:password for the DICOMweb store(s)"
    )
    credentials_file: str | None = arg(
        None, "file (local or gs://) holding a bearer token or user:password"
    )
    max_concurrency: int = arg(8, "DICOMweb requests in flight at once per worker")
    # Set from code only (tests, benchmarks): no flag, no run.yaml key.
    attempts: int = arg(5, flag=False)
    backoff_seconds: float = arg(0.5, flag=False)
    max_backoff_seconds: float = arg(30.0, flag=False)
    timeout_seconds: float = arg(60.0, flag=False)
    store_batch: int = arg(20, flag=False)

    def filters(self) -> dict[str, str]:
        """The QIDO filters as a dict.

        Raises:
            ValueError: for an empty key or a malformed pair.
        """
        if not self.query:
            return {}
        try:
            pairs = parse_qsl(self.query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise ValueError("--dicomweb-query must look like Key=value&Key=value") from None
        if any(not key.strip() for key, _ in pairs):
            raise ValueError("--dicomweb-query has an empty attribute name")
        return dict(pairs)

    def check(self) -> None:
        """Raises ValueError for settings that cannot work (before any work)."""
        self.filters()
        if self.credentials_env and self.credentials_file:
            raise ValueError("give only one of --dicomweb-credentials-env and -file")
        if self.max_concurrency < 1 or self.attempts < 1 or self.store_batch < 1:
            raise ValueError("DICOMweb concurrency, attempts and batch size must be positive")


def read_credentials(settings: DicomwebSettings) -> str | None:
    """The secret text (token or ``user:password``), or None when none is configured."""
    if settings.credentials_env:
        value = os.environ.get(settings.credentials_env)
        if not value:
            raise CredentialsError(f"environment variable {settings.credentials_env} is not set")
        return value.strip()
    if settings.credentials_file:
        from apache_beam.io.filesystems import FileSystems

        from transforms.dicom_io import normalize_uri

        try:
            with FileSystems.open(normalize_uri(settings.credentials_file)) as fh:
                value = fh.read().decode().strip()
        except Exception as e:
            raise CredentialsError(
                f"cannot read {settings.credentials_file} ({type(e).__name__})"
            ) from None
        if not value:
            raise CredentialsError(f"{settings.credentials_file} is empty")
        return value
    return None


def make_session(store: StoreUrl, settings: DicomwebSettings) -> requests.Session:
    """An HTTP session that authenticates to ``store``.

    A configured secret wins: text with a colon is HTTP basic ``user:password``, otherwise
    a bearer token. Without one, the Cloud Healthcare API gets Google application-default
    credentials; other servers get no authentication.
    """
    secret = read_credentials(settings)
    if secret is not None:
        session = requests.Session()
        if ":" in secret:
            user, _, password = secret.partition(":")
            session.auth = requests.auth.HTTPBasicAuth(user, password)
        else:
            session.headers["Authorization"] = f"Bearer {secret}"
    elif store.google:
        import google.auth
        from google.auth.transport.requests import AuthorizedSession

        credentials, _ = google.auth.default(scopes=list(GOOGLE_SCOPES))
        session = AuthorizedSession(credentials)
    else:
        session = requests.Session()
    size = max(10, settings.max_concurrency)
    adapter = requests.adapters.HTTPAdapter(pool_connections=size, pool_maxsize=size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def make_client(store: StoreUrl, settings: DicomwebSettings):
    """A dicomweb-client for the store's root; its own retries are off (ours apply)."""
    from dicomweb_client.api import DICOMwebClient

    # permissive_uid: a store that holds an instance under a non-conformant UID (64 hex
    # digits, as some anonymizers write) is asked for it by that string.
    client = DICOMwebClient(
        url=store.base,
        session=make_session(store, settings),
        timeout=settings.timeout_seconds,
        permissive_uid=True,
    )
    client.set_http_retry_params(retry=False)
    return client


class Clients:
    """One client per store root, made on first use; safe to share between threads."""

    def __init__(self, settings: DicomwebSettings):
        self._settings = settings
        self._clients: dict[str, object] = {}
        self._lock = threading.Lock()

    def get(self, store: StoreUrl):
        with self._lock:
            if store.base not in self._clients:
                self._clients[store.base] = make_client(store, self._settings)
            return self._clients[store.base]


def _retry_after(response: requests.Response | None) -> float | None:
    if response is None:
        return None
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def call_with_retries(
    call: Callable[[], T],
    settings: DicomwebSettings,
    on_retry: Callable[[], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Runs ``call`` until it succeeds, retrying 429/5xx/timeouts/dropped connections.

    Raises:
        RequestFailed: with the last status (or the kind of network failure); the
            original exception's text, which holds the URL, is dropped.
    """
    for attempt in range(1, settings.attempts + 1):
        try:
            return call()
        except requests.HTTPError as e:
            status = e.response.status_code if e.response is not None else None
            if status not in RETRYABLE_STATUS or attempt == settings.attempts:
                raise RequestFailed(status, attempt, "http error") from None
            delay = _retry_after(e.response)
        except (requests.ConnectionError, requests.Timeout) as e:
            if attempt == settings.attempts:
                raise RequestFailed(None, attempt, type(e).__name__) from None
            delay = None
        if on_retry is not None:
            on_retry()
        backoff = min(settings.max_backoff_seconds, settings.backoff_seconds * 2 ** (attempt - 1))
        sleep(delay if delay is not None else backoff * (0.5 + random.random()))
    raise AssertionError("unreachable")


_SLOTS: dict[int, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def worker_slots(cap: int) -> threading.BoundedSemaphore:
    """The process-wide semaphore that caps requests in flight on this worker at ``cap``
    (every DoFn instance in the process shares it)."""
    with _SLOTS_LOCK:
        return _SLOTS.setdefault(cap, threading.BoundedSemaphore(cap))
