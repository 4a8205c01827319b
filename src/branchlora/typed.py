"""The one converter of configuration values: YAML / command-line forms to typed, range-checked fields.

Every configuration dataclass calls `check_fields(self)` in `__post_init__`; a field's type hint says what
a value becomes ("1e-3" -> 0.001 for a float, "1e2" -> 100 and "abc" refused for an int, YAML's booleans
no / yes -> "no" / "yes" for a string, 3 -> [3] and "0,1" -> [0, 1] for a list) and its metadata says
which values are allowed: `min` (inclusive), `above` (exclusive), `max`, `choices`.
A refused value raises ConfigError naming the key and the value, in one line.
"""

from __future__ import annotations

import difflib
import math
import types
from dataclasses import fields, is_dataclass
from functools import cache
from typing import Any, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A configuration value that cannot be used; `key` grows a prefix per enclosing section."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key or 'config'}: {problem}")
        self.key, self.problem = key, problem

    def under(self, section: str) -> ConfigError:
        if not section:
            return self
        return ConfigError(f"{section}.{self.key}" if self.key else section, self.problem)


def _number(value: Any, kind: type) -> Any:
    """`value` as `kind` (int or float) if it is one, or a string that reads as one (YAML 1.1 reads 1e-3,
    without a dot, as a string); else None.  A bool is never a number here."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (kind is float and isinstance(value, float)):
        return kind(value)
    if isinstance(value, str):
        try:
            return kind(value.strip())
        except ValueError:
            return None
    return None


def _scalar(value: Any, hint: type, key: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if hint is int:
        number = _number(value, int)
        whole = _number(value, float) if number is None else None  # 1e2 and 100.0 are whole numbers: 100
        if whole is not None and math.isfinite(whole) and whole.is_integer():
            number = int(whole)
        if number is None:
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return number
    if hint is float:
        number = _number(value, float)
        if number is None:
            raise ConfigError(key, f"expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(key, f"expected a finite number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, bool):  # YAML reads no / yes / off / on as booleans: a string choice means no / yes
            return "yes" if value else "no"
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(key, f"expected a string, got {value!r}")
    if hint is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(key, f"expected a mapping {{key: value, ...}}, got {value!r}")
    return value  # Any, or a type this converter leaves to the class


def convert(value: Any, hint: Any, key: str) -> Any:
    """`value` as the type `hint` says; for a list, a scalar becomes a one-item list and a string with
    commas its items."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        arms = get_args(hint)
        if isinstance(value, (list, tuple)) and any(get_origin(a) is list for a in arms):
            return convert(value, next(a for a in arms if get_origin(a) is list), key)
        return convert(value, next(a for a in arms if get_origin(a) is not list), key)
    if origin is list:
        (item,) = get_args(hint)
        if get_origin(item) is list and isinstance(value, list) and value and not isinstance(value[0], list):
            value = [value]  # orders: [a, b] is one order
        if isinstance(value, str) and get_origin(item) is not list:
            value = [v.strip() for v in value.split(",")]  # --set seeds=0,1,2 (YAML reads a string)
        items = value if isinstance(value, (list, tuple)) else [value]
        return [convert(v, item, f"{key}[{i}]") for i, v in enumerate(items)]
    if origin is dict:
        return _scalar(value, dict, key)
    return _scalar(value, hint, key)


def _check_range(value: Any, meta: dict, key: str) -> None:
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_range(v, meta, f"{key}[{i}]")
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(key, f"expected one of {', '.join(map(str, meta['choices']))}, got {value!r}")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if "min" in meta and value < meta["min"]:
        raise ConfigError(key, f"must be >= {meta['min']}, got {value!r}")
    if "above" in meta and value <= meta["above"]:
        raise ConfigError(key, f"must be > {meta['above']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(key, f"must be <= {meta['max']}, got {value!r}")


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def check_fields(obj: Any, minimum: float | None = None) -> None:
    """Convert every field of the dataclass `obj` in place and check it against its metadata's rules.

    `minimum` is a default `min` for numeric fields without rules of their own (e.g. model sizes >= 1)."""
    hints = _hints(type(obj))
    for f in fields(obj):
        value = convert(getattr(obj, f.name), hints[f.name], f.name)
        meta = dict(f.metadata)
        if minimum is not None and not meta.keys() & {"min", "above", "choices"}:
            meta["min"] = minimum
        _check_range(value, meta, f.name)
        object.__setattr__(obj, f.name, value)  # frozen dataclasses too


def build(cls: type, data: Any, section: str) -> Any:
    """`cls(**data)` for a mapping from a config file: unknown keys name the valid ones (and the likely
    intended one); every error is a ConfigError prefixed with `section`."""
    if not isinstance(data, dict):
        raise ConfigError(section, f"expected a mapping {{key: value, ...}}, got {data!r}")
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(section, f"unknown key(s) {unknown}{hint}; valid keys: {sorted(known)}")
    data = dict(data)
    for f in fields(cls):  # nested sections (train, eval) are built from their own mappings
        factory = f.default_factory
        if f.name in data and isinstance(factory, type) and is_dataclass(factory):
            data[f.name] = build(factory, {} if data[f.name] is None else data[f.name], _join(section, f.name))
    try:
        return cls(**data)
    except ConfigError as err:
        raise err.under(section) from None
    except (TypeError, ValueError) as err:
        raise ConfigError(section, str(err)) from None


def checked(cls: type, given: Any, section: str, defaults: dict | None = None) -> dict:
    """The mapping `given`, checked against `cls` (over `defaults`) and converted: only the keys it gave."""
    built = build(cls, {**(defaults or {}), **given} if isinstance(given, dict) else given, section)
    return {key: getattr(built, key) for key in given}


def _join(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key
