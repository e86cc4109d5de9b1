"""Typed configuration: one dataclass per component, loaded from YAML.

Every component's options live in a dataclass whose fields carry a docstring.
The same dataclass is filled from ``configs/*.yaml``, overridden from the
command line with ``--set section.key=value`` (values parsed as YAML), and
saved resolved next to every run so a result always says how it was made.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import re
import typing
from pathlib import Path
from typing import Any, Iterable, Optional, TypeVar

import yaml

__all__ = ["ConfigError", "from_dict", "load_config", "apply_overrides", "to_dict", "save_config", "parse_value",
           "exponent_float", "type_problem", "check_field_types"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override that does not fit its dataclass."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


_SCALARS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_PLURALS = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}


def type_problem(tp: Any, value: Any) -> Optional[str]:
    """What ``value`` is not, for a field annotated ``tp`` (``None`` when it fits). Checked: ``int``, ``float``
    (an integer is a number), ``bool``, ``str``, ``Optional`` of these, ``list`` of them and ``dict``; other
    annotations are left to the dataclass."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if value is None or len(rest) != 1:
            return None
        problem = type_problem(rest[0], value)
        return None if problem is None else f"{problem} or null"
    if tp in _SCALARS:
        ok = (isinstance(value, bool) if tp is bool
              else isinstance(value, (int, float)) and not isinstance(value, bool) if tp is float
              else isinstance(value, int) and not isinstance(value, bool) if tp is int
              else isinstance(value, str))
        return None if ok else _SCALARS[tp]
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return "a list"
        if origin is not tuple and args and args[0] in _SCALARS and any(type_problem(args[0], v) for v in value):
            return f"a list of {_PLURALS[args[0]]}"
        return None
    if tp is dict or origin is dict:
        return None if isinstance(value, dict) else "a mapping"
    return None


def check_field_types(obj: Any) -> None:
    """Raise ``ValueError`` naming the first field of dataclass ``obj`` whose value is not of its annotated type
    (:func:`type_problem`); for dataclasses built from keyword options rather than through :func:`from_dict`."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        problem = type_problem(hints[f.name], getattr(obj, f.name))
        if problem:
            raise ValueError(f"{f.name} must be {problem}, got {getattr(obj, f.name)!r}")


def from_dict(cls: type[T], data: Optional[dict], where: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) dict; unknown keys are an error."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(where + k for k in unknown)}; valid: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if tp in (float, Optional[float]):  # "lr: 1e-4" in a YAML file is a string to PyYAML
            value = exponent_float(value)
        if _is_dataclass_type(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{name} must be a mapping, got {value!r}")
            value = from_dict(tp, value, where=f"{where}{name}.")
        else:
            problem = type_problem(tp, value)
            if problem:
                raise ConfigError(f"{where}{name} must be {problem}, got {value!r}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where.rstrip('.') or cls.__name__}: {e}") from e


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def exponent_float(value: Any) -> Any:
    """``value``, or the float it spells when it is a string like ``1e-4``: YAML 1.1 (PyYAML) reads an exponent
    without a dot as a string, where a user means the number."""
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    return value


def parse_value(raw: str) -> Any:
    """A command-line value parsed as YAML, with :func:`exponent_float`: ``"5"`` -> 5, ``"[1, 2]"`` -> [1, 2],
    ``"1e-4"`` -> 0.0001, ``"a.pt"`` -> ``"a.pt"``."""
    return exponent_float(yaml.safe_load(raw))


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Apply ``key.sub=value`` strings to a nested dict (values parsed by :func:`parse_value`)."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = parse_value(raw)
    return data


def load_config(cls: type[T], path: Optional[str | Path] = None, overrides: Iterable[str] = ()) -> T:
    """Defaults of ``cls``, updated from the YAML file at ``path``, then from ``overrides``.

    A file may start from another: ``base: other.yaml`` (a path relative to the file) loads that file first, and
    this file's keys then replace its keys, section by section (lists and values replaced whole)."""
    data = read_yaml_config(Path(path)) if path is not None else {}
    return from_dict(cls, apply_overrides(data, overrides))


def read_yaml_config(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The mapping in the YAML file at ``path``, with its ``base:`` chain resolved (see :func:`load_config`)."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (the base of {_seen[-1]})" if _seen else ""))
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a file path, got {base!r}")
    base_path = path.parent / base
    if base_path.resolve() in {p.resolve() for p in (*_seen, path)}:
        raise ConfigError(f"{path}: base {base} leads back to itself")
    return _merge(read_yaml_config(base_path, (*_seen, path)), loaded)


def _merge(base: dict, top: dict) -> dict:
    """``base`` updated by ``top``: mappings merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def to_dict(obj: Any) -> dict:
    return dataclasses.asdict(obj)


def save_config(obj: Any, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))
