"""Configs declared once: a frozen dataclass whose fields generate its flags and its
run.yaml section.

A declared config is a ``@dataclass(frozen=True, kw_only=True)`` whose fields are made by
``arg`` (one flag each) or ``nested`` (another declared config, its flags under a prefix).
From that one declaration:

- ``add_arguments(parser, Config)`` adds one flag per field: ``batch_size`` → ``--batch-size``
  (typed from the annotation; a bool is ``--x/--no-x``, a ``list[str]`` is repeatable);
- ``from_namespace(Config, parsed)`` reads the parsed flags back into the config;
- ``from_mapping(Config, data, "section")`` checks a run.yaml section (keys as the field
  names; unknown keys and wrong types refused, naming the section) into the same config;
- ``to_argv(config)`` gives back the flags that make this config.

Only the standard library: every layer (pipelines, transforms, models) declares its
configs here, and a training container needs nothing more.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

C = TypeVar("C")
_NESTED = "nested_prefix"


REQUIRED: Any = dataclasses.MISSING  # ``arg(REQUIRED, ...)``: a key run.yaml must give


def arg(
    default: Any = None,
    help: str = "",
    *,
    choices: tuple | None = None,
    positive: bool = False,
    flag: bool = True,
    switch: bool = False,
    cli: bool = True,
) -> Any:
    """A field that is one flag and one run.yaml key.

    Args:
        default: its value when not given (a list default is copied per instance).
        help: the flag's help line.
        choices: the values it takes.
        positive: refuse a value <= 0, naming the flag.
        flag: False for a field set from code only: no flag, no run.yaml key.
        switch: a bool given as a bare ``--x`` (default False) instead of ``--x/--no-x``.
        cli: False for a run.yaml key that has no flag of its own (the command line gives
            it another way, e.g. Beam's ``--project``): ``from_namespace`` takes it from
            the caller.
    """
    metadata = {"help": help, "choices": choices, "positive": positive, "flag": flag}
    metadata |= {"switch": switch, "cli": cli}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    if default is REQUIRED:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def nested(config: type, prefix: str = "") -> Any:
    """A field holding another declared config, its flags added under ``prefix``
    (``nested(DicomwebSettings, "dicomweb-")`` → ``--dicomweb-query``...); in run.yaml it is
    a mapping of its own."""
    return dataclasses.field(default_factory=config, metadata={_NESTED: prefix})


def flag_of(name: str, prefix: str = "") -> str:
    """``max_frames`` → ``--max-frames`` (``prefix`` as in ``nested``)."""
    return "--" + prefix + name.replace("_", "-")


def _dest(name: str, prefix: str) -> str:
    return (prefix + name).replace("-", "_")


def _fields(cls: type, cli: bool = False) -> list[tuple[dataclasses.Field, Any]]:
    """The declared fields (``arg`` or ``nested``) with their resolved types; with ``cli``,
    only those that are flags."""
    hints = typing.get_type_hints(cls)
    return [
        (item, hints[item.name])
        for item in dataclasses.fields(cls)
        if _NESTED in item.metadata
        or (item.metadata.get("flag") and (item.metadata.get("cli") or not cli))
    ]


def _scalar(kind: Any) -> tuple[Any, bool]:
    """``X | None`` → (X, True); ``X`` → (X, False)."""
    args = typing.get_args(kind)
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return kind, False


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Adds one flag per declared field of ``cls`` to ``parser``."""
    for item, kind in _fields(cls, cli=True):
        if _NESTED in item.metadata:
            add_arguments(parser, kind, prefix + item.metadata[_NESTED])
            continue
        base, _ = _scalar(kind)
        meta = item.metadata
        options: dict[str, Any] = {"help": meta["help"], "dest": _dest(item.name, prefix)}
        if meta["choices"]:
            options["choices"] = meta["choices"]
        default = item.default if item.default is not REQUIRED else None
        if item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        flag = flag_of(item.name, prefix)
        if base is bool and meta["switch"]:
            parser.add_argument(flag, action="store_true", **options)
        elif base is bool:
            action = argparse.BooleanOptionalAction
            parser.add_argument(flag, action=action, default=default, **options)
        elif typing.get_origin(base) is list:
            parser.add_argument(flag, action="append", default=None, **options)
        else:
            parser.add_argument(flag, type=base, default=default, **options)


def from_namespace(cls: type[C], namespace: Any, prefix: str = "", /, **given: Any) -> C:
    """The config that the flags parsed by ``add_arguments`` give (``given``: the fields
    that are no flags, ``cli=False``).

    Raises:
        ValueError: naming the flag of a ``positive`` field that is not.
    """
    values = dict(given)
    for item, kind in _fields(cls, cli=True):
        if _NESTED in item.metadata:
            values[item.name] = from_namespace(kind, namespace, prefix + item.metadata[_NESTED])
            continue
        value = getattr(namespace, _dest(item.name, prefix))
        if value is None and item.default_factory is not dataclasses.MISSING:
            value = item.default_factory()  # an appended flag never given
        _check_positive(item, value, flag_of(item.name, prefix))
        values[item.name] = value
    return cls(**values)


def _check_positive(item: dataclasses.Field, value: Any, name: str) -> None:
    if item.metadata.get("positive") and (value is None or value <= 0):
        raise ValueError(f"{name} must be positive")


def to_argv(config: Any, prefix: str = "") -> list[str]:
    """The flags that give back ``config`` through ``add_arguments`` (None values left out)."""
    argv: list[str] = []
    for item, _ in _fields(type(config), cli=True):
        value = getattr(config, item.name)
        if _NESTED in item.metadata:
            argv += to_argv(value, prefix + item.metadata[_NESTED])
            continue
        flag = flag_of(item.name, prefix)
        if isinstance(value, bool):
            if item.metadata["switch"]:
                argv += [flag] if value else []
            else:
                argv.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, list | tuple):
            for one in value:
                argv += [flag, str(one)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def keys(cls: type) -> list[str]:
    """The run.yaml keys of a declared config's section."""
    return [item.name for item, _ in _fields(cls)]


def from_mapping(cls: type[C], data: Any, section: str, /, **given: Any) -> C:
    """A run.yaml section (keys as the field names) → the config, values checked.

    Args:
        given: values set by the caller, not the section (their keys are refused there).

    Raises:
        ValueError: naming the section and key: not a mapping, an unknown key, a value of
            the wrong type, a required key missing.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{section} must be a mapping")
    declared = {item.name: (item, kind) for item, kind in _fields(cls)}
    known = sorted(set(declared) - set(given))
    unknown = sorted(set(data) - set(known), key=str)
    if unknown:
        raise ValueError(f"{section}: unknown keys {unknown} (known: {known})")
    values = dict(given)
    for name, value in data.items():
        item, kind = declared[name]
        where = f"{section}.{name}"
        if _NESTED in item.metadata:
            values[name] = from_mapping(kind, value, where)
        else:
            values[name] = _typed(value, kind, where, item.metadata.get("choices"))
            _check_positive(item, values[name], where)
    try:
        return cls(**values)
    except TypeError as e:  # a required field left out
        missing = [
            n
            for n in known
            if n not in values
            and declared[n][0].default is REQUIRED
            and declared[n][0].default_factory is dataclasses.MISSING
        ]
        raise ValueError(f"{section}: missing {', '.join(missing) or e}") from None


def _typed(value: Any, kind: Any, where: str, choices: tuple | None) -> Any:
    """``value`` checked against the annotation ``kind`` (an int is also a float)."""
    base, optional = _scalar(kind)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where} must be given a value")
    if typing.get_origin(base) in (list, tuple):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
            raise ValueError(f"{where} must be a list of strings")
        return list(items) if typing.get_origin(base) is list else tuple(items)
    ok = (
        isinstance(value, bool)
        if base is bool
        else isinstance(value, int | float) and not isinstance(value, bool)
        if base is float
        else isinstance(value, base) and not isinstance(value, bool)
        if base is int
        else isinstance(value, base)
    )
    if not ok:
        raise ValueError(f"{where} must be {base.__name__}, not {value!r}")
    if choices and value not in choices:
        raise ValueError(f"{where} must be one of {', '.join(map(str, choices))}")
    return float(value) if base is float else value
