"""YAML + ``--set a.b=v`` overrides -> a validated :class:`~ganscale.config.schema.Config`.

Build is strict: an unknown key is an error naming the closest valid key, a value of the wrong
type is an error naming the key, the value and the expected type; then each dataclass validates
itself in ``__post_init__``. Every error is one line (:class:`ConfigError`).

Why a small hand-written coercion and not pydantic v2 (installed here, via typer and wandb):
measured with ``TypeAdapter(Config)`` over these same dataclasses, its lax mode accepts
``batch_size: true`` (as 1), ``batch_size: "3"``, ``hflip: 1`` and ``hflip: "yes"``, and refuses
an empty section (``train:`` reads as None); its strict mode refuses ``g_lr: 2e-4``, which YAML 1.1
reads as a string. Our semantics would need per-field validators in the schema, plus a layer
turning its error types (``unexpected_keyword_argument``, ``literal_error``, ``int_from_float``,
``finite_number``, ``dataclass_type``...) back into one line with the closest valid name:
about as many lines as the walk below, with two validation layers instead of one. The walk
handles exactly the field types the schema uses (bool, int, float, str, Literal, nested
dataclasses; list, union and Any for completeness); a new field type needs a branch here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from ganscale.config.schema import Config
from ganscale.errors import ConfigError


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _choice(value: Any, choices: tuple[Any, ...], key: str) -> Any:
    if isinstance(value, bool) and "no" in choices:  # YAML 1.1 reads a bare `no` as False
        value = "yes" if value else "no"
    if value in choices:
        return value
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"config key {key}: {value!r} is not one of {', '.join(map(str, choices))}{hint}")


def _number(value: Any, key: str) -> float | None:
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):  # YAML 1.1 reads 2e-4 as a string
        with contextlib.suppress(ValueError):
            number = float(value)
    # nan/inf (.inf, "inf", 1e400) would pass every "> 0" check and train on NaN
    if number is not None and not math.isfinite(number):
        raise ConfigError(f"config key {key}: must be a finite number, got {value!r}")
    return number


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one leaf value against its annotated type."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return _choice(value, typing.get_args(tp), key)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            with contextlib.suppress(ConfigError):
                return _coerce(value, arg, key)
        raise ConfigError(f"config key {key}: expected {_type_name(tp)}, got {value!r}")
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and is_number and (isinstance(value, int) or value.is_integer()):
        return int(value)
    if tp is float:
        number = _number(value, key)
        if number is not None:
            return number
    if tp is str and (is_number or isinstance(value, str)):
        return str(value)
    if origin is list and isinstance(value, list):
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    raise ConfigError(f"config key {key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _unknown_key(full: str, prefix: str, names: list[str]) -> ConfigError:
    close = difflib.get_close_matches(full.removeprefix(prefix), names, n=1, cutoff=0.5)
    if close:
        hint = f"; did you mean {prefix}{close[0]}?"
    else:  # a key put in the wrong section: look at every full key
        close = difflib.get_close_matches(full, valid_keys(), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else f"; valid keys: {', '.join(names)}"
    shown = full if full.isprintable() else repr(full)  # a key with a newline: keep one line
    return ConfigError(f"unknown config key {shown}{hint}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:  # an empty section (`train:`) keeps its defaults
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key {prefix.rstrip('.') or 'top level'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise _unknown_key(full, prefix, names)
        tp = hints[key]
        kwargs[key] = (
            _build(tp, value, f"{full}.") if dataclasses.is_dataclass(tp) else _coerce(value, tp, full)
        )
    return cls(**kwargs)


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _all_keys(tp, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def valid_keys() -> list[str]:
    """Every dotted key a config accepts (for docs and error messages)."""
    return _all_keys(Config)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b=value`` override to a raw config dict (value parsed as YAML)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set train.batch_size=128")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    *sections, leaf = key.strip().split(".")
    node = data
    for p in sections:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {p} is not a section")
        node = child
    node[leaf] = value


def read_yaml(path: Path) -> dict[str, Any]:
    """The raw mapping of a YAML config file (one-line ConfigError if missing or malformed)."""
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass a YAML file such as configs/acgan.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path}{where}: {problem}; fix the YAML syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of sections")
    return data


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a raw (YAML-shaped) dict."""
    return _build(Config, data, "")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read YAML (or none: all defaults), apply ``--set`` overrides, build and validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        data = read_yaml(path)
        data.setdefault("name", path.stem)
    for assignment in overrides or []:
        apply_override(data, assignment)
    return config_from_dict(data)


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tmp.replace(path)
