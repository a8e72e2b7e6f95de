"""The thin Beam shell around de-identification: a composite and its DoFn."""

from collections.abc import Iterator
from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from models.layout import new_run_id
from transforms.composite import NamedOutputs
from transforms.deadletter import (
    DEAD_LETTER,
    STAGE_DEIDENTIFY,
    STAGE_PARSE,
    DeadLetter,
    DeadLetterFn,
    at_stage,
)
from transforms.deid.config import DeidConfig
from transforms.deid.engine import Deidentifier
from transforms.deid.objects import DeidResult, deidentify_dataset
from transforms.deid.ocr import share_of_cores, usable_cores
from transforms.deid.profile import Profile
from transforms.deid.redact import warm_ocr
from transforms.dicom_io import METRICS_NAMESPACE, Limits, SourceObject, parse_dataset
from transforms.keys import KeySource, fingerprint
from transforms.manifest import code_version, utc_now

LINKAGE = "linkage"
# Runners that run the workers on this machine (Beam's DirectRunner and what it picks).
LOCAL_RUNNERS = ("DirectRunner", "SwitchingDirectRunner", "FnApiRunner", "BundleBasedDirectRunner")


def ocr_threads(options: PipelineOptions) -> int:
    """onnxruntime threads per worker for burned-in text detection, from its cores.

    A local run (DirectRunner) runs ``--direct_num_workers`` workers at once on this
    machine (0: one per core), in threads or processes: each gets its share of this
    machine's cores (all of them for the default single worker). Other runners start one
    SDK process per core of each worker machine (Dataflow's default): one thread each.
    """
    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) or runner is None else type(runner).__name__
    if name not in (None, *LOCAL_RUNNERS):
        return 1
    cores = usable_cores()
    workers = options.view_as(DirectOptions).direct_num_workers
    return share_of_cores(cores, workers if workers > 0 else cores)


class Deidentified(NamedTuple):
    """What ``Deidentify`` gives: results, dead letters, and (if asked for) linkage rows."""

    results: beam.PCollection[tuple[str, str | None, DeidResult]]
    dead_letters: beam.PCollection[DeadLetter]
    linkage: beam.PCollection[tuple[tuple[str, str], ...]] | None


class Deidentify(NamedOutputs):
    """SourceObjects → DeidResults, with dead-letter and (optional) linkage outputs.

    The key is resolved on each worker from ``key_source``; it never travels in the graph.

    Returns:
        ``Deidentified(results, dead_letters, linkage)``; ``linkage`` is None unless asked for.
    """

    def __init__(
        self,
        config: DeidConfig,
        key_source: KeySource,
        linkage: bool = False,
        limits: Limits | None = None,
    ):
        super().__init__()
        self._config = config
        self._key_source = key_source
        self._linkage = linkage
        self._limits = Limits.of(limits)

    def expand(self, objects: beam.PCollection[SourceObject]) -> Deidentified:
        threads = ocr_threads(objects.pipeline.options)
        outputs = objects | "Deidentify" >> beam.ParDo(
            DeidentifyFn(self._config, self._key_source, self._linkage, self._limits, threads)
        ).with_outputs(DEAD_LETTER, LINKAGE, main="results")
        linkage = outputs[LINKAGE] if self._linkage else None
        return Deidentified(outputs.results, outputs[DEAD_LETTER], linkage)


class DeidentifyFn(DeadLetterFn):
    """SourceObject → ``(source, member, DeidResult)`` (and its linkage row, if asked for),
    or a ``parse`` or ``deidentify`` dead letter (parse within ``limits``)."""

    stage = STAGE_PARSE
    failed_counter = "deid_dead_letters"

    def __init__(
        self,
        config: DeidConfig,
        key_source: KeySource,
        linkage: bool,
        limits: Limits | None = None,
        ocr_threads: int = 1,
    ):
        super().__init__()
        self._config = config
        self._key_source = key_source
        self._linkage = linkage
        self._limits = Limits.of(limits)
        self._ocr_threads = ocr_threads

    def setup(self):
        # Built once per worker: the table, the resolved options, the key and the OCR.
        self._engine = Deidentifier(Profile.load(), self._config, self._key_source.resolve())
        warm_ocr(self._config, self._ocr_threads)
        self._done = Metrics.counter(METRICS_NAMESPACE, "deidentified")

    def work(self, obj: SourceObject) -> Iterator:
        with at_stage(STAGE_PARSE):
            ds = parse_dataset(obj.data, self._limits)
        with at_stage(STAGE_DEIDENTIFY):
            result, link = deidentify_dataset(ds, self._engine)
        self._done.inc()
        yield (obj.source, obj.member, result)
        if self._linkage:
            yield beam.pvalue.TaggedOutput(LINKAGE, tuple(sorted(link.items())))


def deid_header(
    pipeline: str, run_id: str | None, inputs: list[str], key: KeySource, config: DeidConfig
) -> dict:
    """The manifest facts every de-identifying pipeline records (the key's fingerprint only).
    ``inputs``: as the sources describe them (``transforms.sources.registry.describe_uris``:
    a store by its root, no UIDs)."""
    return {
        "pipeline": pipeline,
        "run_id": run_id or new_run_id(),
        "code_version": code_version(),
        "started_at": utc_now(),
        "inputs": list(inputs),
        "key_fingerprint": fingerprint(key.resolve()),
        "deid_profile": Profile.load().standard,
        "deid_options": config.describe(),
    }
