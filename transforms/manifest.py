"""Run manifests: counts gathered from the rows themselves, written when the tables are done."""

import datetime
import importlib.metadata
from collections import Counter
from collections.abc import Callable, Iterable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from models import features
from models.layout import MANIFEST_NAME
from transforms.storage import write_json


def code_version() -> str:
    try:
        return importlib.metadata.version("dicomflow")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


Key = str | tuple[str, str]


def nest_counts(flat: dict[Key, int]) -> dict:
    """``{("by_modality", "CT"): 3, "seen": 9}`` → ``{"by_modality": {"CT": 3}, "seen": 9}``.

    Keys are tuples, not joined strings: values such as transfer syntax names contain "/".
    """
    nested: dict = {}
    for key, count in flat.items():
        if isinstance(key, tuple):
            section, value = key
            nested.setdefault(section, {})[value] = count
        else:
            nested[key] = count
    return {
        k: dict(sorted(v.items())) if isinstance(v, dict) else v for k, v in sorted(nested.items())
    }


def error_keys(row: dict) -> list[Key]:
    """The manifest counts one errors-table row contributes to (every pipeline)."""
    return [
        "seen",
        "dead_lettered",
        ("by_error_type", row[features.ERROR_TYPE]),
        ("by_stage", row[features.STAGE]),
    ]


class CountKeysFn(beam.CombineFn):
    """Counts keys (names, or (section, value) pairs): every count a manifest reports."""

    def create_accumulator(self) -> Counter:
        return Counter()

    def add_input(self, acc: Counter, keys: Iterable[Key]) -> Counter:
        acc.update(keys)
        return acc

    def merge_accumulators(self, accs: Iterable[Counter]) -> Counter:
        merged: Counter = Counter()
        for acc in accs:
            merged.update(acc)
        return merged

    def extract_output(self, acc: Counter) -> dict[Key, int]:
        return dict(acc)


class WriteManifest(beam.PTransform):
    """Writes ``<output>/manifest.json`` after every table named in ``tables`` is complete.

    Args:
        output: the run's output root.
        header: fixed facts known when the pipeline is built (run id, inputs, options).
        tables: table name → a one-element PCollection describing it: the shard names a
            Parquet writer returns, or a count of files.
        finish: turns the combined flat counts into the manifest's ``counts`` section.
        sections: top-level name → a one-element PCollection of facts only the run itself
            learns (a dict), which replaces the header's section of that name. The
            manifest is complete on every runner, with no launcher left to finish it.
        complete: a last change to the whole manifest before it is written (e.g. the
            run's timings), made where it is written.
    """

    def __init__(
        self,
        output: str,
        header: dict,
        tables: dict,
        finish: Callable[[dict[Key, int]], dict] = nest_counts,
        sections: dict | None = None,
        complete: Callable[[dict], dict] | None = None,
    ):
        super().__init__()
        self._output = output
        self._header = header
        self._tables = tables
        self._finish = finish
        self._sections = sections or {}
        self._complete = complete

    def expand(self, keys: beam.PCollection[list]) -> beam.PCollection[dict]:
        names = sorted(self._tables)
        sections = sorted(self._sections)
        counts = keys | "Count" >> beam.CombineGlobally(CountKeysFn())
        side_inputs = [beam.pvalue.AsSingleton(self._tables[n]) for n in names]
        side_inputs += [beam.pvalue.AsSingleton(self._sections[n]) for n in sections]
        return counts | "Write" >> beam.Map(
            _write_manifest,
            self._output,
            self._header,
            self._finish,
            self._complete,
            names,
            sections,
            *side_inputs,
        )


def _write_manifest(
    flat_counts: dict[Key, int],
    output: str,
    header: dict,
    finish: Callable[[dict[Key, int]], dict],
    complete: Callable[[dict], dict] | None,
    names: list[str],
    sections: list[str],
    *values,
) -> dict:
    shards, facts = values[: len(names)], values[len(names) :]
    manifest = dict(header)
    manifest.update(zip(sections, facts, strict=True))
    manifest["finished_at"] = utc_now()
    manifest["counts"] = finish(flat_counts)
    manifest["tables"] = {
        n: list(s) if isinstance(s, (list, tuple)) else s
        for n, s in zip(names, shards, strict=True)
    }
    if complete is not None:
        manifest = complete(manifest)
    write_json(FileSystems.join(output, MANIFEST_NAME), manifest)
    return manifest
