"""Label exports: reading CSV/Parquet, the key column chosen, the lookup, and the Beam join."""

import gzip
import logging
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from pydicom.dataset import Dataset

from pipelines.synth import LABELS_NAME, write_labels
from transforms import testing as synth
from transforms.dicom_io import KIND_DICOM, parse_dataset, sniff
from transforms.labels import (
    JoinLabels,
    JoinLabelsFn,
    LabelTable,
    ReadLabels,
    key_value,
    label_for,
    load_labels,
)
from transforms.storage import write_bytes

# Distinctive values, so a test can tell whether they leaked into a message or a log.
ACC = ["ACC-SECRET-1", "ACC-SECRET-2", "ACC-SECRET-3"]
UIDS = ["1.2.826.0.1.3680043.99.1", "1.2.826.0.1.3680043.99.2", "1.2.826.0.1.3680043.99.3"]
LESION, CLEAR = "lesion-present", "lesion-absent"


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def write_parquet(path: Path, columns: dict[str, pa.Array | list]) -> str:
    pq.write_table(pa.table(columns), path)
    return str(path)


def assert_no_phi(message: str) -> None:
    assert "\n" not in message
    for value in [*ACC, *UIDS, LESION, CLEAR]:
        assert value not in message


# --- the synthetic corpus's labels.csv -------------------------------------------------------


def test_synthetic_labels_csv_joins_on_sop_instance_uid(tmp_path):
    part = synth.synth_patient(0, seed=3, positive_rate=0.5)
    write_labels(part.labels, str(tmp_path))  # the synth pipeline's own writer
    table = load_labels(str(tmp_path / LABELS_NAME))

    assert table.key == "SOPInstanceUID"  # both key columns present: the more specific wins
    assert table.rows == len(part.labels)
    assert table.duplicates_conflicting == 0 and table.rows_skipped == 0
    assert table.labels == {r["SOPInstanceUID"]: r["label"] for r in part.labels}

    loose = [f for f in part.files if sniff(f.data[:512]) == KIND_DICOM]
    assert loose  # the patient's first study is delivered as loose files
    expected = {r["SOPInstanceUID"]: r["label"] for r in part.labels}
    for file in loose:
        ds = parse_dataset(file.data)
        assert label_for(ds, table) == expected[str(ds.SOPInstanceUID)]


# --- header variants and the key column ------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "SOPInstanceUID,label",
        "sopinstanceuid,Label",
        "sop_instance_uid,LABEL",
        "SOP Instance UID,label",
        "Sop-Instance-Uid, label ",
    ],
)
def test_header_spellings(tmp_path, header):
    table = load_labels(write(tmp_path / "l.csv", f"{header}\n{UIDS[0]},{LESION}\n"))
    assert table.key == "SOPInstanceUID"
    assert table.labels == {UIDS[0]: LESION}


@pytest.mark.parametrize(
    ("columns", "key", "value"),
    [
        (["PatientID", "StudyInstanceUID", "AccessionNumber"], "AccessionNumber", "v2"),
        (["patient_id", "study_instance_uid"], "StudyInstanceUID", "v1"),
        (["PatientID"], "PatientID", "v0"),
        (["AccessionNumber", "SOPInstanceUID"], "SOPInstanceUID", "v1"),
    ],
)
def test_the_most_specific_key_column_wins(tmp_path, columns, key, value):
    header = ",".join([*columns, "label"])
    row = ",".join([f"v{i}" for i in range(len(columns))] + [LESION])
    table = load_labels(write(tmp_path / "l.csv", f"{header}\n{row}\n"))
    assert (table.key, table.labels) == (key, {value: LESION})


def test_an_empty_specific_column_falls_back_to_the_next(tmp_path):
    # Export templates often carry an empty SOPInstanceUID column next to the accessions.
    text = f"AccessionNumber,SOPInstanceUID,label\n{ACC[0]},,{LESION}\n{ACC[1]},,{CLEAR}\n"
    table = load_labels(write(tmp_path / "l.csv", text))
    assert table.key == "AccessionNumber"
    assert table.labels == {ACC[0]: LESION, ACC[1]: CLEAR}


def test_csv_with_bom_semicolons_crlf_quotes_and_padding(tmp_path):
    text = f'\ufeff"AccessionNumber";"label"\r\n" {ACC[0]} ";"{LESION}"\r\n{ACC[1]};{CLEAR}\r\n\r\n'
    table = load_labels(write(tmp_path / "l.csv", text))
    assert table.labels == {ACC[0]: LESION, ACC[1]: CLEAR}
    assert table.rows == 2


def test_tab_separated_and_gzipped(tmp_path):
    path = tmp_path / "labels.tsv.gz"
    path.write_bytes(gzip.compress(f"StudyInstanceUID\tlabel\n{UIDS[0]}\t1\n".encode()))
    table = load_labels(str(path))
    assert (table.key, table.labels) == ("StudyInstanceUID", {UIDS[0]: "1"})


def test_file_uri(tmp_path):
    path = write(tmp_path / "l.csv", f"PatientID,label\nMRN1,{LESION}\n")
    assert load_labels(f"file://{path}").labels == {"MRN1": LESION}


# --- Parquet ---------------------------------------------------------------------------------


def test_parquet_with_strings(tmp_path):
    path = write_parquet(
        tmp_path / "l.parquet",
        {"accession_number": ACC[:2], "Label": [LESION, CLEAR], "note": ["a", "b"]},
    )
    table = load_labels(path)
    assert (table.key, table.labels, table.rows) == (
        "AccessionNumber",
        {ACC[0]: LESION, ACC[1]: CLEAR},
        2,
    )


def test_parquet_numbers_become_the_strings_dicom_would_hold(tmp_path):
    # Warehouses store accession numbers as integers and 0/1 labels as ints, bools or
    # floats (an integer column with a gap); all must compare equal to DICOM's strings.
    path = write_parquet(
        tmp_path / "l.parquet",
        {
            "AccessionNumber": pa.array([1001, 1002, 1003, 1004], pa.int64()),
            "label": pa.array([1.0, 0.0, None, float("nan")], pa.float64()),
        },
    )
    table = load_labels(path)
    assert table.labels == {"1001": "1", "1002": "0"}
    assert table.rows_skipped == 2
    path = write_parquet(
        tmp_path / "b.parquet",
        {"SOPInstanceUID": UIDS[:2], "label": pa.array([True, False])},
    )
    assert load_labels(path).labels == {UIDS[0]: "1", UIDS[1]: "0"}


# --- duplicates and blanks -------------------------------------------------------------------


def test_conflicting_duplicates_are_dropped_and_counted(tmp_path):
    text = (
        "AccessionNumber,label\n"
        f"{ACC[0]},{LESION}\n"
        f"{ACC[0]},{CLEAR}\n"  # conflicts: ACC[0] labels nothing
        f"{ACC[1]},{LESION}\n"
        f"{ACC[1]},{LESION}\n"  # agrees: kept once
        f"{ACC[2]},\n"  # blank label
        f",{CLEAR}\n"  # blank key
        f"{ACC[0]},{LESION}\n"
    )
    table = load_labels(write(tmp_path / "l.csv", text))
    assert table.labels == {ACC[1]: LESION}
    assert table.duplicates_conflicting == 1
    assert table.rows == 7
    assert table.rows_skipped == 2
    assert table.conflicting_rows == 3  # every row of ACC[0]: the manifest reports them


# --- errors: one line, no PHI ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"AccessionNumber,outcome\n{ACC[0]},{LESION}\n", "has no 'label' column"),
        (f"{ACC[0]},{UIDS[0]},{LESION}\n{ACC[1]},{UIDS[1]},{CLEAR}\n", "has no 'label' column"),
        (f"MRN,label\n{ACC[0]},{LESION}\n", "has no key column"),
        (f"PatientID,patient_id,label\n{ACC[0]},{ACC[1]},{LESION}\n", "two PatientID columns"),
        (f"label,label,PatientID\n{LESION},{CLEAR},{ACC[0]}\n", "two label columns"),
        ("", "is empty"),
        ("\n\n", "is empty"),
        ("AccessionNumber,label\n", "has no rows"),
        (f"AccessionNumber,label\n{ACC[0]},\n,{LESION}\n", "no row with both a key and a label"),
    ],
)
def test_bad_csv_raises_a_clear_error_without_phi(tmp_path, text, message):
    path = write(tmp_path / "l.csv", text)
    with pytest.raises(ValueError, match=message) as info:
        load_labels(path)
    assert_no_phi(str(info.value))
    assert path in str(info.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read label file .*missing\.csv"):
        load_labels(str(tmp_path / "missing.csv"))
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00junk\x80\x81")
    with pytest.raises(ValueError, match="neither Parquet nor UTF-8 CSV"):
        load_labels(str(tmp_path / "binary.csv"))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1" + ACC[0].encode() + b"PAR1")
    with pytest.raises(ValueError, match="is not readable Parquet") as info:
        load_labels(str(tmp_path / "broken.parquet"))
    assert_no_phi(str(info.value))


def test_bad_parquet_columns(tmp_path):
    path = write_parquet(tmp_path / "l.parquet", {"MRN": ACC[:1], "label": [LESION]})
    with pytest.raises(ValueError, match="has no key column"):
        load_labels(path)
    path = write_parquet(
        tmp_path / "e.parquet",
        {"PatientID": pa.array([], pa.string()), "label": pa.array([], pa.string())},
    )
    with pytest.raises(ValueError, match="has no rows"):
        load_labels(path)
    columns = pa.table(
        [pa.array(ACC[:1]), pa.array(ACC[1:2]), pa.array([LESION])],
        names=["PatientID", "PatientID", "label"],
    )
    pq.write_table(columns, tmp_path / "d.parquet")
    with pytest.raises(ValueError, match="two PatientID columns") as info:
        load_labels(str(tmp_path / "d.parquet"))
    assert_no_phi(str(info.value))


# --- the lookup ------------------------------------------------------------------------------


TABLE = LabelTable(
    key="AccessionNumber",
    labels={ACC[0]: LESION, ACC[1]: CLEAR},
    duplicates_conflicting=0,
    rows=2,
)


def test_label_for_a_dataset():
    ds = Dataset()
    ds.AccessionNumber = ACC[0] + " "  # DICOM pads to even length
    assert label_for(ds, TABLE) == LESION
    ds.AccessionNumber = ACC[2]
    assert label_for(ds, TABLE) is None
    ds.AccessionNumber = ""
    assert label_for(ds, TABLE) is None
    assert label_for(Dataset(), TABLE) is None


def test_label_for_a_mapping_by_keyword_or_snake_case():
    assert label_for({"AccessionNumber": ACC[1]}, TABLE) == CLEAR
    # A linkage row from the de-identification step works as it is.
    assert label_for({"accession_number": ACC[0], "patient_id": "MRN1"}, TABLE) == LESION
    assert label_for({"patient_id": "MRN1"}, TABLE) is None
    assert key_value({"StudyInstanceUID": UIDS[0] + "\0"}, "StudyInstanceUID") == UIDS[0]


# --- Beam ------------------------------------------------------------------------------------


def _study_labels(tmp_path) -> str:
    # Study-level labels: one row matches several instances, one row matches none.
    text = f"AccessionNumber,label\n{ACC[0]},{LESION}\n{ACC[1]},{CLEAR}\n{ACC[2]},{LESION}\n"
    return write(tmp_path / "labels.csv", text)


PAIRS = [
    ("sop-a", {"accession_number": ACC[0]}),
    ("sop-b", {"accession_number": ACC[0]}),
    ("sop-c", {"accession_number": ACC[1]}),
    ("sop-d", {"accession_number": "ACC-NOT-LABELED"}),
    ("sop-e", {"patient_id": "MRN9"}),
]


def test_join_labels_pipeline(tmp_path):
    with TestPipeline() as p:
        table = p | "ReadLabels" >> ReadLabels(_study_labels(tmp_path))
        joined, unmatched = p | beam.Create(PAIRS) | "Join" >> JoinLabels(table)
        labels = joined | beam.MapTuple(lambda key, item_label: (key, item_label[1]))
        assert_that(
            labels,
            equal_to(
                [
                    ("sop-a", LESION),
                    ("sop-b", LESION),
                    ("sop-c", CLEAR),
                    ("sop-d", None),
                    ("sop-e", None),
                ]
            ),
            label="Labels",
        )
        items = joined | beam.MapTuple(lambda key, item_label: (key, item_label[0]))
        assert_that(items, equal_to(PAIRS), label="ItemsPassThrough")
        assert_that(unmatched, equal_to([1]), label="Unmatched")  # ACC[2]


def test_join_labels_with_no_instances_leaves_every_label_unmatched(tmp_path):
    with TestPipeline() as p:
        table = p | "ReadLabels" >> ReadLabels(_study_labels(tmp_path))
        empty = p | beam.Create([]).with_output_types(tuple[str, dict])
        joined, unmatched = empty | "Join" >> JoinLabels(table)
        assert_that(joined, equal_to([]), label="Joined")
        assert_that(unmatched, equal_to([3]), label="Unmatched")


def test_join_labels_counts_and_keeps_values_out_of_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    p = TestPipeline()
    table = p | "ReadLabels" >> ReadLabels(_study_labels(tmp_path))
    _ = p | beam.Create(PAIRS) | "Join" >> JoinLabels(table)
    result = p.run()
    result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace("dicomflow"))["counters"]
    }
    assert counters["labels_matched"] == 3
    assert counters["labels_missing"] == 2
    assert_no_phi(" ".join(r.getMessage() for r in caplog.records).replace("\n", " "))


def test_join_fn_directly():
    fn = JoinLabelsFn()
    fn.setup()
    table = LabelTable("SOPInstanceUID", {UIDS[0]: LESION}, 0, 1)
    out = list(fn.process(("k", {"SOPInstanceUID": UIDS[0]}), table))
    assert out[0] == ("k", ({"SOPInstanceUID": UIDS[0]}, LESION))
    matched = out[1]
    assert matched.tag == "matched"
    assert UIDS[0].encode() not in matched.value  # a digest, not the identifier
    assert list(fn.process(("k", {}), table)) == [("k", ({}, None))]


def test_read_labels_from_gcs(gcs):
    uri = f"{gcs}/labels/export.csv"
    write_bytes(uri, f"SOPInstanceUID,label\n{UIDS[0]},{LESION}\n".encode(), "text/csv")
    assert load_labels(uri).labels == {UIDS[0]: LESION}


def test_read_labels_gives_one_table_read_on_a_worker(tmp_path):
    with TestPipeline() as p:
        table = p | ReadLabels(_study_labels(tmp_path))
        assert_that(
            table | beam.Map(lambda t: (t.key, t.labels, t.rows)),
            equal_to([("AccessionNumber", {ACC[0]: LESION, ACC[1]: CLEAR, ACC[2]: LESION}, 3)]),
        )
