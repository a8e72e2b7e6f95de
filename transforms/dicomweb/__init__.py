"""DICOMweb stores as inputs and outputs: Cloud Healthcare API, Orthanc, dcm4chee, ...

``ReadDicomweb`` searches (QIDO-RS) and retrieves (WADO-RS) instances as the same
``SourceObject`` stream the file reader yields; ``WriteDicomweb`` stores de-identified
instances (STOW-RS). HTTP goes through ``dicomweb-client``; see ``client`` for auth and
retries, ``urls`` for the URL forms, ``listing`` for incremental planning.
"""

from transforms.dicomweb.client import (
    CredentialsError,
    DicomwebSettings,
    RequestFailed,
    call_with_retries,
    make_client,
    read_credentials,
)
from transforms.dicomweb.listing import check_store, list_instances
from transforms.dicomweb.sink import WriteDicomweb, output_store
from transforms.dicomweb.source import ReadDicomweb, RetrieveFn
from transforms.dicomweb.urls import StoreUrl, describe_inputs, is_dicomweb

__all__ = [
    "CredentialsError",
    "DicomwebSettings",
    "ReadDicomweb",
    "RequestFailed",
    "RetrieveFn",
    "StoreUrl",
    "WriteDicomweb",
    "call_with_retries",
    "check_store",
    "describe_inputs",
    "is_dicomweb",
    "list_instances",
    "make_client",
    "output_store",
    "read_credentials",
]
