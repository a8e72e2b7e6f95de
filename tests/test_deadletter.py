"""The one dead-letter helper (DeadLetterFn, at_stage) and the errors table every pipeline
writes (WriteErrors)."""

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from conftest import read_table

from transforms.deadletter import (
    DEAD_LETTER,
    STAGE_PARSE,
    STAGE_PIXELS,
    DeadLetter,
    DeadLetterFn,
    StageError,
    WriteErrors,
    at_stage,
)


class HalvesFn(DeadLetterFn):
    """(name, n) → n // 2 and n % 2; fails in ways the tests choose."""

    stage = STAGE_PARSE

    def where(self, element):
        return f"gs://b/{element[0]}", "m"

    def work(self, element):
        name, n = element
        yield n // 2  # emitted only if the whole element succeeds
        if name == "stage-error":
            raise StageError("bad_thing", "a message we wrote")
        if name == "later-stage":
            with at_stage(STAGE_PIXELS):
                raise StageError("no_pixel_data", "no pixels")
        if name == "surprise":
            with at_stage(STAGE_PIXELS):
                raise KeyError("Doe^John")  # third-party text may quote PHI
        if name == "bare":
            raise ValueError("Doe^John")
        yield beam.pvalue.TaggedOutput("rest", n % 2)


def outcome(name: str, n: int = 5) -> list:
    return list(HalvesFn().process((name, n)))


def test_success_emits_every_output():
    main, rest = outcome("ok")
    assert main == 2 and (rest.tag, rest.value) == ("rest", 1)


@pytest.mark.parametrize(
    ("name", "stage", "error_type", "message"),
    [
        ("stage-error", "parse", "bad_thing", "a message we wrote"),
        ("later-stage", "pixels", "no_pixel_data", "no pixels"),
        ("surprise", "pixels", "unexpected_error", "unexpected KeyError"),
        ("bare", "parse", "unexpected_error", "unexpected ValueError"),
    ],
)
def test_a_failure_is_one_dead_letter_and_nothing_else(name, stage, error_type, message):
    (letter,) = outcome(name)  # the output yielded before the failure is not emitted
    assert letter.tag == DEAD_LETTER
    assert letter.value == DeadLetter(f"gs://b/{name}", "m", stage, error_type, message)
    assert "Doe" not in letter.value.message


def test_write_errors_writes_the_table_and_the_manifest_keys(tmp_path):
    letters = [
        DeadLetter("gs://b/a", None, "read", "too_large", "over the limit"),
        DeadLetter("gs://b/z.zip", "x.dcm", "parse", "truncated", "cut short"),
    ]
    with TestPipeline() as p:
        errors = p | beam.Create(letters) | WriteErrors(str(tmp_path))
        assert_that(
            errors.keys,
            equal_to(
                [
                    ["seen", "dead_lettered", ("by_error_type", t), ("by_stage", s)]
                    for s, t in (("read", "too_large"), ("parse", "truncated"))
                ]
            ),
            label="Keys",
        )
        # Once the table is complete: one list of its shards.
        assert_that(errors.files | beam.Map(bool), equal_to([True]), label="Shards")
    rows = read_table(str(tmp_path / "errors"))
    assert sorted(rows, key=lambda r: r["source"]) == [letter.to_row() for letter in letters]
