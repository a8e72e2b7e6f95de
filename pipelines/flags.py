"""Flags that several commands take, declared once, and their values checked and loaded.

Each ``add_*`` function declares flags on a command's parser (``_add_argparse_args``);
the functions below them turn the parsed values into the typed objects a pipeline's
config holds, raising ``UsageError`` with the flag's name before any work starts.
"""

import argparse
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines.failures import yaml_error
from pipelines.options import UsageError
from transforms import dicom_io
from transforms.deid import DeidConfig
from transforms.keys import KeySource, KeySourceError
from transforms.pixels import PixelConfig

T = TypeVar("T")


def add_inputs(parser: argparse.ArgumentParser, help: str = "file, folder, prefix or glob"):
    parser.add_argument("--input", action="append", help=help)


def add_output(
    parser: argparse.ArgumentParser, help: str = "output root (local path or gs://)"
) -> None:
    parser.add_argument("--output", help=help)


def add_key(parser: argparse.ArgumentParser, what: str = "key", noun: str = "secret key"):
    """``--<what>-env`` and ``--<what>-file``: where a key is read from (never the key)."""
    parser.add_argument(f"--{what}-env", help=f"environment variable holding the {noun}")
    parser.add_argument(f"--{what}-file", help=f"file (local or gs://) holding the {noun}")


def add_deid_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--deid-config", help="YAML with de-identification options (docs/commands/deidentify.md)"
    )


def add_pixel_config(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--pixel-config", help=help)


def add_max_object_bytes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-object-bytes",
        type=int,
        default=dicom_io.DEFAULT_MAX_OBJECT_BYTES,
        help="objects and archive members above this size get a too_large error row",
    )


def add_limits(parser: argparse.ArgumentParser) -> None:
    """``--max-object-bytes`` and the other resource limits (``pipelines.limits``)."""
    from pipelines.limits import add_limit_arguments

    add_max_object_bytes(parser)
    add_limit_arguments(parser)


def limits(opts: PipelineOptions) -> dicom_io.Limits:
    """The Limits the parsed limit flags give (UsageError naming a flag that is not
    positive)."""
    from pipelines.limits import limits_from

    return limits_from(opts)


def on_dataflow(beam_options: PipelineOptions) -> bool:
    return "Dataflow" in str(beam_options.view_as(StandardOptions).runner or "")


def key_source(env: str | None, file: str | None, what: str, dataflow: bool) -> KeySource:
    """A validated key source; the key is read once here to fail before any work."""
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
