"""One run per run folder: a start never mixes the files of two runs.

``ganscale train --out R`` where R already holds a run (a complete checkpoint, or metrics
rows) is refused unless ``--resume`` (continue it) or ``--overwrite`` (remove it first) says
what to do. A resume whose config builds networks of other shapes than the checkpoint's is
refused, naming the model keys that differ. These checks write nothing: a refused start
leaves R exactly as it was. On a resume, what R holds past the resumed step (metrics rows,
later checkpoints) belongs to an abandoned continuation and is dropped, so every step is
logged once and ``--resume latest`` never picks the old timeline.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ganscale.config import Config, load_config
from ganscale.errors import GanscaleError
from ganscale.outputs.tracking import MetricsFile
from ganscale.run_layout import METRICS, RUN_ENTRIES, RUN_GLOBS
from ganscale.train import checkpoint as ckpt
from ganscale.train.plan import d_norm_of

SHAPE_KEYS = (
    "arch",
    "conditional",
    "image_size",
    "z_dim",
    "g_channels",
    "d_channels",
    "g_blocks",
    "d_norm",
    "head",
    "head_layers",
    "spectral_norm",
    "g_condition",
)
"""The model.* keys that can change the networks' parameter shapes (or names)."""


class RunFolderError(GanscaleError):
    """A start that would mix two runs in one folder, or resume a checkpoint into other shapes."""


@dataclass(frozen=True)
class Start:
    """How a ``train`` start treats its run folder (decided before anything is written)."""

    overwrite: bool
    """Remove the previous run's files first."""
    found: str | None
    """What the folder held (for the messages), None when it held no run."""


def metric_rows(path: Path) -> int:
    """Lines of a metrics.jsonl (0 when there is none)."""
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def run_in(run_dir: Path) -> str | None:
    """What shows that ``run_dir`` holds a run ("checkpoints up to step 6, 3 metrics rows"),
    None when it holds none (a folder with other files, or a start that wrote no row yet)."""
    parts = []
    refs = ckpt.list_checkpoints(run_dir)
    if refs:
        parts.append(f"checkpoints up to step {refs[-1].step}")
    rows = metric_rows(run_dir / METRICS)
    if rows:
        parts.append(f"{rows} metrics rows")
    return ", ".join(parts) or None


def plan_start(cfg: Config, run_dir: Path, resume: str | None, overwrite: bool) -> Start:
    """Check the run folder for this start; raises :class:`RunFolderError` (writes nothing)."""
    if resume is not None and overwrite:
        raise RunFolderError(
            "--resume and --overwrite contradict each other: --resume continues the run in "
            f"{run_dir}, --overwrite removes it; pass one of them"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"--out {run_dir} is a file, not a folder; pick a folder for the run")
    found = run_in(run_dir) if run_dir.is_dir() else None
    if resume is None:
        if found and not overwrite:
            raise RunFolderError(
                f"run folder {run_dir} already holds a run ({found}); continue it with --resume, "
                f"start it over with --overwrite (removes that run's files), or train into a new --out"
            )
        return Start(overwrite=overwrite, found=found)
    folder = ckpt.resolve_resume(run_dir, resume)
    if folder is not None:
        ckpt.read_state(folder)  # its format version
        changed = shape_changes(cfg, folder)
        if changed:
            raise RunFolderError(
                f"--resume {folder}: the config gives networks of other shapes than the checkpoint's "
                f"({'; '.join(changed)}); resume with the checkpoint's model settings, or start a new "
                f"run with --overwrite or a new --out"
            )
    return Start(overwrite=False, found=found)


def clear_run(run_dir: Path, start: Start) -> str:
    """``--overwrite``: remove the previous run's files; the line that says so."""
    if not start.found:
        return f"--overwrite: {run_dir} held no previous run"
    return f"--overwrite: removed the previous run in {run_dir} ({', '.join(remove_run_files(run_dir))})"


def remove_run_files(run_dir: Path) -> list[str]:
    """Remove a run's files from ``run_dir`` (only :data:`RUN_ENTRIES` and :data:`RUN_GLOBS`,
    only inside it; links are removed, never followed). Returns their names."""
    paths = [run_dir / name for name in RUN_ENTRIES]
    paths += sorted(p for pattern in RUN_GLOBS for p in run_dir.glob(pattern))
    removed = []
    for p in paths:
        if p.is_symlink() or p.is_file():
            p.unlink()
            removed.append(p.name)
        elif p.is_dir():
            shutil.rmtree(p)
            removed.append(p.name + "/")
    return removed


def drop_after_resume(run_dir: Path, drop_rows: Callable[[int], int], step: int) -> str | None:
    """On a resume at ``step``: what the folder holds past it is an abandoned continuation;
    its metrics rows (``drop_rows(step)``, the run log's) and later checkpoints go (every step
    logged once, one "latest")."""
    rows = drop_rows(step)
    later = ckpt.remove_after(run_dir, step)
    if not (rows or later):
        return None
    ckpts = f" and the later checkpoints (steps {', '.join(map(str, later))})" if later else ""
    return f"resume at step {step}: dropped {rows} metrics rows past it{ckpts}"


def _shapes(cfg: Config, num_classes: list[int]) -> dict[str, tuple[int, ...]]:
    from ganscale.models import build_discriminator, build_generator

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        G = build_generator(cfg.model, num_classes)
        D = build_discriminator(cfg.model, num_classes, norm=d_norm_of(cfg))
    out = {f"G.{k}": tuple(v.shape) for k, v in G.state_dict().items()}
    return out | {f"D.{k}": tuple(v.shape) for k, v in D.state_dict().items()}


def _model_value(cfg: Config, key: str) -> Any:
    return d_norm_of(cfg) if key == "d_norm" else getattr(cfg.model, key)


def saved_model(folder: Path) -> tuple[Config, list[int]]:
    """The checkpoint's config and class counts, what its networks were built from. Raises
    :class:`RunFolderError` (one line) when they cannot be read: the shape check cannot be
    skipped silently, it is what keeps a resume from loading weights into other networks."""
    try:
        saved = load_config(folder / "config.yaml")
        meta = json.loads((folder / "generator.json").read_text())
        num_classes = meta.get("num_classes") or [] if isinstance(meta, dict) else None
        if not isinstance(num_classes, list) or not all(isinstance(n, int) for n in num_classes):
            raise ValueError(f"num_classes is {num_classes!r}, not a list of integers")
    except (GanscaleError, OSError, ValueError) as e:  # JSONDecodeError is a ValueError
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RunFolderError(
            f"--resume {folder}: cannot read the checkpoint's config.yaml/generator.json to compare "
            f"network shapes ({why}); resume from another checkpoint, or start a new run with "
            f"--overwrite or a new --out"
        ) from None
    return saved, num_classes


def shape_changes(cfg: Config, folder: Path) -> list[str]:
    """The model keys whose change makes ``cfg``'s networks differ in shape from those of the
    checkpoint in ``folder`` ("model.g_channels 8 -> 16"); empty when the shapes agree."""
    saved, num_classes = saved_model(folder)
    if _shapes(saved, num_classes) == _shapes(cfg, num_classes):
        return []
    changed = [
        f"model.{k} {_model_value(saved, k)} -> {_model_value(cfg, k)}"
        for k in SHAPE_KEYS
        if _model_value(saved, k) != _model_value(cfg, k)
    ]
    return changed or ["the networks' parameter shapes"]


class RunMetrics(MetricsFile):
    """``RUN/metrics.jsonl`` of the trainer: opened at the first row (so a resume can first
    drop the rows past its step), and rewritten atomically by :meth:`drop_after`."""

    def __init__(self, path: Path | None) -> None:
        super().__init__(None)
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        if self._f is None and self.path is not None:
            self._f = open(self.path, "a")  # noqa: SIM115 - held open for the run
        super().write(record)

    def drop_after(self, step: int, keep_events: bool = False) -> int:
        """Drop the rows logged after ``step`` (``keep_events``: except event rows: a rollback
        keeps what happened); atomic (write aside, fsync, rename). Returns the rows dropped."""
        if self.path is None or not self.path.is_file():
            return 0
        self.close()  # reopened at the next row
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                dropped += bool(line.strip())  # a torn line (a kill mid-write)
                continue
            later = isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step
            if later and not (keep_events and "event" in row):
                dropped += 1
                continue
            kept.append(line)
        if dropped:
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            with open(tmp, "w") as f:
                f.write("".join(line + "\n" for line in kept))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        return dropped
