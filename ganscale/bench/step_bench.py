"""`ganscale bench`: time the real training step, beside a plain-PyTorch loop.

What is timed is :meth:`Trainer.d_phase` + :meth:`Trainer.g_phase` of a real
:class:`~ganscale.train.trainer.Trainer` (runtime, autocast, scalers, NaN checks, EMA: everything
``ganscale train`` runs per step), after warm-up (compilation, allocator, oneDNN/cuDNN
algorithm choice). Logging, samples and checkpoints are not part of the step.

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

import contextlib
import copy
import itertools
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import torch
import typer

from ganscale.config import Config, load_config

# Dense peak TFLOP/s per device for MFU, by a substring of torch.cuda.get_device_name():
# (bf16/fp16 tensor core, tf32 tensor core, plain fp32). From the vendors' data sheets (SXM
# parts; PCIe parts are ~15-25% lower: set GANSCALE_PEAK_TFLOPS to override).
PEAK_TFLOPS: dict[str, tuple[float, float, float]] = {
    "H200": (989.0, 494.7, 66.9),
    "H100": (989.0, 494.7, 66.9),
    "A100": (312.0, 156.0, 19.5),
    "L40S": (362.0, 183.0, 91.6),
    "A10": (125.0, 62.5, 31.2),
    "V100": (125.0, 15.7, 15.7),
    "T4": (65.0, 8.1, 8.1),
}
MEMORY_POOL_BATCHES = 4
"""Distinct batches in the in-memory pool of ``--data synthetic``."""


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


# --------------------------------------------------------------------------- helpers


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_batches(cfg: Config, num_classes: list[int], device: torch.device) -> Iterator[tuple]:
    """An endless cycle over a few random batches shaped like the loader's output."""
    gen = torch.Generator().manual_seed(cfg.seed)
    size, batch = cfg.model.image_size, cfg.train.batch_size
    pool = []
    for _ in range(MEMORY_POOL_BATCHES):
        images = torch.rand(batch, 3, size, size, generator=gen) * 2 - 1
        labels = (
            torch.stack([torch.randint(n, (batch,), generator=gen) for n in num_classes], 1)
            if num_classes
            else torch.zeros(batch, 0, dtype=torch.int64)
        )
        if device.type == "cuda":
            images, labels = images.pin_memory(), labels.pin_memory()
        pool.append((images, labels))
    return itertools.cycle(pool)


class _TimedSource:
    """Wraps a batch iterator and adds the time spent waiting in ``next()`` to ``wait``."""

    def __init__(self, it: Iterator[tuple]) -> None:
        self.it, self.wait = it, 0.0

    def __iter__(self) -> _TimedSource:
        return self

    def __next__(self) -> tuple:
        t0 = time.perf_counter()
        out = next(self.it)
        self.wait += time.perf_counter() - t0
        return out


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory: CUDA allocator peak on a GPU; the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return rss_kb / 1024, "process_peak_rss"


def device_peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak FLOP/s for ``precision`` (None on CPU or an unknown GPU)."""
    if device.type != "cuda":
        return None
    override = os.environ.get("GANSCALE_PEAK_TFLOPS")
    if override:
        return float(override) * 1e12
    name = torch.cuda.get_device_name(device)
    for key, (half, tf32, fp32) in PEAK_TFLOPS.items():
        if key in name:
            if precision in ("bf16", "fp16"):
                return half * 1e12
            return (tf32 if torch.backends.cudnn.allow_tf32 else fp32) * 1e12
    return None


def count_flops(step: Callable[[], Any]) -> int:
    """FLOPs of one call of ``step`` (eager, even when the models are compiled)."""
    from torch.utils.flop_counter import FlopCounterMode

    stance = getattr(torch.compiler, "set_stance", None)
    eager = stance("force_eager") if stance is not None else contextlib.nullcontext()
    counter = FlopCounterMode(display=False)
    with eager, counter:
        step()
    return int(counter.get_total_flops())


# --------------------------------------------------------------------------- the bench


class Bench:
    """A real Trainer (and optionally the plain loop) on one data stream, ready to time."""

    def __init__(self, cfg: Config, opts: BenchOptions) -> None:
        from ganscale.outputs.tracking import MetricsFile, NullTracker
        from ganscale.runtime import build_runtime
        from ganscale.train.trainer import Trainer

        cfg = copy.deepcopy(cfg)
        if opts.data == DataKind.synthetic and cfg.data.source == "synthetic":
            # The trainer still opens the corpus (for its label vocabulary): keep that one small.
            cfg.data.synthetic_n = min(cfg.data.synthetic_n, 256)
        self.cfg, self.opts = cfg, opts
        self._tmp = tempfile.TemporaryDirectory(prefix="ganscale-bench-")
        self.rt = build_runtime(cfg)
        self.trainer = Trainer(cfg, Path(self._tmp.name), self.rt)
        self.trainer.tracker, self.trainer.metrics = NullTracker(), MetricsFile(None)
        self.device = self.rt.device
        if opts.data == DataKind.synthetic:
            stream: Iterator[tuple] = memory_batches(cfg, self.trainer.num_classes, self.device)
            self.data_label = "memory (random tensors, no decoding)"
        else:
            stream = iter(self.trainer.data)
            self.data_label = f"loader ({cfg.data.source}, {cfg.data.num_workers} workers)"
        self.trainer._batches = stream
        self.trainer._data_wait = 0.0
        self.images_per_step = cfg.train.batch_size * cfg.train.n_critic * self.trainer.grad_accum
        self.plain = None
        if opts.baseline:
            from ganscale.bench.plain_loop import PlainLoop

            precision = "no" if opts.baseline_fp32 else cfg.train.mixed_precision
            channels_last = False if opts.baseline_fp32 else cfg.train.channels_last
            self.plain = PlainLoop(cfg, self.trainer.num_classes, self.device, precision, channels_last)
            self.baseline_precision = precision
            self.baseline_channels_last = channels_last
            self._plain_source = _TimedSource(stream)

    # ---- one step of each side
    def ganscale_step(self) -> dict[str, torch.Tensor]:
        """One real training step (D phase, G phase); returns its record (tensors, unread)."""
        t = self.trainer
        step = t.state.step
        record = t.d_phase(step)
        record |= t.g_phase(step)
        t.state.step += 1
        t.state.images_seen += self.images_per_step
        return record

    def plain_step(self) -> None:
        assert self.plain is not None
        images, labels = next(self._plain_source)
        self.plain.step(images, labels)

    def _timed(self, fn: Callable[[], Any], n: int) -> float:
        _sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            fn()
        _sync(self.device)
        self._last_cpu = time.process_time() - c0
        return time.perf_counter() - t0

    # ---- the measurement
    def run(self) -> dict[str, Any]:
        opts, cfg, dev = self.opts, self.cfg, self.device
        sides: dict[str, Callable[[], Any]] = {"ganscale": self.ganscale_step}
        if self.plain is not None:
            sides["baseline"] = self.plain_step
        for fn in sides.values():
            self._timed(fn, opts.warmup)
        flops = count_flops(self.ganscale_step) if opts.flops else None

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
                w0 = self.trainer._data_wait if name == "ganscale" else self._plain_source.wait
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                dt = self._timed(fn, per_round)
                w1 = self.trainer._data_wait if name == "ganscale" else self._plain_source.wait
                rates[name].append(per_round * self.images_per_step / dt)
                elapsed[name] += dt
                cpu[name] += self._last_cpu
                wait[name] += w1 - w0
                peaks[name] = max(peaks.get(name, 0.0), peak_memory_mb(dev)[0])

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
            "batch_size": cfg.train.batch_size,
            "images_per_step": self.images_per_step,
            "precision": cfg.train.mixed_precision,
            "channels_last": cfg.train.channels_last,
            "compile": cfg.train.compile,
            "adam": cfg.optim.impl,
            "data": self.data_label,
            "steps": per_round * opts.repeats,
            "repeats": opts.repeats,
            "images_per_s": round(img_s, 2),
            "ms_per_step": round(1000 * self.images_per_step / img_s, 2),
            "images_per_s_per_round": [round(r, 2) for r in rates["ganscale"]],
            "best_images_per_s": round(max(rates["ganscale"]), 2),
            "cpu_ms_per_step": round(1000 * cpu["ganscale"] / (per_round * opts.repeats), 2),
            "data_wait_fraction": round(wait["ganscale"] / elapsed["ganscale"], 4),
            "peak_mem_mb": round(peak_mb, 1),
            "peak_mem_kind": peak_kind,
        }
        if flops is not None:
            per_image = flops / self.images_per_step
            achieved = per_image * img_s
            peak = device_peak_flops(dev, cfg.train.mixed_precision)
            result |= {
                "flops_per_image": int(per_image),
                "achieved_tflops": round(achieved / 1e12, 4),
                "mfu": round(achieved / peak, 4) if peak else None,
            }
        if self.plain is not None:
            base = statistics.median(rates["baseline"])
            result |= {
                "baseline": "plain PyTorch loop (ganscale/plain_loop.py)",
                "baseline_precision": self.baseline_precision,
                "baseline_channels_last": self.baseline_channels_last,
                "baseline_images_per_s": round(base, 2),
                "baseline_ms_per_step": round(1000 * self.images_per_step / base, 2),
                "baseline_images_per_s_per_round": [round(r, 2) for r in rates["baseline"]],
                "baseline_data_wait_fraction": round(wait["baseline"] / elapsed["baseline"], 4),
                "ratio": round(img_s / base, 4),
                # Robust companions on a shared machine: the ratio of the best rounds, the median
                # of per-round ratios (adjacent A/B pairs), and the ratio of process CPU time.
                "best_ratio": round(max(rates["ganscale"]) / max(rates["baseline"]), 4),
                "paired_ratio": round(
                    statistics.median(
                        a / b for a, b in zip(rates["ganscale"], rates["baseline"], strict=True)
                    ),
                    4,
                ),
                "baseline_cpu_ms_per_step": round(1000 * cpu["baseline"] / (per_round * opts.repeats), 2),
                "cpu_ratio": round(cpu["baseline"] / cpu["ganscale"], 4) if cpu["ganscale"] > 0 else None,
            }
            if dev.type == "cuda":
                result["baseline_peak_mem_mb"] = round(peaks["baseline"], 1)
        if opts.profile is not None:
            result["profile_trace"] = str(self.profile(opts.profile, opts.profile_steps))
        return result

    def profile(self, path: Path, steps: int) -> Path:
        """A torch profiler Chrome trace of ``steps`` ganscale steps; prints the top operators."""
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            self._timed(self.ganscale_step, steps)
        path.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(path))
        sort = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        typer.echo(prof.key_averages().table(sort_by=sort, row_limit=15))
        typer.echo(
            f"profiler trace ({steps} steps, Chrome trace JSON; open in https://ui.perfetto.dev): {path}"
        )
        return path

    def close(self) -> None:
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


def format_result(r: dict[str, Any]) -> str:
    """A few human-readable lines (the JSON line follows them)."""
    lines = [
        f"ganscale bench: {r['config']} ({r['arch']}, {r['image_size']} px, batch {r['batch_size']}, "
        f"{r['precision']}, channels_last={r['channels_last']}, compile={r['compile']}) on {r['device']}",
        f"  data: {r['data']}; {r['steps']} timed steps in {r['repeats']} rounds",
        f"  ganscale : {r['images_per_s']:>10.1f} img/s  {r['ms_per_step']:>9.1f} ms/step  "
        f"data wait {100 * r['data_wait_fraction']:.1f}%  "
        f"peak {r['peak_mem_mb']:.0f} MB ({r['peak_mem_kind']})",
    ]
    if "flops_per_image" in r:
        mfu = f"  MFU {100 * r['mfu']:.1f}%" if r.get("mfu") is not None else ""
        lines.append(
            f"  FLOPs    : {r['flops_per_image'] / 1e9:.3f} GFLOP/image, "
            f"{r['achieved_tflops']:.3f} TFLOP/s{mfu}"
        )
    if "ratio" in r:
        lines.append(
            f"  baseline : {r['baseline_images_per_s']:>10.1f} img/s  "
            f"{r['baseline_ms_per_step']:>9.1f} ms/step  "
            f"(plain loop, {r['baseline_precision']}, channels_last={r['baseline_channels_last']})"
        )
        lines.append(
            f"  ratio    : {r['ratio']:.3f} (ganscale / plain loop; best rounds {r['best_ratio']:.3f}, "
            f"paired median {r['paired_ratio']:.3f}, CPU time {r['cpu_ratio']:.3f})"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def register(app: typer.Typer) -> None:
    """Add ``ganscale bench`` to the CLI."""

    @app.command()
    def bench(
        config: Annotated[Path, typer.Argument(help="YAML config, e.g. configs/dcgan.yaml")],
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
        set_: Annotated[
            Optional[list[str]],  # noqa: UP045 - typer needs Optional here
            typer.Option(
                "--set", help="Override a config key, e.g. --set train.batch_size=128 (repeatable)."
            ),
        ] = None,
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
            Optional[Path],  # noqa: UP045
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
