"""The thin Beam shell around de-identification: a composite and its DoFn."""

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms.deadletter import (
    DEAD_LETTER,
    STAGE_DEIDENTIFY,
    STAGE_PARSE,
    DeadLetter,
    StageError,
    unexpected,
)
from transforms.deid.config import DeidConfig
from transforms.deid.engine import Deidentifier
from transforms.deid.objects import deidentify_dataset
from transforms.deid.profile import Profile
from transforms.dicom_io import METRICS_NAMESPACE, Limits, SourceObject, parse_dataset
from transforms.keys import KeySource

LINKAGE = "linkage"


class Deidentify(beam.PTransform):
    """SourceObjects → DeidResults, with dead-letter and (optional) linkage outputs.

    The key is resolved on each worker from ``key_source``; it never travels in the graph.

    Returns:
        ``(results, dead_letters, linkage_rows)``; ``linkage_rows`` is None unless asked for.
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

    def expand(self, objects):
        outputs = objects | "Deidentify" >> beam.ParDo(
            DeidentifyFn(self._config, self._key_source, self._linkage, self._limits)
        ).with_outputs(DEAD_LETTER, LINKAGE, main="results")
        return outputs.results, outputs[DEAD_LETTER], outputs[LINKAGE] if self._linkage else None


class DeidentifyFn(beam.DoFn):
    def __init__(
        self, config: DeidConfig, key_source: KeySource, linkage: bool, limits: Limits | None = None
    ):
        self._config = config
        self._key_source = key_source
        self._linkage = linkage
        self._limits = Limits.of(limits)

    def setup(self):
        # Built once per worker: the table, the resolved options and the key.
        self._engine = Deidentifier(Profile.load(), self._config, self._key_source.resolve())
        self._done = Metrics.counter(METRICS_NAMESPACE, "deidentified")
        self._failed = Metrics.counter(METRICS_NAMESPACE, "deid_dead_letters")

    def process(self, obj: SourceObject):
        stage = STAGE_PARSE
        try:
            ds = parse_dataset(obj.data, self._limits)
            stage = STAGE_DEIDENTIFY
            result, link = deidentify_dataset(ds, self._engine)
        except StageError as e:
            error = e
        except RecursionError:  # nesting that only a deeper walk finds (a UN read as SQ)
            error = StageError("too_deep", "sequences nested too deep")
        except Exception as e:  # one odd file must not stop the run
            error = unexpected(e)
        else:
            self._done.inc()
            yield (obj.source, obj.member, result)
            if self._linkage:
                yield beam.pvalue.TaggedOutput(LINKAGE, tuple(sorted(link.items())))
            return
        self._failed.inc()
        letter = DeadLetter(obj.source, obj.member, stage, error.error_type, error.message)
        yield beam.pvalue.TaggedOutput(DEAD_LETTER, letter)
