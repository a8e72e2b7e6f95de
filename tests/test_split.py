"""The patient-level split: deterministic, patient-exclusive, in proportion, and strict config."""

import hashlib
from collections import Counter, defaultdict

import pytest

from transforms.split import SPLITS, UNLABELED, SplitConfig, assign_split, unit_hash

IDS = [f"2.25.{i * 7919 + 13}" for i in range(10_000)]  # pseudonyms look like this


def test_unit_hash_is_the_documented_formula():
    # Pinned to the formula itself, so a change of algorithm (which would reshuffle every
    # patient of every existing dataset) fails here rather than passing silently.
    digest = hashlib.sha256(b"dicomflow-split-v1\x00p-8").digest()
    expected = int.from_bytes(digest[:8], "big") / 2**64
    assert unit_hash("p-8", "dicomflow-split-v1") == pytest.approx(expected, abs=1e-15)
    assert 0.0 <= unit_hash("p-8", "dicomflow-split-v1") < 1.0


def test_known_assignments_with_the_default_config():
    config = SplitConfig()
    assert [assign_split(p, True, config) for p in ("p-0", "p-7", "p-8")] == [
        "train",
        "eval",
        "test",
    ]


def test_deterministic_across_calls_and_configs_with_the_same_values():
    first = [assign_split(p, True, SplitConfig()) for p in IDS[:500]]
    again = [assign_split(p, True, SplitConfig(0.8, 0.1, 0.1)) for p in IDS[:500]]
    assert first == again


def test_every_instance_of_a_patient_gets_the_same_split():
    config = SplitConfig(train=0.5, eval=0.25, test=0.25)
    instances = [(IDS[i % 300], f"sop-{i}") for i in range(3000)]  # 10 instances per patient
    splits: dict[str, set[str]] = defaultdict(set)
    for patient, _sop in instances:
        splits[patient].add(assign_split(patient, True, config))
    assert all(len(s) == 1 for s in splits.values())
    assert {s for group in splits.values() for s in group} == set(SPLITS)


def test_unlabeled_instances_are_unlabeled_whatever_the_patient():
    assert {assign_split(p, False, SplitConfig()) for p in IDS[:100]} == {UNLABELED}


@pytest.mark.parametrize(
    "fractions", [(0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (0.34, 0.33, 0.33), (0.05, 0.9, 0.05)]
)
def test_fractions_are_respected_over_10000_patients(fractions):
    config = SplitConfig(*fractions)
    counts = Counter(assign_split(p, True, config) for p in IDS)
    for name, fraction in zip(SPLITS, fractions, strict=True):
        assert counts[name] / len(IDS) == pytest.approx(fraction, abs=0.02)


@pytest.mark.parametrize(
    "fractions",
    [(0.9, 0.0, 0.1), (0.9, 0.1, 0.0), (0.0, 0.5, 0.5), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)],
)
def test_zero_fraction_splits_are_never_chosen(fractions):
    config = SplitConfig(*fractions)
    chosen = {assign_split(p, True, config) for p in IDS}
    assert chosen == {n for n, f in zip(SPLITS, fractions, strict=True) if f > 0}


def test_fractions_that_sum_to_one_only_within_float_rounding_still_work():
    # 0.7 + 0.2 + 0.1 is 0.9999999999999999 in binary floating point.
    config = SplitConfig(0.7, 0.2, 0.1)
    assert set(Counter(assign_split(p, True, config) for p in IDS)) == set(SPLITS)
    config = SplitConfig(0.7, 0.3, 0.0)
    assert "test" not in {assign_split(p, True, config) for p in IDS}


def test_the_salt_reshuffles_patients():
    a = [assign_split(p, True, SplitConfig()) for p in IDS[:1000]]
    b = [assign_split(p, True, SplitConfig(salt="other")) for p in IDS[:1000]]
    assert a != b


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train": 0.8, "eval": 0.1, "test": 0.2}, "sum to 1"),
        ({"train": 0.5, "eval": 0.1, "test": 0.1}, "sum to 1"),
        ({"train": 1.2, "eval": -0.1, "test": -0.1}, "eval must be a finite number >= 0"),
        ({"train": float("nan"), "eval": 0.1, "test": 0.1}, "train must be a finite"),
        ({"train": float("inf"), "eval": 0.0, "test": 0.0}, "train must be a finite"),
        ({"train": True, "eval": 0.0, "test": 0.0}, "train must be a number"),
        ({"train": "0.8"}, "train must be a number"),
        ({"salt": 7}, "salt must be a string"),
    ],
)
def test_bad_configs_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SplitConfig(**kwargs)


def test_from_mapping():
    assert SplitConfig.from_mapping(None) == SplitConfig()
    assert SplitConfig.from_mapping({}) == SplitConfig()
    assert SplitConfig.from_mapping(
        {"train": 0.7, "eval": 0.15, "test": 0.15, "salt": "s"}
    ) == SplitConfig(0.7, 0.15, 0.15, "s")
    assert SplitConfig.from_mapping({"train": 1, "eval": 0, "test": 0}).fractions() == (
        1.0,
        0.0,
        0.0,
    )


def test_from_mapping_names_unknown_keys():
    with pytest.raises(ValueError, match="unknown split config keys: seed, validation"):
        SplitConfig.from_mapping({"train": 0.8, "validation": 0.1, "test": 0.1, "seed": 1})


def test_from_mapping_refuses_non_mappings_and_bad_values():
    with pytest.raises(ValueError, match="must be a mapping"):
        SplitConfig.from_mapping([0.8, 0.1, 0.1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sum to 1"):
        SplitConfig.from_mapping({"train": 0.9})
