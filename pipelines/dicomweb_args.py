"""The DICOMweb flags every reading command shares, and their checks (no I/O but the probe).

A command's declared args hold the reading flags as ``nested(DicomwebSettings, "dicomweb-")``
and, for deidentify, the STOW-RS output as ``nested(OutputStore, "output-")``;
``settings(...)`` checks them against the inputs and returns the ``DicomwebSettings`` the
transforms take.
"""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from models.configs import arg
from pipelines.failures import UsageError
from transforms import dicomweb


@dataclass(frozen=True, kw_only=True)
class OutputStore:
    """``--output-dicomweb`` and its own credentials (deidentify only; ``nested(OutputStore,
    "output-")``)."""

    dicomweb: str | None = arg(
        None,
        "store de-identified instances here by STOW-RS (dicomweb+https://.../dicom-web)",
    )
    dicomweb_credentials_env: str | None = arg(
        None, "variable holding a bearer token or user:password for the output store"
    )
    dicomweb_credentials_file: str | None = arg(
        None, "file (local or gs://) holding the output store's token or user:password"
    )


def settings(
    given: dicomweb.DicomwebSettings,
    inputs: Sequence[str],
    dataflow: bool,
    output_url: str | None = None,
) -> dicomweb.DicomwebSettings:
    """The checked settings (``given``: the parsed ``--dicomweb-*`` flags).

    Raises:
        UsageError: for a malformed DICOMweb URL or query, both credential flags, a flag
            that no input uses, or credentials from the environment on Dataflow (workers
            do not share the launcher's environment).
    """
    stores = [u for u in inputs if dicomweb.is_dicomweb(u)]
    try:
        given.check()
        for uri in stores:
            dicomweb.StoreUrl.parse(uri)
        if output_url:
            dicomweb.output_store(output_url)
    except ValueError as e:
        raise UsageError(str(e)) from None
    used = bool(stores)
    named = [
        flag
        for flag, value in (
            ("--dicomweb-query", given.query),
            ("--dicomweb-credentials-env", given.credentials_env),
            ("--dicomweb-credentials-file", given.credentials_file),
        )
        if value
    ]
    if named and not used:
        raise UsageError(f"{', '.join(named)}: for dicomweb+http(s):// inputs only")
    if dataflow and given.credentials_env:
        raise UsageError(
            "Dataflow workers read DICOMweb credentials from --dicomweb-credentials-file only"
        )
    return given


def output_settings(
    store: OutputStore, dataflow: bool, reading: dicomweb.DicomwebSettings
) -> dicomweb.DicomwebSettings:
    """The settings for ``--output-dicomweb``: its own credentials (none given: none, or
    Google's for the Cloud Healthcare API), the rest as for reading.

    Raises:
        UsageError: as ``settings``.
    """
    env, file = store.dicomweb_credentials_env, store.dicomweb_credentials_file
    if (env or file) and not store.dicomweb:
        raise UsageError("--output-dicomweb-credentials-*: for --output-dicomweb only")
    if env and file:
        raise UsageError("give only one of --output-dicomweb-credentials-env and -file")
    if dataflow and env:
        raise UsageError(
            "Dataflow workers read DICOMweb credentials from --output-dicomweb-credentials-file"
        )
    return dataclasses.replace(reading, credentials_env=env, credentials_file=file)


def check_output(url: str, settings: dicomweb.DicomwebSettings) -> None:
    """Probes the output store (a search; an empty store is fine) before any work.

    Raises:
        UsageError: naming the store's root when it cannot be reached or refuses us.
    """
    try:
        dicomweb.check_store(dicomweb.output_store(url).uri, settings, empty_ok=True)
    except ValueError as e:
        raise UsageError(f"--output-dicomweb: {e}") from None


def check_inputs(inputs: Sequence[str], settings: dicomweb.DicomwebSettings) -> None:
    """Probes every DICOMweb input (one search each) before any work.

    Raises:
        UsageError: naming the store's root when it cannot be reached or matches nothing.
    """
    for uri in dict.fromkeys(u for u in inputs if dicomweb.is_dicomweb(u)):
        try:
            dicomweb.check_store(uri, settings)
        except ValueError as e:
            raise UsageError(str(e)) from None
