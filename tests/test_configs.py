"""Declared configs: one dataclass gives the flags, reads them back, and checks run.yaml."""

import argparse
from dataclasses import dataclass

import pytest

from models import configs
from models.configs import REQUIRED, arg, nested


@dataclass(frozen=True, kw_only=True)
class Inner:
    query: str | None = arg(None, "a filter")
    workers: int = arg(8, "in flight", positive=True)
    retries: int = arg(5, flag=False)  # set from code only


@dataclass(frozen=True, kw_only=True)
class Outer:
    input: list[str] = arg([], "repeatable")
    name: str = arg(REQUIRED, "required in run.yaml")
    rate: float = arg(0.5, "a fraction")
    shuffle: bool = arg(True, "on by default")
    fast: bool = arg(False, "a bare switch", switch=True)
    mode: str = arg("a", "one of two", choices=("a", "b"))
    inner: Inner = nested(Inner, "inner-")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    configs.add_arguments(p, Outer)
    return p


def test_fields_generate_the_flags_and_read_them_back():
    flags = {a.option_strings[0] for a in parser()._actions if a.option_strings}
    assert flags >= {"--input", "--name", "--rate", "--shuffle", "--fast", "--mode"}
    assert {"--inner-query", "--inner-workers"} <= flags and "--inner-retries" not in flags
    argv = ["--input", "a", "--input", "b", "--name", "n", "--no-shuffle", "--fast"]
    config = configs.from_namespace(Outer, parser().parse_args([*argv, "--inner-workers", "3"]))
    assert config == Outer(
        input=["a", "b"], name="n", shuffle=False, fast=True, inner=Inner(workers=3)
    )
    assert configs.from_namespace(Outer, parser().parse_args(configs.to_argv(config))) == config
    assert configs.from_namespace(Outer, parser().parse_args(["--name", "n"])).input == []


def test_a_positive_flag_is_refused_by_its_name():
    with pytest.raises(ValueError, match="--inner-workers must be positive"):
        configs.from_namespace(Outer, parser().parse_args(["--inner-workers", "0"]))


def test_a_run_yaml_section_becomes_the_same_config():
    data = {"input": "one", "name": "n", "rate": 1, "inner": {"query": "q"}}
    config = configs.from_mapping(Outer, data, "outer")
    assert config == Outer(input=["one"], name="n", rate=1.0, inner=Inner(query="q"))
    assert configs.from_mapping(Outer, {}, "outer", name="given").name == "given"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "n", "nmae": 1}, r"outer: unknown keys \['nmae'\]"),
        ({"name": "n", "inner": {"retries": 9}}, r"outer\.inner: unknown keys \['retries'\]"),
        ({"name": "n", "rate": "fast"}, r"outer\.rate must be float"),
        ({"name": "n", "shuffle": "yes"}, r"outer\.shuffle must be bool"),
        ({"name": "n", "inner": {"workers": True}}, r"outer\.inner\.workers must be int"),
        ({"name": "n", "inner": {"workers": 0}}, r"outer\.inner\.workers must be positive"),
        ({"name": "n", "mode": "c"}, r"outer\.mode must be one of a, b"),
        ({"name": "n", "input": [1]}, r"outer\.input must be a list of strings"),
        ({"rate": 0.1}, "outer: missing name"),
        ([], "outer must be a mapping"),
    ],
)
def test_a_bad_section_is_one_line_naming_the_key(data, message):
    with pytest.raises(ValueError, match=message):
        configs.from_mapping(Outer, data, "outer")


def test_keys_set_by_the_caller_are_not_run_yaml_keys():
    with pytest.raises(ValueError, match="unknown keys"):
        configs.from_mapping(Outer, {"name": "n"}, "outer", name="given")
    assert "retries" not in configs.keys(Inner) and "query" in configs.keys(Inner)


@dataclass(frozen=True, kw_only=True)
class Place:
    project: str = arg(REQUIRED, "from Beam's --project on the command line", cli=False)
    machine: str = arg("small", "a machine type")


def test_a_key_without_a_flag_comes_from_the_caller_on_the_command_line():
    p = argparse.ArgumentParser()
    configs.add_arguments(p, Place)
    assert "--project" not in p.format_help()
    place = configs.from_namespace(Place, p.parse_args(["--machine", "big"]), project="p")
    assert place == Place(project="p", machine="big")
    assert configs.to_argv(place) == ["--machine", "big"]
    assert configs.from_mapping(Place, {"project": "q"}, "place").project == "q"
