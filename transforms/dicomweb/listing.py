"""Driver-side DICOMweb look-ups: checking an input before work, and listing a store for
incremental planning (``dicomflow run``)."""

from concurrent.futures import ThreadPoolExecutor

from transforms.dicomweb.client import (
    CredentialsError,
    DicomwebSettings,
    RequestFailed,
    call_with_retries,
    make_client,
)
from transforms.dicomweb.source import search_instances, search_studies
from transforms.dicomweb.urls import StoreUrl

# DICOMweb has no standard "stored at" time (QIDO-RS returns none, and a store replaces an
# instance only under its own SOP Instance UID), so an instance's version is its presence:
# a run fetches the instances whose study/series/instance UIDs it has not processed.
LISTED = "listed"


def check_store(uri: str, settings: DicomwebSettings, empty_ok: bool = False) -> None:
    """Raises ValueError, naming the store's root (never a UID or a credential), when the
    input cannot be reached or matches nothing (unless ``empty_ok``). An instance URL is
    not probed."""
    store = StoreUrl.parse(uri)
    if store.level == "instance":
        return
    try:
        client = make_client(store, settings)
        if store.level == "store":
            found = call_with_retries(
                lambda: client.search_for_studies(search_filters=settings.filters(), limit=1),
                settings,
            )
        else:
            found = call_with_retries(
                lambda: client.search_for_instances(
                    study_instance_uid=store.study, series_instance_uid=store.series, limit=1
                ),
                settings,
            )
    except CredentialsError as e:
        raise ValueError(f"DICOMweb credentials: {e}") from None
    except RequestFailed as e:
        raise ValueError(f"DICOMweb store {store.base} answered the search with {e}") from None
    if not found and not empty_ok:
        what = "no studies" if store.level == "store" else f"no instances in the {store.level}"
        raise ValueError(f"DICOMweb input matches {what}: {store.base}")


def list_instances(uris: list[str], settings: DicomwebSettings) -> dict[str, str]:
    """Every instance the DICOMweb inputs stand for now → its version, sorted by URL.

    Studies are searched first (with the query's filters), then each study's instances,
    ``max_concurrency`` studies at a time.

    Raises:
        RequestFailed: a search failed after retries (the run stops; nothing is planned).
    """
    found: dict[str, str] = {}
    for uri in uris:
        store = StoreUrl.parse(uri)
        client = make_client(store, settings)
        # A result that cannot be followed is left out of the plan here; the run's read
        # of the store gives it its dead letter.
        studies = [s for s in search_studies(client, store, settings) if isinstance(s, StoreUrl)]
        with ThreadPoolExecutor(settings.max_concurrency) as pool:
            n = len(studies)
            for instances in pool.map(search_instances, [client] * n, studies, [settings] * n):
                found.update((i.uri, LISTED) for i in instances if isinstance(i, StoreUrl))
    return dict(sorted(found.items()))
