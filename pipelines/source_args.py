"""The source and sink settings every reading command shares, and their checks.

A command's declared args hold every registered source's settings as
``nested(SourceSettings)`` (flags ``--dicomweb-*``, ...; which exist is the registry's
business, ``transforms.sources.registry``) and, for deidentify and score, the output store
as ``nested(OutputStore, "output-")``. Here they are checked against the inputs
(``UsageError``, one line, before any work).
"""

from collections.abc import Sequence
from dataclasses import dataclass

from models.configs import arg
from pipelines.failures import UsageError
from transforms.sources import registry
from transforms.sources.base import Sink
from transforms.sources.registry import SourceSettings


@dataclass(frozen=True, kw_only=True)
class OutputStore:
    """``--output-store`` and its own credentials (deidentify; score's DICOM SEG)."""

    store: str | None = arg(
        None,
        "store what is written in this DICOM store (dicomweb+https://.../dicom-web, ...): "
        "deidentify's instances instead of files under deid_dicom/, score's SEGs besides seg/",
    )
    store_credentials_env: str | None = arg(
        None, "variable holding a bearer token or user:password for the output store"
    )
    store_credentials_file: str | None = arg(
        None, "file (local or gs://) holding the output store's token or user:password"
    )


def settings(given: SourceSettings, inputs: Sequence[str], dataflow: bool) -> SourceSettings:
    """The checked settings of every source (URLs parsed, no I/O).

    Raises:
        UsageError: for a malformed URL or setting, a source's flag given without one of
            its inputs, or credentials that Dataflow workers cannot read.
    """
    try:
        registry.configure_inputs(inputs, given, dataflow)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return given


def sink(output: OutputStore, given: SourceSettings, dataflow: bool) -> Sink | None:
    """The output store (``--output-store``), or None to write files.

    Raises:
        UsageError: as ``settings``.
    """
    env, file = output.store_credentials_env, output.store_credentials_file
    if not output.store:
        if env or file:
            raise UsageError("--output-store-credentials-*: for --output-store only")
        return None
    if env and file:
        raise UsageError("give only one of --output-store-credentials-env and -file")
    try:
        return registry.configure_sink(output.store, given, env, file, dataflow)
    except ValueError as e:
        raise UsageError(f"--output-store: {e}") from None


def check_sink(store: Sink) -> None:
    """Probes the output store before any work (UsageError naming it if unreachable)."""
    try:
        store.check()
    except ValueError as e:
        raise UsageError(f"--output-store: {e}") from None


def check_inputs(inputs: Sequence[str], given: SourceSettings) -> None:
    """Every input exists or answers (files matched, stores probed) before any work.

    Raises:
        UsageError: naming the input (a store by its root) that matches nothing or
            cannot be reached.
    """
    try:
        registry.check_inputs(registry.configure_inputs(inputs, given))
    except ValueError as e:
        raise UsageError(str(e)) from None
