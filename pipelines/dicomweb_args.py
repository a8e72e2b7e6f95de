"""The DICOMweb flags every reading command shares, and their checks (no I/O but the probe).

Added to a command's options by ``add_arguments(parser)``; ``settings(opts, inputs, ...)``
checks them against the inputs and returns the ``DicomwebSettings`` the transforms take.
"""

import dataclasses
from collections.abc import Sequence

from pipelines.options import UsageError
from transforms import dicomweb


def add_arguments(parser, sink: bool = False) -> None:
    parser.add_argument(
        "--dicomweb-query",
        help='QIDO-RS study filters for dicomweb+http(s):// inputs, e.g. "ModalitiesInStudy=CR'
        '&StudyDate=20260101-"',
    )
    parser.add_argument(
        "--dicomweb-credentials-env",
        help="variable holding a bearer token or user:password for the DICOMweb store(s)",
    )
    parser.add_argument(
        "--dicomweb-credentials-file",
        help="file (local or gs://) holding a bearer token or user:password",
    )
    parser.add_argument(
        "--dicomweb-max-concurrency",
        type=int,
        default=dicomweb.DicomwebSettings.max_concurrency,
        help="DICOMweb requests in flight at once per worker",
    )
    if sink:
        parser.add_argument(
            "--output-dicomweb",
            help="store de-identified instances here by STOW-RS (dicomweb+https://.../dicom-web)",
        )
        parser.add_argument(
            "--output-dicomweb-credentials-env",
            help="variable holding a bearer token or user:password for the output store",
        )
        parser.add_argument(
            "--output-dicomweb-credentials-file",
            help="file (local or gs://) holding the output store's token or user:password",
        )


def settings(
    opts, inputs: Sequence[str], dataflow: bool, output_url: str | None = None
) -> dicomweb.DicomwebSettings:
    """The checked settings.

    Raises:
        UsageError: for a malformed DICOMweb URL or query, both credential flags, a flag
            that no input uses, or credentials from the environment on Dataflow (workers
            do not share the launcher's environment).
    """
    stores = [u for u in inputs if dicomweb.is_dicomweb(u)]
    result = dicomweb.DicomwebSettings(
        query=opts.dicomweb_query,
        credentials_env=opts.dicomweb_credentials_env,
        credentials_file=opts.dicomweb_credentials_file,
        max_concurrency=opts.dicomweb_max_concurrency,
    )
    try:
        result.check()
        for uri in stores:
            dicomweb.StoreUrl.parse(uri)
        if output_url:
            dicomweb.output_store(output_url)
    except ValueError as e:
        raise UsageError(str(e)) from None
    used = bool(stores)
    given = [
        flag
        for flag, value in (
            ("--dicomweb-query", opts.dicomweb_query),
            ("--dicomweb-credentials-env", opts.dicomweb_credentials_env),
            ("--dicomweb-credentials-file", opts.dicomweb_credentials_file),
        )
        if value
    ]
    if given and not used:
        raise UsageError(f"{', '.join(given)}: for dicomweb+http(s):// inputs only")
    if dataflow and opts.dicomweb_credentials_env:
        raise UsageError(
            "Dataflow workers read DICOMweb credentials from --dicomweb-credentials-file only"
        )
    return result


def output_settings(opts, dataflow: bool, reading: dicomweb.DicomwebSettings):
    """The settings for ``--output-dicomweb``: its own credentials (none given: none, or
    Google's for the Cloud Healthcare API), the rest as for reading.

    Raises:
        UsageError: as ``settings``.
    """
    env = opts.output_dicomweb_credentials_env
    file = opts.output_dicomweb_credentials_file
    if (env or file) and not opts.output_dicomweb:
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
