"""Turning plain YAML data into the config's frozen dataclasses: unknown keys, types and bounds.

Generic over any dataclass whose fields were made by `config.setting()` (their metadata carries the
doc and the bounds); every refusal is a ConfigError naming the file, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal

from streamd.config_file import ConfigError, clipped


def field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def build(cls: type, raw: dict, label: str, prefix: str, extra: dict) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    # Sorted by repr: YAML keys may be numbers, booleans or null mixed with names, which do not compare.
    unknown = sorted((key for key in raw if key not in names), key=repr)
    if unknown:
        first = unknown[0]
        key = clipped(repr(prefix + first) if isinstance(first, str) else prefix + repr(first))
        raise ConfigError(f"{label}: unknown key {key}; known keys here are {', '.join(sorted(names))}.")
    values = dict(extra)
    for name, f in names.items():
        if name not in raw:
            continue
        key = prefix + name
        expected = field_type(cls, name)
        if dataclasses.is_dataclass(expected):
            section = raw[name]
            if section is None:
                section = {}
            if not isinstance(section, dict):
                raise ConfigError(f"{label}: {key} must be a mapping of keys, got {_shown(section)}.")
            values[name] = build(expected, section, label, prefix=key + ".", extra={})
        else:
            values[name] = _checked(_coerce(raw[name], expected, f, f"{label}: {key}"), f, label, key)
    return cls(**values)


def check_one(cls: type, name: str, value: Any, origin: str) -> None:
    """Judge one key's value on its own, as `build` would, with refusals naming `origin` instead of a file.

    For values that come from elsewhere than the file (an environment variable): the user must be sent
    to the variable, not to a file that does not hold the bad value.
    """
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    _checked(_coerce(value, field_type(cls, name), f, origin), f, origin, key=None)


def _checked(value: Any, f: dataclasses.Field, label: str, key: str | None) -> Any:
    """The field's own `check`, when it has one; a ValueError from it becomes the key's ConfigError.

    A check of a list may name the entry itself (`stages[2].where: ...`); otherwise the key is named here
    (unless `key` is None: `label` already says where the value came from).
    """
    check = f.metadata.get("check")
    if check is None or value is None:
        return value
    try:
        return check(value)
    except ValueError as exc:
        sentence = str(exc)
        named = key is None or sentence.startswith((f"{key}[", f"{key}.", f"{key}:"))
        raise ConfigError(f"{label}: {'' if named else key + ': '}{sentence}.") from None


def _coerce(value: Any, expected: Any, f: dataclasses.Field, where: str) -> Any:
    if f.metadata.get("secret") and value not in (None, "") and not _is_text(value):
        # Every other refusal quotes the value; a password must not end up in a terminal or a log.
        raise ConfigError(f"{where}: expected the secret as text (quote it in YAML); its value is not shown.")
    default = default_of(f)
    hint = f" (default {default!r})" if default not in (None, {}) else ""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(expected) if t is not type(None)]
        if value is None or value == "":
            return None
        return _coerce(value, options[0], f, where)
    if origin is Literal:
        choices = typing.get_args(expected)
        for choice in choices:
            if value == choice and type(value) is type(choice):
                return choice
            if isinstance(value, str) and isinstance(choice, str) and value.lower() == choice.lower():
                return choice
        shown = " | ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in choices)
        raise ConfigError(f"{where}: expected one of {shown}, got {_shown(value)}{hint}.")
    if expected is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {_shown(value)}{hint}.")
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected a whole number{_bounds(f)}, got {_shown(value)}{hint}.")
        return _checked_range(value, f, where, hint)
    if expected is float:
        # .nan passes every bound check and .inf or 1e400 never elapse: only finite numbers are durations.
        if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
            raise ConfigError(f"{where}: expected a finite number{_bounds(f)}, got {_shown(value)}{hint}.")
        return _checked_range(float(value), f, where, hint)
    if expected is str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: expected a non-empty string, got {_shown(value)}{hint}.")
        if "\0" in value:
            raise ConfigError(f"{where}: expected a string without NUL characters, got {_shown(value)}.")
        return value
    if expected is dict:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(v, str | int | float | bool) for v in value.values()):
            raise ConfigError(f"{where}: expected a mapping of property names to scalar values, got {_shown(value)}.")
        return {str(k): v for k, v in value.items()}
    if origin is tuple:
        element = typing.get_args(expected)[0]
        if value is None:
            return ()
        # A tuple is what to_mapping() writes back for these keys: a config must survive the round trip.
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {_shown(value)}{hint}.")
        if element is str:
            for item in value:
                if not isinstance(item, str) or not item.strip() or "\0" in item:
                    raise ConfigError(f"{where}: expected a list of non-empty strings, got {_shown(item)} in it.")
        return tuple(value)
    raise TypeError(f"config schema has an unsupported type {expected!r} at {where}")  # our bug, not the user's


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip()) and "\0" not in value


def _checked_range(value: float, f: dataclasses.Field, where: str, hint: str) -> Any:
    low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{where}: expected a value{_bounds(f)}, got {value!r}{hint}.")
    return value


def _bounds(f: dataclasses.Field) -> str:
    low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
    if low is not None and high is not None:
        return f" from {low} to {high}"
    if low is not None:
        return f" of at least {low}"
    return ""


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _shown(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return clipped(repr(value))
