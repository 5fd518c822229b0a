"""What a run reports: metrics rows (metrics.jsonl, the tracker), training-health warnings,
the progress bar, sample grids, and the final export. Non-main ranks get null objects
(a null tracker, a metrics file with no path, no progress bar, :class:`NullOutputs`), so the
loop calls the same methods on every rank."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ganscale.config import Config
from ganscale.errors import GanscaleError
from ganscale.outputs.tracking import MetricsFile, Tracker
from ganscale.run_layout import METRICS, SAMPLES
from ganscale.runtime import Runtime
from ganscale.train.ema import EMA
from ganscale.train.monitors import HealthMonitor, HealthWarning
from ganscale.train.run_folder import RunMetrics

# Rows of the fixed sample grid for conditional runs: the study's conditions where the corpus
# has those colours (a spread of its own vocabulary otherwise: sample_conditions).
STUDY_CONDITIONS = [
    "aqua hair orange eyes",
    "blue hair blue eyes",
    "blue hair red eyes",
    "green hair blue eyes",
    "pink hair green eyes",
    "blonde hair purple eyes",
]
GRID_ROWS = 6
"""Rows of the fixed sample grid of a run whose attributes are its own (one per condition)."""


def _quiet(message: str) -> None:
    pass


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=4)


def say(rt: Runtime, message: str | None) -> None:
    """A line on the main process's stdout (nothing for None)."""
    if rt.is_main and message is not None:
        print(message, flush=True)


class RunLog:
    """The run's one writer of ``metrics.jsonl`` (and of the tracker's scalars): step rows every
    ``log.every`` steps (collective: the record is averaged over ranks), events (non-finite
    losses, rollbacks), health warnings, the training-time evaluation's rows; and the progress
    bar. On other ranks the metrics file has no path and the tracker is a null one."""

    def __init__(self, cfg: Config, rt: Runtime, data: Any, tracker: Tracker, metrics: MetricsFile) -> None:
        self.cfg, self.rt, self.data, self.tracker, self.metrics = cfg, rt, data, tracker, metrics
        self.health = HealthMonitor(cfg.loss.adversarial)
        self.warn = _warn if rt.is_main else _quiet
        self.last_row: dict[str, Any] = {}
        self._t, self._images, self._wait = time.perf_counter(), 0, 0.0
        self.progress: Progress | NullProgress = NullProgress()

    def start(self, step: int, images_seen: int, data_wait_s: float) -> None:
        """Start the throughput clock (and the progress bar on the main process)."""
        self._t, self._images, self._wait = time.perf_counter(), images_seen, data_wait_s
        if self.rt.is_main and self.cfg.log.progress:
            self.progress = Progress(self.cfg.train.max_steps or None, step)

    def write(self, row: dict[str, Any]) -> None:
        """One row of metrics.jsonl (every row goes through here)."""
        self.metrics.write(row)

    def event(self, step: int, kind: str, alert: str | None = None, **fields: Any) -> None:
        """An event row ({"step", "event": kind, ...}); ``alert`` also goes to the tracker."""
        if alert is not None:
            self.tracker.alert(kind, alert)
        self.write({"step": step, "event": kind, **fields})

    def drop_after(self, step: int, keep_events: bool = False) -> int:
        """Drop the rows past ``step`` (a resume or a rollback replays those steps); the count."""
        if not isinstance(self.metrics, RunMetrics):  # a file fed in (tests, bench) keeps its rows
            return 0
        return self.metrics.drop_after(step, keep_events=keep_events)

    def log_step(
        self, record: dict[str, torch.Tensor], step: int, images_seen: int, data_wait_s: float
    ) -> None:
        """One metrics row: the step's record averaged over ranks, throughput, learning rates."""
        now = time.perf_counter()
        elapsed = now - self._t
        img_per_s, wait = (images_seen - self._images) / elapsed, (data_wait_s - self._wait) / elapsed
        self._t, self._images, self._wait = now, images_seen, data_wait_s
        keys = sorted(record)
        # the loader's skipped-sample counters ride along in the same all-reduce (summed over ranks)
        counters = self.data.stats()
        counts = [float(counters.get(k, 0)) for k in ("corrupt_skipped", "read_errors")]
        stacked = torch.stack([record[k].float().reshape(()) for k in keys])
        stacked = torch.cat([stacked, torch.tensor(counts, device=stacked.device)])
        values = self.rt.all_reduce_mean(stacked).tolist()
        row: dict[str, Any] = {k: round(v, 6) for k, v in zip(keys, values, strict=False)}
        row["data/corrupt_skipped"], row["data/read_errors"] = (
            round(v * self.rt.world_size) for v in values[len(keys) :]
        )
        row |= {
            "step": step,
            "images_seen": images_seen,
            "images_per_s": round(img_per_s, 2),
            "data_wait_fraction": round(min(1.0, wait), 4),
            "lr/g": self.rt.opt["g"].param_groups[0]["lr"],
            "lr/d": self.rt.opt["d"].param_groups[0]["lr"],
        }
        self.write(row)
        self.tracker.log({k: v for k, v in row.items() if k != "step"}, step=step)
        self.last_row = row
        self.warn_health(self.health.observe_metrics(row))

    def warn_health(self, found: list[HealthWarning]) -> None:
        """A training-health warning goes to the log, the tracker and metrics.jsonl."""
        for w in found:
            self.warn(f"step {w.step}: {w.message}")
            self.tracker.alert(w.signal, w.message)
            self.write(w.row())

    def close(self) -> None:
        self.progress.close()
        self.metrics.close()
        self.tracker.finish()


class NullProgress:
    def update(self, step: int, row: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class Progress(NullProgress):
    """A rich progress bar: step, img/s and losses."""

    def __init__(self, total: int | None, step: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self.bar = RichProgress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            transient=False,
        )
        self.task = self.bar.add_task("train", total=total, completed=step, info="")
        self.bar.start()

    def update(self, step: int, row: dict[str, Any]) -> None:
        info = (
            f"{row.get('images_per_s', 0):.0f} img/s  D {row.get('loss/d', float('nan')):.3f}  "
            f"G {row.get('loss/g', float('nan')):.3f}"
            if row
            else ""
        )
        self.bar.update(self.task, completed=step, info=info)

    def close(self) -> None:
        self.bar.stop()


def sample_conditions(attributes: dict[str, list[str]]) -> np.ndarray | None:
    """The rows of the fixed sample grid as int64 [R, A] class indices (None for an
    unconditional run): the study's conditions where the corpus has those colours; for a corpus
    with attributes of its own, :data:`GRID_ROWS` combinations from its vocabulary that show
    every value of each attribute where the rows allow."""
    from ganscale.outputs.latents import spread_conditions
    from ganscale.shardformat.vocab import parse_tags

    if not attributes:
        return None
    rows = []
    for text in STUDY_CONDITIONS:
        try:
            rows.append(parse_tags(text, attributes))
        except GanscaleError:
            continue
    if rows:
        return np.array(rows, dtype=np.int64)
    return spread_conditions(attributes, GRID_ROWS)


class NullOutputs:
    """The files of a run, on a rank that writes none."""

    def write_samples(self, step: int) -> None:
        pass

    def finish(self, step: int) -> None:
        pass


class Outputs(NullOutputs):
    """The main process's files: sample grids of the EMA generator, the export, the loss plot."""

    def __init__(
        self, cfg: Config, run_dir: Path, rt: Runtime, ema: EMA, meta: dict[str, Any], log: RunLog
    ) -> None:
        self.cfg, self.run_dir, self.rt, self.ema, self.meta, self.log = cfg, run_dir, rt, ema, meta, log
        self.conditions = sample_conditions(meta.get("attributes") or {})

    @torch.no_grad()
    def fixed_grid(self) -> torch.Tensor:
        from ganscale.outputs.sampling import generate

        return generate(
            self.ema.shadow,
            self.meta,
            self.conditions,
            self.cfg.log.samples_per_condition,
            seed=self.cfg.seed,
            device=self.rt.device,
        )

    def write_samples(self, step: int) -> None:
        from ganscale.outputs.images import make_grid, save_png

        images = self.fixed_grid()
        group = self.cfg.log.samples_per_condition
        self.log.warn_health(self.log.health.observe_samples(images, step, group=group))
        grid = make_grid(images, ncol=group)
        save_png(grid, self.run_dir / SAMPLES / f"step-{step:07d}.png")
        self.log.tracker.log_image("samples", grid, step, caption=f"step {step}")

    def finish(self, step: int) -> None:
        from ganscale.outputs.export import export_generator
        from ganscale.outputs.images import plot_losses
        from ganscale.outputs.tracking import read_metrics

        export_generator(self.ema.shadow, self.meta, self.run_dir)
        self.write_samples(step)
        plot_losses(read_metrics(self.run_dir / METRICS), self.run_dir / "losses.png")


def build_outputs(
    cfg: Config, run_dir: Path, rt: Runtime, ema: EMA, meta: dict[str, Any], log: RunLog
) -> NullOutputs:
    return Outputs(cfg, run_dir, rt, ema, meta, log) if rt.is_main else NullOutputs()
