"""The resource-limit flags every reading command takes (inventory, deidentify, ingest,
score), and the ``limits:`` mapping of run.yaml that turns into them."""

from pipelines.options import UsageError
from transforms.dicom_io import Limits

# flag → (Limits field, type, help)
LIMIT_FLAGS = {
    "--max-inflated-bytes": (
        "max_inflated_bytes",
        int,
        "bytes one deflated dataset, gzip object or compressed archive member may inflate "
        "to (counted while inflating): inflate_limit",
    ),
    "--max-archive-bytes": (
        "max_archive_bytes",
        int,
        "inflated bytes of one compressed archive, all members together: inflate_limit",
    ),
    "--max-decoded-bytes": (
        "max_decoded_bytes",
        int,
        "decoded pixel bytes of the frames one instance decodes at once: too_large_decoded",
    ),
    "--max-frame-bytes": (
        "max_frame_bytes",
        int,
        "decoded bytes of one frame (Rows x Columns x Samples x Bits): too_large_decoded",
    ),
    "--max-frames": ("max_frames", int, "Number of Frames of one instance: too_many_frames"),
    "--max-sequence-depth": (
        "max_sequence_depth",
        int,
        "nesting of sequences in one object: too_deep",
    ),
    "--parse-seconds": (
        "parse_seconds",
        float,
        "CPU seconds the structural check of one object may take: parse_timeout",
    ),
}
DEFAULTS = Limits()


def add_limit_arguments(parser) -> None:
    """Adds the limit flags (``--max-object-bytes`` each command declares itself)."""
    for flag, (name, kind, help_) in LIMIT_FLAGS.items():
        default = getattr(DEFAULTS, name)
        parser.add_argument(flag, type=kind, default=default, help=f"{help_} (default {default})")


def limits_from(opts) -> Limits:
    """The Limits the parsed flags give.

    Raises:
        UsageError: naming the flag of a value that is not positive.
    """
    values = {"max_object_bytes": opts.max_object_bytes}
    for name, _, _ in LIMIT_FLAGS.values():
        values[name] = getattr(opts, name)
    flags = {"max_object_bytes": "--max-object-bytes"} | {
        name: flag for flag, (name, _, _) in LIMIT_FLAGS.items()
    }
    for name, value in values.items():
        if value is None or value <= 0:
            raise UsageError(f"{flags[name]} must be positive")
    return Limits(**values)


def limit_args(mapping: dict | None) -> list[str]:
    """run.yaml's ``limits:`` (keys as the Limits fields) → command-line flags.

    Raises:
        ValueError: for an unknown key.
    """
    by_name = {name: flag for flag, (name, _, _) in LIMIT_FLAGS.items()}
    by_name["max_object_bytes"] = "--max-object-bytes"
    args = []
    for key, value in (mapping or {}).items():
        if key not in by_name:
            raise ValueError(f"limits: unknown key {key!r} (known: {sorted(by_name)})")
        args.append(f"{by_name[key]}={value}")
    return args
