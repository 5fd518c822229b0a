"""What ``ganscale bench`` measures with: the in-memory batch pool, timing of data waits,
peak memory, device peak FLOP/s, the FLOP counter, and the human-readable summary."""

from __future__ import annotations

import contextlib
import itertools
import resource
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ganscale.config import Config
from ganscale.runtime.env import peak_tflops_override

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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_batches(cfg: Config, batch: int, num_classes: list[int], device: torch.device) -> Iterator[tuple]:
    """An endless cycle over a few random batches of ``batch`` images, shaped like the loader's."""
    gen = torch.Generator().manual_seed(cfg.seed)
    size = cfg.model.image_size
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


class TimedSource:
    """Wraps a batch iterator and adds the time spent waiting in ``next()`` to ``wait``."""

    def __init__(self, it: Iterator[tuple]) -> None:
        self.it, self.wait = it, 0.0

    def __iter__(self) -> TimedSource:
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
    override = peak_tflops_override()
    if override:
        return override * 1e12
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
