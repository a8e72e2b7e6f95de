"""Flags that several commands take, and their values checked and loaded.

Each command declares its flags once, as a frozen dataclass (``models.configs``): ``KeyFlags``
and the help lines here are the parts several commands share. The functions below turn the
parsed values into the typed objects a pipeline's config holds, raising ``UsageError`` with
the flag's name before any work starts.
"""

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from models import configs
from models.configs import arg
from pipelines.failures import yaml_error
from pipelines.options import UsageError
from transforms import dicom_io
from transforms.deid import DeidConfig
from transforms.keys import KeySource, KeySourceError
from transforms.pixels import PixelConfig

T = TypeVar("T")


INPUT_HELP = "file, folder, prefix or glob"
OUTPUT_HELP = "output root (local path or gs://)"
DEID_CONFIG_HELP = "YAML with de-identification options (docs/commands/deidentify.md)"


@dataclass(frozen=True, kw_only=True)
class KeyFlags:
    """``--<what>-env`` and ``--<what>-file`` (``nested(KeyFlags, "key-")``): where a key is
    read from, never the key; ``key_source`` checks them."""

    env: str | None = arg(None, "environment variable holding the key")
    file: str | None = arg(None, "file (local or gs://) holding the key")


def parsed(declared: type[T], opts: Any) -> T:
    """A command's declared args from its parsed options (or the args themselves, for
    callers that build them in code: ``dicomflow run``, the demo).

    Raises:
        UsageError: naming a flag whose value is out of range.
    """
    if isinstance(opts, declared):
        return opts
    try:
        return configs.from_namespace(declared, opts)
    except ValueError as e:
        raise UsageError(str(e)) from None


def on_dataflow(beam_options: PipelineOptions) -> bool:
    return "Dataflow" in str(beam_options.view_as(StandardOptions).runner or "")


def key_source(flags: KeyFlags, what: str, dataflow: bool) -> KeySource:
    """A validated key source; the key is read once here to fail before any work."""
    env, file = flags.env, flags.file
    if env is None and file is None:
        raise UsageError(f"{what} is required: --{what}-env VAR or --{what}-file PATH")
    if env is not None and file is not None:
        raise UsageError(f"give only one of --{what}-env and --{what}-file")
    if dataflow and (env is not None or not str(file).startswith("gs://")):
        raise UsageError(f"Dataflow workers read the {what} from --{what}-file gs://... only")
    source = KeySource(env=env, file=dicom_io.normalize_uri(file) if file else None)
    try:
        source.resolve()
    except KeySourceError as e:
        raise UsageError(str(e)) from None
    return source


def load_yaml(flag: str, uri: str, build: Callable[[Any], T]) -> T:
    """The YAML file at ``uri`` (any filesystem Beam knows) built into a config by
    ``build``; every failure is one ``UsageError`` naming ``flag``: unreadable, malformed
    YAML (with line and column), or refused by ``build`` (ValueError, TypeError, KeyError).
    """
    import yaml

    try:
        with FileSystems.open(dicom_io.normalize_uri(uri)) as fh:
            text = fh.read().decode()
    except Exception as e:
        raise UsageError(f"{flag} {uri} cannot be read ({type(e).__name__})") from None
    try:
        return build(yaml.safe_load(text))
    except yaml.YAMLError as e:
        raise yaml_error(flag, uri, e) from None
    except KeyError as e:
        raise UsageError(f"{flag} {uri}: missing {e}") from None
    except (ValueError, TypeError) as e:
        raise UsageError(f"{flag} {uri}: {e}") from None


def load_deid_config(uri: str | None) -> DeidConfig:
    """``--deid-config``: the de-identification options, or the defaults."""
    if uri is None:
        return DeidConfig()
    config = load_yaml("--deid-config", uri, DeidConfig.from_mapping)
    for line in config.warnings():
        print(f"dicomflow: warning: {line}", file=sys.stderr)
    return config


def load_pixel_config(uri: str | None) -> PixelConfig:
    """``--pixel-config``: the pixel settings, or the defaults."""
    if uri is None:
        return PixelConfig()
    return load_yaml("--pixel-config", uri, PixelConfig.from_mapping)


def inputs_and_output(inputs: list[str] | None, output: str | None) -> tuple[list[str], str]:
    """``--input`` (required, repeatable) and ``--output`` (required), normalized; the
    caller checks that the output is not inside an input (``check_output_outside``)."""
    from pipelines.options import require

    uris = [dicom_io.normalize_uri(u) for u in require(inputs, "--input")]
    return uris, dicom_io.normalize_uri(require(output, "--output"))
