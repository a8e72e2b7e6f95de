"""Run manifests: counts gathered from the rows themselves, written when the tables are done."""

import datetime
import importlib.metadata
import json
from collections import Counter
from collections.abc import Callable, Iterable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.storage import write_bytes

MANIFEST_NAME = "manifest.json"


def code_version() -> str:
    try:
        return importlib.metadata.version("dicomflow")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def nest_counts(flat: dict[str, int]) -> dict:
    """``{"by_modality/CT": 3, "seen": 9}`` → ``{"by_modality": {"CT": 3}, "seen": 9}``."""
    nested: dict = {}
    for key in sorted(flat):
        node = nested
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = flat[key]
    return nested


def write_json(uri: str, payload: dict) -> None:
    data = json.dumps(payload, indent=2, sort_keys=True).encode() + b"\n"
    write_bytes(uri, data, "application/json")


class CountKeysFn(beam.CombineFn):
    """Counts string keys: one combiner for every count a manifest reports."""

    def create_accumulator(self) -> Counter:
        return Counter()

    def add_input(self, acc: Counter, keys: Iterable[str]) -> Counter:
        acc.update(keys)
        return acc

    def merge_accumulators(self, accs: Iterable[Counter]) -> Counter:
        merged = Counter()
        for acc in accs:
            merged.update(acc)
        return merged

    def extract_output(self, acc: Counter) -> dict[str, int]:
        return dict(acc)


class WriteManifest(beam.PTransform):
    """Writes ``<output>/manifest.json`` after every table named in ``tables`` is complete.

    Args:
        output: the run's output root.
        header: fixed facts known when the pipeline is built (run id, inputs, options).
        tables: table name → the one-element PCollection of shard names its writer returns.
        finish: turns the combined flat counts into the manifest's ``counts`` section.
    """

    def __init__(
        self,
        output: str,
        header: dict,
        tables: dict,
        finish: Callable[[dict[str, int]], dict] = nest_counts,
    ):
        super().__init__()
        self._output = output
        self._header = header
        self._tables = tables
        self._finish = finish

    def expand(self, keys):
        names = sorted(self._tables)
        counts = keys | "Count" >> beam.CombineGlobally(CountKeysFn())
        side_inputs = [beam.pvalue.AsSingleton(self._tables[n]) for n in names]
        return counts | "Write" >> beam.Map(
            _write_manifest, self._output, self._header, self._finish, names, *side_inputs
        )


def _write_manifest(
    flat_counts: dict[str, int],
    output: str,
    header: dict,
    finish: Callable[[dict[str, int]], dict],
    names: list[str],
    *shards: list[str],
) -> dict:
    manifest = dict(header)
    manifest["finished_at"] = utc_now()
    manifest["counts"] = finish(flat_counts)
    manifest["tables"] = {n: list(s) for n, s in zip(names, shards, strict=True)}
    write_json(FileSystems.join(output, MANIFEST_NAME), manifest)
    return manifest
