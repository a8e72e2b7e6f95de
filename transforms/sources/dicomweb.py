"""DICOMweb stores as a source (QIDO-RS search, WADO-RS retrieval) and a sink (STOW-RS):
Cloud Healthcare API, Orthanc, dcm4chee. The protocol lives in ``transforms.dicomweb``."""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import apache_beam as beam

from transforms import dicomweb as web
from transforms.dicom_io.limits import Limits
from transforms.sources.base import ListingFailed, Sink, Source


def _check_settings(settings: web.DicomwebSettings, dataflow: bool, flag: str) -> None:
    settings.check()
    if dataflow and settings.credentials_env:
        raise ValueError(f"Dataflow workers read DICOMweb credentials from {flag}-file only")


@dataclass(frozen=True)
class DicomwebSource(Source):
    """``dicomweb+http(s)://host/.../dicom-web[/studies/S[/series/R[/instances/I]]]``."""

    stores: tuple[web.StoreUrl, ...]
    settings: web.DicomwebSettings

    name = "dicomweb"
    settings_type = web.DicomwebSettings

    @classmethod
    def owns(cls, uri: str) -> bool:
        return web.is_dicomweb(uri)

    @classmethod
    def configure(
        cls, uris: Sequence[str], settings: web.DicomwebSettings, dataflow: bool = False
    ) -> "DicomwebSource":
        _check_settings(settings, dataflow, "--dicomweb-credentials")
        stores = tuple(dict.fromkeys(web.StoreUrl.parse(u) for u in uris))
        return cls(stores, settings)

    def check(self) -> None:
        for store in self.stores:
            web.check_store(store.uri, self.settings)

    def list_objects(self) -> dict[str, str]:
        try:
            return web.list_instances([s.uri for s in self.stores], self.settings)
        except (web.RequestFailed, web.CredentialsError) as e:
            raise ListingFailed(f"listing the DICOMweb input failed: {e}") from None

    def read(self, limits: Limits, every_copy: bool = False) -> beam.PTransform:
        # Retrieved objects are capped at max_object_bytes here, and parsed later within
        # the same limits as files.
        return web.ReadDicomweb(
            [s.uri for s in self.stores], self.settings, limits.max_object_bytes
        )

    def describe(self) -> list[str]:
        return web.describe_inputs([s.uri for s in self.stores])


@dataclass(frozen=True)
class DicomwebSink(Sink):
    """STOW-RS into a store's root (``dicomweb+`` prefix optional), 20 instances a request."""

    store: web.StoreUrl
    settings: web.DicomwebSettings

    name = "dicomweb"
    settings_type = web.DicomwebSettings

    @classmethod
    def owns(cls, url: str) -> bool:
        return web.is_dicomweb(url) or url.startswith(("http://", "https://"))

    @classmethod
    def configure(
        cls, url: str, settings: web.DicomwebSettings, dataflow: bool = False
    ) -> "DicomwebSink":
        _check_settings(settings, dataflow, "--output-store-credentials")
        return cls(web.output_store(url), dataclasses.replace(settings, query=None))

    def check(self) -> None:
        web.check_store(self.store.uri, self.settings, empty_ok=True)

    def write(self) -> beam.PTransform:
        return web.WriteDicomweb(self.store.uri, self.settings)

    def describe(self) -> str:
        return self.store.uri
