"""YAML -> frozen, typed dataclasses, with `section.key=value` overrides from the command line.

A config file holds one section per stage plus top-level keys shared by all stages (`run_dir`, `ray`).
Every stage defines its own frozen dataclass beside its code; `build(cls, section)` checks that each key
exists on the dataclass and each value has the declared type, and names the offending key when not.
A dataclass may check its values further in `__post_init__` by raising ConfigError("field: problem"); `build`
prefixes the section. Numbers YAML 1.1 leaves as strings (`1e-3`, `5e4`) are read as numbers.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml


class ConfigError(ValueError):
    """A config key is unknown, missing, or of the wrong type; the message names it."""


SHARED_KEYS = ("run_dir", "ray_address", "num_cpus")

# YAML 1.1 (PyYAML) reads `1e-3` and `5e4` as strings: it wants a dot and a signed exponent (`1.0e-3`).
_NUMBER = re.compile(r"[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _number(value: Any, tp: type, where: str) -> Any:
    """A numeric string or an integral float -> `tp` (int or float); anything else is returned as is."""
    number = value
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = float(value.strip().replace("_", ""))
    if tp is int and isinstance(number, float):
        if not number.is_integer():
            raise ConfigError(f"{where}: expected int, got {value!r}")
        return int(number)
    return float(number) if tp is float and isinstance(number, (int, float)) else value


def _check(value: Any, tp: Any, where: str) -> Any:
    """Return `value` coerced to `tp` (int->float, list->tuple) or raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        return tuple(_check(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {tp.__name__}, got bool {value!r}")
    if tp in (int, float):
        value = _number(value, tp, where)
    if not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def build(cls: type, data: dict | None, where: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys, wrong types and missing keys raise ConfigError."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping of keys, got {type(data).__name__} {data!r}")
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"{cls.__name__} accepts: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _check(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {key}")
    try:
        return cls(**kwargs)
    except ConfigError as e:  # from the class's own __post_init__ checks: "field: problem"
        raise ConfigError(f"{where}.{e}" if where else str(e)) from None


def parse_overrides(pairs: list[str]) -> dict:
    """['train.epochs=5', 'run_dir=runs/x'] -> nested dict; values parsed as YAML scalars/lists."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not key=value")
        key, raw = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r}: {'.'.join(parts[:i + 1])} is set to a value, not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return out


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_raw(path: str | Path | None, overrides: list[str] = ()) -> dict:
    """Read a YAML config and apply overrides; returns the merged mapping."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections")
    return merge(data, parse_overrides(list(overrides)))


def section(raw: dict, name: str, cls: type) -> Any:
    """Build the config of stage `name`: its section plus the shared top-level keys it declares."""
    data = raw.get(name)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping of keys, got {type(data).__name__} {data!r}")
    data = dict(data or {})
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in SHARED_KEYS:
        if key in fields and key not in data and key in raw:
            data[key] = raw[key]
    return build(cls, data, name)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
