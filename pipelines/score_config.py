"""`dicomflow score`'s flags and config: what to score, with which model, how batched.

``configure`` checks the flags, resolves the model (pinned for the run) and, for raw DICOM,
the key and pixel settings, before any work starts.
"""

import posixpath
import re
from dataclasses import dataclass, field

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, TestOptions

from models import configs
from models.configs import arg, nested
from models.inference import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_BYTES
from models.layout import TFRECORD_SHARDS, TFRECORD_SUFFIX, TFRECORDS_DIR, new_run_id
from models.tasks import SEGMENTATION, TASKS, ModelInfo
from pipelines import flags, source_args
from pipelines.options import (
    CommandOptions,
    UsageError,
    check_inputs_exist,
    check_output_outside,
    require,
)
from transforms import dicom_io
from transforms.deid import DeidConfig
from transforms.dicom_seg import BINARY, SEG_TYPES
from transforms.keys import KeySource
from transforms.pixels import PixelConfig
from transforms.sources import registry
from transforms.sources.base import Sink
from transforms.sources.registry import SourceSettings
from transforms.split import ALL_SPLITS

DICOM, TFRECORD_FORMAT, AUTO = "dicom", "tfrecords", "auto"
INPUT_FORMATS = (AUTO, DICOM, TFRECORD_FORMAT)
TFRECORD_SUFFIXES = (TFRECORD_SUFFIX, ".tfrecord")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True, kw_only=True)
class ScoreArgs:
    """The flags of ``dicomflow score``, declared once (``models.configs``); ``configure``
    checks them into a ``ScoreConfig``."""

    input: list[str] = arg(
        [],
        "DICOM (files, folders, archives, globs), an ingest output root, or TFRecord files; "
        "may be repeated",
    )
    input_format: str = arg(
        AUTO,
        "auto: TFRecords for an ingest root or *.tfrecord.gz, else DICOM",
        choices=INPUT_FORMATS,
    )
    splits: str | None = arg(
        None, f"splits of an ingest root, comma-separated (default all: {','.join(ALL_SPLITS)})"
    )
    model: str | None = arg(None, "model dir, its latest pointer, or a version")
    output: str | None = arg(None, flags.OUTPUT_HELP)
    run_id: str | None = arg(None, "names the scores partition (default: new)")
    key: flags.KeyFlags = nested(flags.KeyFlags, "key-")
    deid_config: str | None = arg(None, flags.DEID_CONFIG_HELP)
    pixel_config: str | None = arg(
        None, "YAML pixel settings (default: the model's, from model.json)"
    )
    batch_size: int = arg(DEFAULT_BATCH_SIZE, "images per batch")
    max_batch_bytes: int = arg(
        DEFAULT_MAX_BATCH_BYTES, "input bytes per batch (bounds accelerator memory)"
    )
    share_model_across_processes: bool = arg(
        False, "one model per machine instead of one per worker process", switch=True
    )
    explain_top: int = arg(0, "Grad-CAM PNGs for the K top scores (classification)")
    task: str | None = arg(
        None,
        "the model's task, checked against its model.json (default: whatever it says)",
        choices=TASKS,
    )
    write_seg: bool = arg(
        False,
        "segmentation, raw DICOM input: one DICOM SEG per scored instance under "
        "seg/model_version=V/run_id=R/",
        switch=True,
    )
    seg_type: str | None = arg(
        None,
        "binary (the most probable class; default) or fractional (probabilities)",
        choices=SEG_TYPES,
    )
    limits: dicom_io.Limits = nested(dicom_io.Limits)
    sources: SourceSettings = nested(SourceSettings)
    output_store: source_args.OutputStore = nested(source_args.OutputStore, "output-")


class ScoreOptions(CommandOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        configs.add_arguments(parser, ScoreArgs)


def is_ingest_root(uri: str) -> bool:
    """Whether ``uri`` is an ingest output: ``tfrecords/<split>/part-*.tfrecord.gz`` below."""
    if dicom_io.has_glob(uri) or not registry.in_object_storage(uri):
        return False
    pattern = FileSystems.join(uri.rstrip("/"), TFRECORDS_DIR, "*", TFRECORD_SHARDS)
    try:
        return bool(FileSystems.match([pattern], limits=[1])[0].metadata_list)
    except Exception as e:
        raise UsageError(f"--input {uri} cannot be listed ({type(e).__name__})") from None


def is_tfrecord_uri(uri: str) -> bool:
    return uri.rstrip("/").endswith(TFRECORD_SUFFIXES)


def resolve_format(inputs: list[str], given: str) -> str:
    """The input format: as given, or (auto) from what the inputs are; never mixed."""
    if given != AUTO:
        return given
    kinds = {TFRECORD_FORMAT if is_tfrecord_uri(u) or is_ingest_root(u) else DICOM for u in inputs}
    if len(kinds) > 1:
        raise UsageError(
            "--input mixes TFRecords and DICOM; score them in separate runs (or set --input-format)"
        )
    return kinds.pop()


def tfrecord_patterns(inputs: list[str], splits: list[str]) -> list[str]:
    """Shard patterns: the chosen splits of each ingest root, other inputs as given."""
    patterns = []
    for uri in inputs:
        if is_ingest_root(uri):
            root = uri.rstrip("/")
            patterns += [FileSystems.join(root, TFRECORDS_DIR, s, TFRECORD_SHARDS) for s in splits]
        else:
            patterns.append(uri)
    return patterns


def parse_splits(text: str | None) -> list[str]:
    if not text:
        return list(ALL_SPLITS)
    splits = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(splits) - set(ALL_SPLITS))
    if unknown or not splits:
        raise UsageError(f"--splits takes {', '.join(ALL_SPLITS)}; got {text!r}")
    return splits


def resolve_model_info(uri: str) -> tuple[str, ModelInfo]:
    """``--model`` → (the version folder, its ``model.json``), pinned for the whole run."""
    from models import export

    try:
        version_dir = export.resolve_model(uri)
        info = export.read_json(FileSystems.join(version_dir, export.MODEL_JSON))
        return version_dir, ModelInfo.from_json(info)
    except ValueError as e:
        raise UsageError(f"--model: {e}") from None
    except Exception as e:
        raise UsageError(f"--model {uri} cannot be read ({type(e).__name__})") from None


def pixel_config(uri: str | None, info: ModelInfo) -> PixelConfig:
    """The pixel settings for raw DICOM: ``--pixel-config``, else the model's own (ingest's
    settings recorded in ``model.json``), else the defaults; checked against the model."""
    if uri is not None:
        pixels, origin = flags.load_pixel_config(uri), f"from --pixel-config {uri}"
    elif info.pixels:
        pixels, origin = PixelConfig.from_mapping(info.pixels), "from model.json"
    else:
        pixels, origin = PixelConfig(), "the defaults: model.json records none"
    height, width, channels = info.image_shape
    if (pixels.size, pixels.size, pixels.channels) != (height, width, channels):
        raise UsageError(
            f"the pixel settings ({origin}) make {pixels.size}x{pixels.size}x{pixels.channels}"
            f" images but the model takes {height}x{width}x{channels}; give --pixel-config"
        )
    return pixels


def check_task(args: ScoreArgs, info: ModelInfo, fmt: str) -> str | None:
    """The flags that depend on the model's task; returns the SEG type to write, or None.

    Raises:
        UsageError: ``--task`` other than the model's, a classifier's flag for a
            segmentation model or the reverse, or ``--write-seg`` without raw DICOM.
    """
    if args.task is not None and args.task != info.task:
        raise UsageError(f"--task {args.task}: the model is a {info.task} model")
    if info.task == SEGMENTATION:
        if args.explain_top:
            raise UsageError("--explain-top is for classification models (Grad-CAM)")
    elif args.write_seg or args.seg_type:
        raise UsageError("--write-seg and --seg-type are for segmentation models")
    if args.seg_type and not args.write_seg:
        raise UsageError("--seg-type needs --write-seg")
    if not args.write_seg:
        return None
    if fmt != DICOM:
        raise UsageError(
            "--write-seg needs raw DICOM input: a SEG references the de-identified instance, "
            "which TFRecords do not carry"
        )
    return args.seg_type or BINARY


@dataclass(frozen=True, kw_only=True)
class RawDicom:
    """Scoring raw DICOM: the key, de-identification options and pixel settings (ingest's)."""

    key: KeySource
    deid: DeidConfig = field(default_factory=DeidConfig)
    pixels: PixelConfig = field(default_factory=PixelConfig)
    limits: dicom_io.Limits = field(default_factory=dicom_io.Limits)
    sources: SourceSettings = field(default_factory=SourceSettings)


@dataclass(frozen=True, kw_only=True)
class ScoreConfig:
    """Everything a score pipeline is built from, checked (``configure``).

    ``dicom`` is given for raw DICOM input, and ``patterns`` (TFRecord shards) and
    ``splits`` for TFRecord input; never both.
    """

    inputs: tuple[str, ...]
    output: str
    model_uri: str
    version_dir: str
    model_info: ModelInfo  # the version's model.json
    run_id: str
    batch_size: int  # images per batch
    max_batch_bytes: int  # input bytes per batch
    dicom: RawDicom | None = None
    patterns: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()
    share_model_across_processes: bool = False
    explain_top: int = 0
    seg_type: str | None = None  # write a DICOM SEG of this type per instance, else None
    output_store: Sink | None = None  # a store the SEGs also go to (--output-store)

    @property
    def version(self) -> str:
        return posixpath.basename(self.version_dir.rstrip("/"))

    @property
    def input_format(self) -> str:
        return DICOM if self.dicom is not None else TFRECORD_FORMAT


def configure(opts: ScoreOptions | ScoreArgs, beam_options: PipelineOptions) -> ScoreConfig:
    """Checks the flags, the model and (raw DICOM) the key; returns the config or raises
    UsageError."""
    args = flags.parsed(ScoreArgs, opts)
    inputs, output = flags.inputs_and_output(args.input, args.output)
    model_uri = dicom_io.normalize_uri(require(args.model, "--model"))
    check_output_outside(output, inputs)
    run_id = args.run_id or new_run_id()
    if not _RUN_ID.match(run_id):
        raise UsageError("--run-id takes letters, digits, '.', '_' and '-' (128 at most)")
    if args.batch_size < 1 or args.explain_top < 0:
        raise UsageError("--batch-size must be >= 1, --explain-top >= 0")
    dataflow = flags.on_dataflow(beam_options)
    if dataflow and not model_uri.startswith("gs://"):
        raise UsageError("Dataflow workers read the model from --model gs://... only")
    sources = source_args.settings(args.sources, inputs, dataflow)
    # Before the model is read (TensorFlow: seconds, log lines): an input that matches
    # nothing is one line at once. A dry run only builds the job: its inputs may not exist.
    if not beam_options.view_as(TestOptions).dry_run:
        check_inputs_exist(inputs, sources)
    fmt = resolve_format(inputs, args.input_format)
    if fmt == TFRECORD_FORMAT:
        given = [
            flag
            for flag, value in (
                ("--key-env", args.key.env),
                ("--key-file", args.key.file),
                ("--deid-config", args.deid_config),
                ("--pixel-config", args.pixel_config),
            )
            if value
        ]
        if given:
            names = ", ".join(given)
            raise UsageError(f"{names}: for raw DICOM input only (these inputs are TFRecords)")
    elif args.splits:
        raise UsageError("--splits selects splits of an ingest output; these inputs are DICOM")
    version_dir, info = resolve_model_info(model_uri)
    seg_type = check_task(args, info, fmt)
    sink = source_args.sink(args.output_store, sources, dataflow)
    if sink is not None and seg_type is None:
        raise UsageError("--output-store stores the DICOM SEGs of --write-seg; give it too")
    shape = info.image_shape
    image_bytes = shape[0] * shape[1] * shape[2]
    if args.max_batch_bytes < image_bytes:
        raise UsageError(f"--max-batch-bytes must hold one image ({image_bytes} bytes)")
    dicom, patterns, splits = None, [], []
    if fmt == DICOM:
        dicom = RawDicom(
            key=flags.key_source(args.key, "key", dataflow),
            deid=flags.load_deid_config(args.deid_config),
            pixels=pixel_config(args.pixel_config, info),
            limits=args.limits,
            sources=sources,
        )
    else:
        splits = parse_splits(args.splits)
        patterns = tfrecord_patterns(inputs, splits)
    return ScoreConfig(
        inputs=tuple(inputs),
        output=output,
        model_uri=model_uri,
        version_dir=version_dir,
        model_info=info,
        run_id=run_id,
        batch_size=args.batch_size,
        max_batch_bytes=args.max_batch_bytes,
        dicom=dicom,
        patterns=tuple(patterns),
        splits=tuple(splits),
        share_model_across_processes=args.share_model_across_processes,
        explain_top=args.explain_top,
        seg_type=seg_type,
        output_store=sink,
    )
