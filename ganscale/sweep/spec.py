"""A sweep spec (YAML) -> its cells: one run folder per (grid point, seed).

    base: configs/quickstart.yaml        # the config every cell starts from
    out: runs/lambda-sweep               # default runs/sweeps/<spec name>
    set: [train.max_steps=600]           # overrides for every cell (not in the cell names)
    grid:                                # the axes: every combination is one cell
      loss.class_weight: [1, 2, 5]
      model.arch:
        - dcgan
        - {model.arch: resnet, model.g_blocks: 4}   # a value that sets several keys
    seeds: [0, 1]                        # `--set seed=S`, one folder per seed (default [0])
    eval: {n: 1000}                      # run `ganscale eval RUN --n 1000` after training
    # eval: {n: 2000, corpus: configs/quickstart.yaml}   # judged against another corpus
    #                                    # (a corpus folder or a config whose corpus to use)
    minutes: 15                          # optional wall-clock budget per cell (SIGTERM, then done)

A cell's folder is ``OUT/<k=v,...>/seed-S``: the grid point's overrides sorted by key, so
the name does not depend on the order of the axes in the spec. Relative paths (``base``,
``out``) are read from the current folder, ``base`` also from the spec's folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ganscale.config.load import read_yaml
from ganscale.errors import ConfigError

SPEC_KEYS = ("base", "out", "set", "grid", "seeds", "eval", "minutes")
MAX_NAME = 150
"""Longer cell names are cut and end in a hash (most file systems allow 255 bytes)."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")


def _value_text(value: Any) -> str:
    """A value as ``--set`` (and so YAML) reads it back: 5, 0.5, true, resnet."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class Cell:
    """One run of the sweep."""

    name: str
    """Folder name of the grid point, e.g. ``loss.class_weight=5,model.arch=resnet``."""
    seed: int
    overrides: tuple[str, ...]
    """The grid point's ``--set`` overrides (sorted by key), without the seed."""

    @property
    def folder(self) -> str:
        """Path of the run below the sweep folder."""
        return f"{self.name}/seed-{self.seed}"

    def train_sets(self, fixed: list[str]) -> list[str]:
        """All overrides of the cell's training run: the spec's, the grid point's, the seed."""
        return [*fixed, *self.overrides, f"seed={self.seed}"]


@dataclass
class SweepSpec:
    """A parsed spec; see the module docstring for the YAML."""

    base: Path
    out: Path
    sets: list[str] = field(default_factory=list)
    grid: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Axis -> its values, each the mapping of keys it sets."""
    seeds: list[int] = field(default_factory=lambda: [0])
    eval_n: int | None = None
    minutes: float | None = None
    source: Path | None = None
    eval_corpus: Path | None = None
    """``--corpus`` of every evaluation (a corpus folder or a config); None: the run's own."""

    def cells(self) -> list[Cell]:
        """Every (grid point, seed), in spec order: the first axis varies slowest."""
        points: list[dict[str, Any]] = [{}]
        if self.grid:
            points = []
            for combo in itertools.product(*self.grid.values()):
                merged: dict[str, Any] = {}
                for value in combo:
                    merged |= value
                points.append(merged)
        cells = []
        for point in points:
            overrides = tuple(f"{k}={_value_text(v)}" for k, v in sorted(point.items()))
            name = cell_name(overrides)
            cells += [Cell(name, seed, overrides) for seed in self.seeds]
        names = [c.folder for c in cells]
        if len(set(names)) != len(names):
            raise ConfigError(f"sweep {self.source}: two grid points give the same cell; check the grid")
        return cells

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


def cell_name(overrides: tuple[str, ...]) -> str:
    """``k=v,k=v`` with file-system-unsafe characters replaced; cut with a hash when long."""
    if not overrides:
        return "base"
    name = _UNSAFE.sub("_", ",".join(overrides))
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(",".join(overrides).encode()).hexdigest()[:10]
        name = f"{name[: MAX_NAME - 11]}-{digest}"
    return name


def _axis(key: str, values: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: grid.{key} must be a non-empty list of values")
    out = []
    for v in values:
        if isinstance(v, dict):
            if not v or not all(isinstance(k, str) for k in v):
                raise ConfigError(f"{where}: grid.{key}: a mapping value needs config keys, got {v!r}")
            out.append(dict(v))
        elif isinstance(v, (list, type(None))):
            raise ConfigError(f"{where}: grid.{key}: {v!r} is not a scalar or a mapping of keys")
        else:
            out.append({key: v})
    return out


def _path(raw: Any, key: str, where: str) -> Path:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{where}: {key} must be a path, got {raw!r}")
    return Path(raw)


def parse_spec(data: dict[str, Any], source: Path | None = None) -> SweepSpec:
    """Validate a raw spec mapping (strict: an unknown key is an error)."""
    where = f"sweep {source}" if source else "sweep spec"
    for key in data:
        if key not in SPEC_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {', '.join(SPEC_KEYS)}")
    if "base" not in data:
        raise ConfigError(f"{where}: needs base: CONFIG.yaml")
    base = _path(data["base"], "base", where)
    if not base.is_absolute() and not base.is_file() and source is not None:
        base = source.parent / base
    if not base.is_file():
        raise ConfigError(f"{where}: base config {data['base']} not found")
    stem = source.stem if source else "sweep"
    out = _path(data.get("out", f"runs/sweeps/{stem}"), "out", where)
    sets = data.get("set") or []
    if not isinstance(sets, list) or not all(isinstance(s, str) and "=" in s for s in sets):
        raise ConfigError(f"{where}: set must be a list of KEY=VALUE strings")
    grid_raw = data.get("grid") or {}
    if not isinstance(grid_raw, dict):
        raise ConfigError(f"{where}: grid must map config keys to lists of values")
    grid = {str(k): _axis(str(k), v, where) for k, v in grid_raw.items()}
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(type(s) is int for s in seeds):
        raise ConfigError(f"{where}: seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds {seeds} repeat a seed")
    eval_n, eval_corpus = None, None
    if data.get("eval") is not None:
        ev = data["eval"]
        if not isinstance(ev, dict) or set(ev) - {"n", "corpus"} or type(ev.get("n", 0)) is not int:
            raise ConfigError(f"{where}: eval must be a mapping {{n: IMAGES, corpus: PATH}}, got {ev!r}")
        eval_n = int(ev.get("n", 10000))
        if eval_n < 16:
            raise ConfigError(f"{where}: eval.n {eval_n}: use at least 16 images")
        if ev.get("corpus") is not None:
            eval_corpus = _path(ev["corpus"], "eval.corpus", where)
            if not eval_corpus.exists():
                raise ConfigError(f"{where}: eval.corpus {eval_corpus} not found (a corpus folder or config)")
            eval_corpus = eval_corpus.resolve()
    minutes = data.get("minutes")
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float))):
        raise ConfigError(f"{where}: minutes must be a number, got {minutes!r}")
    if minutes is not None and minutes <= 0:
        raise ConfigError(f"{where}: minutes must be > 0, got {minutes}")
    spec = SweepSpec(
        base.resolve(),
        out,
        list(sets),
        grid,
        list(seeds),
        eval_n,
        minutes,
        source.resolve() if source else None,
        eval_corpus,
    )
    spec.cells()  # name clashes are an error now, not halfway through
    return spec


def load_spec(path: Path, extra_sets: list[str] | None = None, grid: list[str] | None = None) -> SweepSpec:
    """Read a spec file; ``extra_sets`` are appended to its ``set`` and each ``grid`` entry
    ``KEY=V1,V2`` replaces (or adds) one axis, e.g. ``model.arch=dcgan`` for a subset."""
    data = read_yaml(path)
    if extra_sets:
        data["set"] = [*(data.get("set") or []), *extra_sets]
    for entry in grid or []:
        key, sep, values = entry.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--grid {entry!r}: expected KEY=V1,V2,...")
        axis = {**(data.get("grid") or {})}
        axis[key] = [yaml.safe_load(v) for v in values.split(",")]
        data["grid"] = axis
    return parse_spec(data, path)


MANIFEST = "sweep.json"


def write_manifest(spec: SweepSpec, cells: list[Cell]) -> Path:
    """OUT/sweep.json: the spec and its cells (what `report` and the Slurm array tasks read)."""
    spec.out.mkdir(parents=True, exist_ok=True)
    path = spec.out / MANIFEST
    body = {
        "format": "ganscale-sweep",
        "spec": spec.to_dict(),
        "cells": [{"index": i, "folder": c.folder, **dataclasses.asdict(c)} for i, c in enumerate(cells)],
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(body, indent=1) + "\n")
    tmp.replace(path)
    return path


def read_manifest(path: Path) -> tuple[SweepSpec, list[Cell]]:
    """The spec and cells written by :func:`write_manifest`."""
    try:
        body = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a readable sweep manifest ({e})") from None
    s = body["spec"]
    spec = SweepSpec(
        base=Path(s["base"]),
        out=path.parent,
        sets=s["sets"],
        grid=s["grid"],
        seeds=s["seeds"],
        eval_n=s["eval_n"],
        minutes=s["minutes"],
        source=Path(s["source"]) if s["source"] else None,
        eval_corpus=Path(s["eval_corpus"]) if s.get("eval_corpus") else None,
    )
    cells = [Cell(c["name"], c["seed"], tuple(c["overrides"])) for c in body["cells"]]
    return spec, cells
