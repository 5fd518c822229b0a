"""`ganscale bench`: time the real training step, beside a plain-PyTorch loop.

What is timed is :meth:`Trainer.step() <ganscale.train.trainer.Trainer.step>` of a real
:class:`~ganscale.train.trainer.Trainer` (D phase, G phase, runtime, autocast, scalers, NaN
checks, EMA, counters: everything ``ganscale train`` runs per step), after warm-up
(compilation, allocator, oneDNN/cuDNN algorithm choice). Logging, samples and checkpoints are
not part of the step.

Data (``--data``):
- ``synthetic``: an in-memory pool of random batches, already decoded, handed to the
  trainer exactly as the loader hands them (float32 on the host, pinned on CUDA). This
  isolates the step from decoding: data-wait is ~0 by construction.
- ``shards``: the real streaming loader of the config's data section (``data.path`` with
  ``data.source: shards``, else the built-in synthetic corpus), with its workers.

``--baseline`` runs :class:`ganscale.bench.plain_loop.PlainLoop` (the same G, D, batch and, unless
``--baseline-fp32``, the same precision and memory format) in the same process, interleaved
with ganscale round by round (A/B, B/A, A/B...) so machine noise hits both; each side's img/s is the
median over rounds. Both sides read the same data stream.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` on one real step
(D phase + G phase, forward and backward; convolutions and matmuls, as is usual for "model
FLOPs"; normalisation, activations and the optimizer are not counted), in eager mode.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from ganscale.bench.measure import (
    TimedSource,
    count_flops,
    device_peak_flops,
    format_result,
    memory_batches,
    peak_memory_mb,
    sync,
)
from ganscale.cli_options import ConfigArg, SetOpt
from ganscale.config import Config, load_config

__all__ = ["Bench", "BenchOptions", "DataKind", "count_flops", "format_result", "register", "run_bench"]


class DataKind(str, Enum):
    synthetic = "synthetic"
    shards = "shards"


@dataclass
class BenchOptions:
    steps: int = 20
    """Timed steps per side (ganscale and, with baseline, the plain loop)."""
    warmup: int = 3
    """Untimed steps per side first (compilation, allocator, algorithm choice)."""
    repeats: int = 5
    """Rounds the timed steps are split into, alternating ganscale and baseline."""
    data: str = "synthetic"
    baseline: bool = False
    baseline_fp32: bool = False
    """Baseline in fp32, contiguous, whatever ganscale runs (the ">= 1.3x plain fp32" comparison)."""
    flops: bool = True
    profile: Path | None = None
    """Write a Chrome trace of a few steps here and print the top operators."""
    profile_steps: int = 3
    threads: int = 0
    """torch.set_num_threads for the run (0: leave PyTorch's default)."""


class Bench:
    """A real Trainer (and optionally the plain loop) on one data stream, ready to time.

    The ganscale side is ``self.trainer.step`` itself; the bench adds only the clock.
    """

    def __init__(self, cfg: Config, opts: BenchOptions) -> None:
        from ganscale.data.loader import build_loader
        from ganscale.outputs.tracking import MetricsFile, NullTracker
        from ganscale.runtime import build_runtime
        from ganscale.train.trainer import Trainer, plan_for

        cfg = copy.deepcopy(cfg)
        if opts.data == DataKind.synthetic and cfg.data.source == "synthetic":
            # The trainer still opens the corpus (for its label vocabulary): keep that one small.
            cfg.data.synthetic_n = min(cfg.data.synthetic_n, 256)
        self.cfg, self.opts = cfg, opts
        self._tmp = tempfile.TemporaryDirectory(prefix="ganscale-bench-")
        self.rt = rt = build_runtime(cfg)
        self.device, plan = rt.device, rt.plan
        data = build_loader(
            cfg.data,
            image_size=cfg.model.image_size,
            batch_size=plan.batch_size,
            seed=cfg.seed,
            rank=rt.rank,
            world_size=rt.world_size,
            output="uint8",  # what the trainer asks for: decode only, augmentation on the device
        )
        batches = None
        if opts.data == DataKind.synthetic:
            attributes = data.info.attributes if cfg.model.conditional else {}
            num_classes = [len(v) for v in attributes.values()]
            batches = memory_batches(cfg, plan.batch_size, num_classes, self.device)
            self.data_label = "memory (random tensors, no decoding)"
        else:
            self.data_label = f"loader ({cfg.data.source}, {cfg.data.num_workers} workers)"
        self.trainer = Trainer(
            plan_for(cfg, rt, data),
            Path(self._tmp.name),
            rt,
            data=data,
            batches=batches,
            tracker=NullTracker(),
            metrics=MetricsFile(None),
        )
        self.images_per_step = plan.images_per_step
        self.plain = None
        if opts.baseline:
            from ganscale.bench.plain_loop import PlainLoop

            precision = "no" if opts.baseline_fp32 else cfg.train.mixed_precision
            channels_last = False if opts.baseline_fp32 else cfg.train.channels_last
            self.plain = PlainLoop(cfg, self.trainer.num_classes, self.device, precision, channels_last)
            self.baseline_precision = precision
            self.baseline_channels_last = channels_last
            self._plain_source = TimedSource(self.trainer.batches)  # the same stream as the trainer

    def plain_step(self) -> None:
        assert self.plain is not None
        images, labels = next(self._plain_source)
        self.plain.step(images, labels)

    def _wait(self, side: str) -> float:
        return self.trainer.data_wait_s if side == "ganscale" else self._plain_source.wait

    def _timed(self, fn: Callable[[], Any], n: int) -> float:
        sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            fn()
        sync(self.device)
        self._last_cpu = time.process_time() - c0
        return time.perf_counter() - t0

    # ---- the measurement
    def run(self) -> dict[str, Any]:
        opts, dev = self.opts, self.device
        sides: dict[str, Callable[[], Any]] = {"ganscale": self.trainer.step}
        if self.plain is not None:
            sides["baseline"] = self.plain_step
        for fn in sides.values():
            self._timed(fn, opts.warmup)
        flops = count_flops(self.trainer.step) if opts.flops else None

        per_round = max(1, opts.steps // opts.repeats)
        rates: dict[str, list[float]] = {k: [] for k in sides}
        cpu = {k: 0.0 for k in sides}
        elapsed = {k: 0.0 for k in sides}
        wait = {k: 0.0 for k in sides}
        peaks: dict[str, float] = {}
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        for i in range(opts.repeats):
            # A/B then B/A: alternate which side goes first, so an order effect cancels out
            for name, fn in sides.items() if i % 2 == 0 else reversed(sides.items()):
                w0 = self._wait(name)
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                dt = self._timed(fn, per_round)
                rates[name].append(per_round * self.images_per_step / dt)
                elapsed[name] += dt
                cpu[name] += self._last_cpu
                wait[name] += self._wait(name) - w0
                peaks[name] = max(peaks.get(name, 0.0), peak_memory_mb(dev)[0])
        n = per_round * opts.repeats
        result = self._result(rates, cpu, elapsed, wait, peaks, n, flops)
        if opts.profile is not None:
            result["profile_trace"] = str(self.profile(opts.profile, opts.profile_steps))
        return result

    def _result(
        self,
        rates: dict[str, list[float]],
        cpu: dict[str, float],
        elapsed: dict[str, float],
        wait: dict[str, float],
        peaks: dict[str, float],
        steps: int,
        flops: int | None,
    ) -> dict[str, Any]:
        cfg, dev, per_step = self.cfg, self.device, self.images_per_step
        img_s = statistics.median(rates["ganscale"])
        peak_mb, peak_kind = peak_memory_mb(dev)
        if dev.type == "cuda":
            peak_mb = peaks["ganscale"]
        result: dict[str, Any] = {
            "config": cfg.name,
            "device": torch.cuda.get_device_name(dev)
            if dev.type == "cuda"
            else f"cpu ({torch.get_num_threads()} threads)",
            "arch": cfg.model.arch,
            "image_size": cfg.model.image_size,
            "batch_size": self.rt.plan.batch_size,
            "images_per_step": per_step,
            "precision": cfg.train.mixed_precision,
            "channels_last": cfg.train.channels_last,
            "compile": cfg.train.compile,
            "adam": cfg.optim.impl,
            "data": self.data_label,
            "steps": steps,
            "repeats": self.opts.repeats,
            "images_per_s": round(img_s, 2),
            "ms_per_step": round(1000 * per_step / img_s, 2),
            "images_per_s_per_round": [round(r, 2) for r in rates["ganscale"]],
            "best_images_per_s": round(max(rates["ganscale"]), 2),
            "cpu_ms_per_step": round(1000 * cpu["ganscale"] / steps, 2),
            "data_wait_fraction": round(wait["ganscale"] / elapsed["ganscale"], 4),
            "peak_mem_mb": round(peak_mb, 1),
            "peak_mem_kind": peak_kind,
        }
        if flops is not None:
            per_image = flops / per_step
            achieved = per_image * img_s
            peak = device_peak_flops(dev, cfg.train.mixed_precision)
            result |= {
                "flops_per_image": int(per_image),
                "achieved_tflops": round(achieved / 1e12, 4),
                "mfu": round(achieved / peak, 4) if peak else None,
            }
        if self.plain is None:
            return result
        base = statistics.median(rates["baseline"])
        result |= {
            "baseline": "plain PyTorch loop (ganscale/bench/plain_loop.py)",
            "baseline_precision": self.baseline_precision,
            "baseline_channels_last": self.baseline_channels_last,
            "baseline_images_per_s": round(base, 2),
            "baseline_ms_per_step": round(1000 * per_step / base, 2),
            "baseline_images_per_s_per_round": [round(r, 2) for r in rates["baseline"]],
            "baseline_data_wait_fraction": round(wait["baseline"] / elapsed["baseline"], 4),
            "ratio": round(img_s / base, 4),
            # Robust companions on a shared machine: the ratio of the best rounds, the median
            # of per-round ratios (adjacent A/B pairs), and the ratio of process CPU time.
            "best_ratio": round(max(rates["ganscale"]) / max(rates["baseline"]), 4),
            "paired_ratio": round(
                statistics.median(a / b for a, b in zip(rates["ganscale"], rates["baseline"], strict=True)),
                4,
            ),
            "baseline_cpu_ms_per_step": round(1000 * cpu["baseline"] / steps, 2),
            "cpu_ratio": round(cpu["baseline"] / cpu["ganscale"], 4) if cpu["ganscale"] > 0 else None,
        }
        if dev.type == "cuda":
            result["baseline_peak_mem_mb"] = round(peaks["baseline"], 1)
        return result

    def profile(self, path: Path, steps: int) -> Path:
        """A torch profiler Chrome trace of ``steps`` ganscale steps; prints the top operators."""
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            self._timed(self.trainer.step, steps)
        path.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(path))
        sort = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        typer.echo(prof.key_averages().table(sort_by=sort, row_limit=15))
        typer.echo(
            f"profiler trace ({steps} steps, Chrome trace JSON; open in https://ui.perfetto.dev): {path}"
        )
        return path

    def close(self) -> None:
        self.trainer.close()
        self.rt.end()
        self._tmp.cleanup()


def run_bench(cfg: Config, opts: BenchOptions) -> dict[str, Any]:
    """Build, warm up, time; return the result row (what the last JSON line holds)."""
    if opts.steps < 1 or opts.repeats < 1 or opts.warmup < 0:
        raise ValueError("steps and repeats must be >= 1, warmup >= 0")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    bench = Bench(cfg, opts)
    try:
        return bench.run()
    finally:
        bench.close()


# --------------------------------------------------------------------------- CLI


def register(app: typer.Typer) -> None:
    """Add ``ganscale bench`` to the CLI."""

    @app.command()
    def bench(
        config: ConfigArg,
        steps: Annotated[int, typer.Option("--steps", help="Timed steps (per side).")] = 20,
        warmup: Annotated[int, typer.Option("--warmup", help="Untimed steps first (per side).")] = 3,
        repeats: Annotated[
            int,
            typer.Option("--repeats", help="Rounds, alternating ganscale and baseline; medians reported."),
        ] = 5,
        data: Annotated[
            DataKind,
            typer.Option(
                "--data",
                help="synthetic: in-memory random batches (the step alone); shards: the real loader.",
            ),
        ] = DataKind.synthetic,
        set_: SetOpt = None,
        baseline: Annotated[
            bool,
            typer.Option("--baseline", help="Also time a plain PyTorch loop of the same model and batch."),
        ] = False,
        baseline_fp32: Annotated[
            bool,
            typer.Option("--baseline-fp32", help="Run the baseline in plain fp32 (contiguous) regardless."),
        ] = False,
        flops: Annotated[bool, typer.Option("--flops/--no-flops", help="Count FLOPs per image.")] = True,
        profile: Annotated[
            bool,
            typer.Option("--profile", help="Write a torch profiler trace of a few steps; print top ops."),
        ] = False,
        profile_out: Annotated[
            Path, typer.Option("--profile-out", help="Where --profile writes its Chrome trace JSON.")
        ] = Path("bench-trace.json"),
        threads: Annotated[
            int, typer.Option("--threads", help="CPU threads for PyTorch (0: its default, the core count).")
        ] = 0,
        json_out: Annotated[
            Path | None,
            typer.Option("--json-out", help="Also append the JSON result line to this file."),
        ] = None,
    ) -> None:
        """Time the real training step (img/s, ms/step, data wait, memory, FLOPs); last line is JSON."""
        cfg = load_config(config, set_ or [])
        opts = BenchOptions(
            steps=steps,
            warmup=warmup,
            repeats=min(repeats, steps),
            data=data.value,
            baseline=baseline or baseline_fp32,
            baseline_fp32=baseline_fp32,
            flops=flops,
            profile=profile_out if profile else None,
            threads=threads,
        )
        result = run_bench(cfg, opts)
        typer.echo(format_result(result))
        line = json.dumps(result)
        if json_out is not None:
            with json_out.open("a") as f:
                f.write(line + "\n")
        sys.stdout.flush()
        typer.echo(line)
