"""Label exports: read a hospital's CSV/Parquet label file and join it on original identifiers.

Hospitals key their label exports by the identifiers they know (accession numbers, UIDs,
MRNs), so the join has to happen on the original identifiers, before de-identification
replaces them. Key values are PHI and label values are outcomes: neither is ever logged or
put into an exception message. Messages name columns by our canonical names only, never by
the file's header text, because a file without a header row has data in its first line.

``load_labels`` and ``label_for`` are plain functions; ``ReadLabels`` and ``JoinLabels``
(bottom) are the Beam shell, with the table as a side input so the dataset is never gathered
on one worker.
"""

import csv
import hashlib
import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from pydicom.dataset import Dataset

from transforms.composite import NamedOutputs
from transforms.dicom_io import METRICS_NAMESPACE, normalize_uri, quiet_pydicom

# Most specific first: with several present, the one that names the fewest instances wins.
KEY_COLUMNS = ("SOPInstanceUID", "AccessionNumber", "StudyInstanceUID", "PatientID")
LABEL_COLUMN = "label"

# snake_case spellings, as in linkage rows and in many warehouse exports.
SNAKE_CASE = {
    "SOPInstanceUID": "sop_instance_uid",
    "AccessionNumber": "accession_number",
    "StudyInstanceUID": "study_instance_uid",
    "PatientID": "patient_id",
}

# The tagged output of JoinLabelsFn that carries (digests of) the key values that matched.
MATCHED = "matched"

_PARQUET_MAGIC = b"PAR1"
_CSV_DELIMITERS = (",", ";", "\t")  # spreadsheet exports in some locales use ';' or tabs
_PAD = " \t\r\n\0"  # DICOM pads values with spaces (text) or NUL (UIDs)


def _canonical(name: str) -> str:
    return "".join(c for c in name.lower() if c not in " _-")


_HEADERS = {_canonical(k): k for k in (*KEY_COLUMNS, LABEL_COLUMN)}


@dataclass(frozen=True)
class LabelTable:
    """One label export, reduced to key value → label.

    Attributes:
        key: the DICOM keyword the export is keyed by (the most specific one with values).
        labels: key value → label, for key values with exactly one label.
        duplicates_conflicting: key values that carry two different labels; they are dropped
            because either label could be wrong.
        rows: data rows in the file.
        rows_skipped: rows with a blank key or a blank label; they label nothing.
        conflicting_rows: rows dropped because their key value carries two labels.
    """

    key: str
    labels: dict[str, str]
    duplicates_conflicting: int
    rows: int
    rows_skipped: int = 0
    conflicting_rows: int = 0


def load_labels(uri: str) -> LabelTable:
    """Reads a CSV or Parquet label export (local path, ``file://`` or ``gs://``).

    Parquet is recognised by its magic bytes, anything else is read as CSV (UTF-8, with or
    without a byte-order mark; ``,``, ``;`` or tab separated; ``.gz`` is decompressed).
    Headers match case-insensitively, with or without ``_``/``-``/spaces
    (``accession_number``, ``Accession Number``).

    Raises:
        ValueError: one line, naming the URI but no key or label value: unreadable file, no
            label column, no key column, a column given twice, or no usable rows.
    """
    try:
        with FileSystems.open(normalize_uri(uri)) as fh:
            data = fh.read()
    except Exception as e:  # the exception's own text may quote paths or bytes: not kept
        raise ValueError(f"cannot read label file {uri} ({type(e).__name__})") from None
    if data.startswith(_PARQUET_MAGIC):
        header, columns = _parquet_columns(data, uri)
    else:
        header, columns = _csv_columns(data, uri)
    return _table(header, columns, uri)


def _parquet_columns(data: bytes, uri: str) -> tuple[list[str], dict[str, list]]:
    try:
        # ParquetFile, not read_table: the dataset API refuses repeated column names, which
        # deserve the clearer "two ... columns" error from _table.
        table = pq.ParquetFile(pa.BufferReader(data)).read()
    except Exception as e:
        raise ValueError(f"label file {uri} is not readable Parquet ({type(e).__name__})") from None
    header = [str(n) for n in table.column_names]
    # Only the columns we use are converted: others may hold types with no plain value. By
    # position, because a repeated name (refused by _table) makes lookup by name raise.
    columns = {
        name: table.column(i).to_pylist()
        for i, name in enumerate(header)
        if _canonical(name) in _HEADERS
    }
    return header, columns


def _csv_columns(data: bytes, uri: str) -> tuple[list[str], dict[str, list]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"label file {uri} is neither Parquet nor UTF-8 CSV") from None
    first_line = text.split("\n", 1)[0]
    delimiter = max(_CSV_DELIMITERS, key=first_line.count)
    try:
        records = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if any(r)]
    except csv.Error:
        raise ValueError(f"label file {uri} is not readable CSV") from None
    if not records:
        raise ValueError(f"label file {uri} is empty")
    header, body = records[0], records[1:]
    # A repeated header collapses here, but _table refuses it from the header list first.
    columns = {
        name: [r[i] if i < len(r) else None for r in body]
        for i, name in enumerate(header)
        if _canonical(name) in _HEADERS
    }
    return header, columns


def _cell(value: Any) -> str:
    """One cell as the string a DICOM value would compare equal to ('' when blank)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():  # Parquet writers turn integer columns with gaps into floats
            return str(int(value))
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip(_PAD)


def _table(header: list[str], columns: dict[str, list], uri: str) -> LabelTable:
    found: dict[str, str] = {}  # canonical name → the file's header for it
    for name in header:
        canonical = _HEADERS.get(_canonical(name))
        if canonical is None:
            continue
        if canonical in found:
            raise ValueError(f"label file {uri} has two {canonical} columns")
        found[canonical] = name
    if LABEL_COLUMN not in found:
        raise ValueError(f"label file {uri} has no '{LABEL_COLUMN}' column")
    present = [k for k in KEY_COLUMNS if k in found]
    if not present:
        raise ValueError(f"label file {uri} has no key column (one of {', '.join(KEY_COLUMNS)})")
    labels = [_cell(v) for v in columns[found[LABEL_COLUMN]]]
    if not labels:
        raise ValueError(f"label file {uri} has no rows")
    # The most specific key column that keys at least one labeled row: an export template
    # often carries an empty SOPInstanceUID column next to the accession numbers it uses.
    for key in present:
        values = [_cell(v) for v in columns[found[key]]]
        if any(v and lab for v, lab in zip(values, labels, strict=True)):
            break
    else:
        raise ValueError(f"label file {uri} has no row with both a key and a label")

    seen: dict[str, str] = {}
    conflicting: set[str] = set()
    skipped = 0
    for value, label in zip(values, labels, strict=True):
        if not value or not label:
            skipped += 1
            continue
        if seen.setdefault(value, label) != label:
            conflicting.add(value)
    for value in conflicting:
        del seen[value]
    conflicting_rows = sum(1 for v, lab in zip(values, labels, strict=True) if v in conflicting)
    return LabelTable(
        key=key,
        labels=seen,
        duplicates_conflicting=len(conflicting),
        rows=len(labels),
        rows_skipped=skipped,
        conflicting_rows=conflicting_rows,
    )


def key_value(ds_or_mapping: Dataset | Mapping[str, Any], keyword: str) -> str:
    """The item's value for a key column, stripped ('' when absent).

    A Dataset is read by DICOM keyword; a mapping by keyword or its snake_case spelling
    (so a linkage row, keyed ``accession_number``, works as it is).
    """
    value = ds_or_mapping.get(keyword)
    if value is None and isinstance(ds_or_mapping, Mapping):
        value = ds_or_mapping.get(SNAKE_CASE[keyword])
    return _cell(value)


def label_for(ds_or_mapping: Dataset | Mapping[str, Any], table: LabelTable) -> str | None:
    """The label for one instance, looked up by its original ``table.key``; None if unlabeled."""
    value = key_value(ds_or_mapping, table.key)
    return table.labels.get(value) if value else None


# ---------------------------------------------------------------------------------------
# Beam


class ReadLabels(beam.PTransform):
    """A label file URI → a one-element PCollection holding its ``LabelTable``.

    The file is read on a worker, so the key values never enter the job graph (which
    Dataflow stores with the job). Call ``load_labels`` in the launcher as well to refuse a
    bad file before any work; the table is small, so reading it twice is cheap.
    """

    def __init__(self, uri: str):
        super().__init__()
        self._uri = uri

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[LabelTable]:
        return pbegin | "LabelUri" >> beam.Create([self._uri]) | "Load" >> beam.Map(load_labels)


class Joined(NamedTuple):
    """What ``JoinLabels`` gives: the joined pairs and the count of unmatched label keys."""

    joined: beam.PCollection[tuple[Any, tuple[Any, str | None]]]
    unmatched: beam.PCollection[int]


class JoinLabels(NamedOutputs):
    """``(key, item)`` → ``(key, (item, label or None))``, plus the count of unmatched labels.

    ``item`` holds the original identifiers (a pydicom Dataset, or a mapping such as a
    linkage row); ``key`` is whatever the pipeline joins results back on and passes through
    untouched. The label table is a side input (it is small: one row per study or instance),
    so the instances stay spread over the workers.

    Label rows that match nothing are counted without collecting the instances: each match
    emits a digest of the key value it matched, ``Distinct`` removes repeats (a study-keyed
    label matches every instance of the study) across workers, and the unmatched count is
    the table's size minus the number of distinct matches. Digests, not values, go through
    the shuffle, so no identifier is written to shuffle storage.

    Args:
        table: a one-element PCollection of ``LabelTable`` (from ``ReadLabels``).

    Returns:
        ``Joined(joined, unmatched)``: the joined pairs, and a one-element PCollection with the
        number of label keys that no instance matched (conflicting duplicates, already
        dropped from the table, are reported by ``LabelTable.duplicates_conflicting``).
    """

    def __init__(self, table: beam.PCollection[LabelTable]):
        super().__init__()
        self._table = table

    def expand(self, pairs: beam.PCollection[tuple[Any, Any]]) -> Joined:
        table = beam.pvalue.AsSingleton(self._table)
        outputs = pairs | "Lookup" >> beam.ParDo(JoinLabelsFn(), table).with_outputs(
            MATCHED, main="joined"
        )
        unmatched = (
            outputs[MATCHED]
            | "DistinctMatches" >> beam.Distinct()
            | "CountMatches" >> beam.combiners.Count.Globally()
            | "Unmatched" >> beam.Map(_unmatched, table)
        )
        return Joined(outputs.joined, unmatched)


class JoinLabelsFn(beam.DoFn):
    def setup(self):
        quiet_pydicom()  # reading a dataset's key may validate (and quote) its value
        self._labeled = Metrics.counter(METRICS_NAMESPACE, "labels_matched")
        self._unlabeled = Metrics.counter(METRICS_NAMESPACE, "labels_missing")

    def process(self, pair: tuple[Any, Any], table: LabelTable) -> Iterable:
        key, item = pair
        label = label_for(item, table)
        yield key, (item, label)
        if label is None:
            self._unlabeled.inc()
            return
        self._labeled.inc()
        value = key_value(item, table.key)
        assert value  # label_for found a label by it
        yield beam.pvalue.TaggedOutput(MATCHED, hashlib.sha256(value.encode()).digest()[:16])


def _unmatched(matched_keys: int, table: LabelTable) -> int:
    return len(table.labels) - matched_keys
