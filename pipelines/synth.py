"""`dicomflow synth`: write a synthetic PACS export, deterministic for a seed, as a Beam job.

A Beam pipeline so that a 100k-file corpus can be written straight into ``gs://`` from
Dataflow workers: each patient is generated and written by whichever worker gets it.
"""

import csv
import io
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from models import configs
from models.configs import arg
from pipelines import flags
from pipelines.options import CommandOptions, UsageError, new_pipeline, parse_options, require
from transforms import testing as synth
from transforms.dicom_io import METRICS_NAMESPACE, normalize_uri
from transforms.storage import write_bytes

PHI_NAME = "phi.json"
TEXT_BOXES = "text_boxes"  # phi.json's burned-in text boxes (not a list of strings)
LABELS_NAME = "labels.csv"
LABEL_COLUMNS = ("AccessionNumber", "SOPInstanceUID", "label")
_PHI = "phi"
_LABELS = "labels"


@dataclass(frozen=True, kw_only=True)
class SynthArgs:
    """The flags of ``dicomflow synth``, declared once (``models.configs``)."""

    output: str | None = arg(None, "corpus root (local path or gs://)")
    patients: int | None = arg(None, "number of patients")
    seed: int = arg(0, "same seed, same bytes")
    positive_rate: float = arg(0.2, "share of studies that carry a lesion (label 1)")
    difficulty: str = arg(
        synth.DIFFICULTY_NAME,
        "lesion task: easy, standard, hard or ske (signal known exactly on white "
        "noise), then contrast=, size=, noise= multipliers, e.g. 'ske,contrast=1.5'",
    )
    masks: bool = arg(
        False,
        "also deliver the lesions as segmentation labels: a DICOM SEG per image with a "
        "lesion, an RTSTRUCT per series for every other positive CT and MR study",
        switch=True,
    )


class SynthOptions(CommandOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        configs.add_arguments(parser, SynthArgs)


class SynthFn(beam.DoFn):
    """Generates one corpus part, writes its files, and passes its PHI and labels on."""

    def __init__(self, output: str):
        self._output = output
        self._files = Metrics.counter(METRICS_NAMESPACE, "synth_files_written")
        self._bytes = Metrics.counter(METRICS_NAMESPACE, "synth_bytes_written")

    def process(self, part: synth.CorpusPart):
        for file in part.files:
            # Overwrites on a retry or re-run: same seed, same name, same bytes.
            write_bytes(FileSystems.join(self._output, file.path), file.data)
            self._files.inc()
            self._bytes.inc(len(file.data))
        # Text boxes travel as JSON strings so that they merge like every other category.
        boxes = [json.dumps(b, sort_keys=True) for b in part.text_boxes]
        yield beam.pvalue.TaggedOutput(_PHI, {**part.phi, TEXT_BOXES: boxes} if boxes else part.phi)
        for row in part.labels:
            yield beam.pvalue.TaggedOutput(_LABELS, row)


def merge_phi(parts: Iterable[dict[str, list[str]]]) -> dict[str, list[str]]:
    merged: dict[str, set[str]] = {}
    for phi in parts:
        for category, values in phi.items():
            merged.setdefault(category, set()).update(values)
    return {k: sorted(v) for k, v in sorted(merged.items())}


def write_phi(phi: dict[str, list[str]], output: str) -> None:
    """phi.json: category → planted values; ``text_boxes`` → one object per burned-in line
    (file, member, sop_instance_uid, frame, box, text, phi)."""
    phi = dict(phi)
    if TEXT_BOXES in phi:
        phi[TEXT_BOXES] = [json.loads(b) for b in phi[TEXT_BOXES]]
    data = json.dumps(phi, indent=1, sort_keys=True).encode() + b"\n"
    write_bytes(FileSystems.join(output, PHI_NAME), data, "application/json")


def write_labels(rows: list[dict[str, str]], output: str) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=LABEL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: (r["AccessionNumber"], r["SOPInstanceUID"])))
    write_bytes(FileSystems.join(output, LABELS_NAME), text.getvalue().encode(), "text/csv")


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    """A synthetic corpus: where, how many patients, its seed, share of positives and how
    hard its lesion task is."""

    output: str
    patients: int
    seed: int = 0
    positive_rate: float = 0.2
    difficulty: synth.Difficulty = synth.DEFAULT_DIFFICULTY
    masks: bool = False

    def __post_init__(self):
        if self.patients < 1:
            raise UsageError("--patients must be at least 1")
        if not 0.0 <= self.positive_rate <= 1.0:
            raise UsageError("--positive-rate must be between 0 and 1")
        if self.seed < 0:
            raise UsageError("--seed must be 0 or more")


def configure(opts: SynthOptions | SynthArgs, beam_options: PipelineOptions) -> SynthConfig:
    """Checks the flags (no I/O); returns the config or raises UsageError."""
    args = flags.parsed(SynthArgs, opts)
    output = normalize_uri(require(args.output, "--output"))
    patients = require(args.patients, "--patients")
    try:
        difficulty = synth.Difficulty.parse(args.difficulty)
    except ValueError as e:
        raise UsageError(f"--difficulty: {e}") from None
    return SynthConfig(
        output=output,
        patients=patients,
        seed=args.seed,
        positive_rate=args.positive_rate,
        difficulty=difficulty,
        masks=args.masks,
    )


def build_pipeline(pipeline: beam.Pipeline, config: SynthConfig) -> beam.Pipeline:
    """Adds the synth graph to ``pipeline`` (not run) and returns it."""
    output, seed, rate = config.output, config.seed, config.positive_rate
    p = pipeline
    patient_parts = (
        p
        | "PatientIndices" >> beam.Create(range(config.patients))
        | "Spread" >> beam.Reshuffle()
        | "SynthPatients"
        >> beam.Map(synth.synth_patient, seed, rate, config.difficulty, config.masks)
    )
    extras = p | "Seed" >> beam.Create([seed]) | "SynthExtras" >> beam.Map(synth.synth_extras)
    written = (
        (patient_parts, extras)
        | "AllParts" >> beam.Flatten()
        | "WriteFiles" >> beam.ParDo(SynthFn(output)).with_outputs(_PHI, _LABELS, main="files")
    )
    _ = (
        written[_PHI]
        | "MergePhi" >> beam.CombineGlobally(merge_phi)
        | "WritePhi" >> beam.Map(write_phi, output)
    )
    _ = (
        written[_LABELS]
        | "CollectLabels" >> beam.combiners.ToList()
        | "WriteLabels" >> beam.Map(write_labels, output)
    )
    return p


def synthesize(config: SynthConfig, beam_options: PipelineOptions) -> None:
    """Writes the corpus (an output that already holds one is refused)."""
    pipeline = build_pipeline(new_pipeline(beam_options), config)
    existing = FileSystems.join(config.output, "export", "**")
    found = FileSystems.match([existing], limits=[100])[0].metadata_list
    if any(not m.path.endswith("/") for m in found):  # folder placeholders do not count
        # Mixing two corpora would make phi.json and labels.csv describe only one of them.
        raise UsageError(f"--output {config.output} already holds a corpus; choose an empty one")
    pipeline.run().wait_until_finish()


def summary(config: SynthConfig) -> str:
    """The one line a finished synth prints."""
    output, difficulty = config.output, config.difficulty
    ideal = f", ideal observer AUC {difficulty.ideal_auc():.3f}" if difficulty.mode == "ske" else ""
    masks = ", with SEG and RTSTRUCT labels" if config.masks else ""
    return (
        f"synth: {config.patients} patients (seed {config.seed}, difficulty {difficulty}{ideal}"
        f"{masks}) "
        f"→ {output}/export, {output}/{LABELS_NAME}, {output}/{PHI_NAME}"
    )


def run(argv: Sequence[str]) -> int:
    opts, beam_options = parse_options("dicomflow synth", argv, SynthOptions)
    config = configure(opts, beam_options)
    synthesize(config, beam_options)
    print(summary(config), file=sys.stderr)
    return 0
