"""``ganscale data bench``: how fast the loader feeds a corpus, and how fast a GPU would eat it.

In one run, on the same files:

- ``images_per_s``: what the loader delivers as the trainer reads it (read, decode, batch into
  uint8; the flip/rotation parameters drawn), after its start-up;
- ``raw_decode_per_s``: decoding alone of the same records held in memory, one core (PIL for
  PNG/JPEG; for raw shards the copy of their bytes): the limit a loader worker is measured by;
- ``augment_per_s``: the device augmentation (uint8 -> float [-1, 1], flip + rotation as one
  ``grid_sample``) on the device (CUDA when there is one), timed separately;
- with ``--gpu``: the images/s one GPU of that kind would consume at ``--mfu`` on ``--config``
  (FLOPs per image counted as ``ganscale bench`` counts them, the peak from its table), and the
  loader workers that takes at the measured rate.

The last line is JSON.
"""

from __future__ import annotations

import copy
import io
import math
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

from ganscale.augment import RealBatchAugment
from ganscale.config import Config, DataConfig
from ganscale.data.decode import IMAGE_KEYS, RAW_KEY
from ganscale.data.loader import LoaderBatch, ShardStream, build_loader
from ganscale.data.resolve import resolve_corpus
from ganscale.data.tarscan import read_records
from ganscale.errors import GanscaleError

RAW_SAMPLE = 4096
"""Records decoded for the raw-decode rate (at most)."""


def loader_rate(stream: ShardStream, steps: int) -> dict[str, float]:
    """Images/s of ``steps`` uint8 batches after the first (start-up timed on its own)."""
    it = stream.iter_uint8()
    t0 = time.perf_counter()
    first = next(it)
    startup = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        next(it)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    it.close()  # workers shut down
    n = steps * stream.batch_size
    return {
        "images_per_s": n / wall,
        "main_cpu_per_s": n / max(cpu, 1e-9),
        "startup_s": startup,
        "batch": first,
    }


def raw_decode_rate(urls: list[str], size: int, limit: int = RAW_SAMPLE) -> tuple[float, str]:
    """Decoding alone (one core) of up to ``limit`` records of ``urls``, and the format seen."""
    blobs: list[tuple[str, bytes]] = []
    for record in read_records(urls, on_error=lambda e: True):
        key = next((k for k in IMAGE_KEYS if k in record), RAW_KEY if RAW_KEY in record else None)
        if key is not None:
            blobs.append((key, record[key]))
        if len(blobs) >= limit:
            break
    if not blobs:
        raise GanscaleError(f"no readable images in {urls[0]} ...; is it a WebDataset corpus?")
    fmt = blobs[0][0]
    buf = np.empty((64, size, size, 3), np.uint8)
    t0 = time.perf_counter()
    for i, (key, data) in enumerate(blobs):
        if key == RAW_KEY:
            flat = np.frombuffer(data, np.uint8)
            if flat.size == buf[0].size:
                buf[i % 64] = flat.reshape(size, size, 3)
        else:
            with Image.open(io.BytesIO(data)) as im:
                np.asarray(im.convert("RGB"))
    return len(blobs) / (time.perf_counter() - t0), fmt


def augment_rate(batch: LoaderBatch, device: torch.device, seconds: float = 0.5) -> float:
    """Images/s of the device augmentation of ``batch`` (uint8 -> float -> warp) on ``device``."""
    b = batch.images.shape[0]
    params = batch.aug
    if params is None:  # augmentation off in the config: time the study's anyway
        g = torch.Generator().manual_seed(0)
        params = torch.stack(
            [(torch.rand(b, generator=g) < 0.5).float(), torch.rand(b, generator=g) * 10 - 5], 1
        )
    prep = RealBatchAugment(device, torch.contiguous_format)
    images = batch.images.pin_memory() if device.type == "cuda" else batch.images
    prep(images, params)  # warm-up (kernels, allocator)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    rounds, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or rounds < 3:
        prep(images, params)
        rounds += 1
    sync()
    return rounds * b / (time.perf_counter() - t0)


def peak_flops(gpu: str, precision: str) -> float:
    """Dense peak FLOP/s of a named GPU (``ganscale bench``'s table) for ``precision``."""
    from ganscale.bench.measure import PEAK_TFLOPS

    for key, (half, tf32, _fp32) in PEAK_TFLOPS.items():
        if key.lower() in gpu.lower():
            return (half if precision in ("bf16", "fp16") else tf32) * 1e12
    raise GanscaleError(f"--gpu {gpu!r}: not in the peak table; use one of {', '.join(PEAK_TFLOPS)}")


def flops_per_image(cfg: Config, corpus: str) -> int:
    """FLOPs of one training step per real image, counted as ``ganscale bench`` does (one real
    ``Trainer.step`` under FlopCounterMode, divided by the images it consumes); the trainer
    opens ``corpus`` (for its labels), not the config's."""
    from ganscale.bench.measure import count_flops
    from ganscale.bench.step_bench import Bench, BenchOptions, DataKind

    small = copy.deepcopy(cfg)
    small.train.batch_size = 2  # FLOPs per image do not depend on the batch; counting is cheap
    small.data = DataConfig(source="shards", path=corpus, pin_memory=False)
    bench = Bench(small, BenchOptions(data=DataKind.synthetic, flops=False, steps=1, warmup=0, repeats=1))
    try:
        return int(count_flops(bench.trainer.step) / bench.images_per_step)
    finally:
        bench.close()


def run_data_bench(
    target: str,
    *,
    workers: int = 0,
    batch: int = 64,
    steps: int = 50,
    size: int = 0,
    in_memory: bool = False,
    device: str | None = None,
    gpu: str | None = None,
    mfu: float = 0.3,
    model_cfg: Config | None = None,
) -> dict[str, Any]:
    """Measure (see the module docstring); returns the JSON row."""
    if batch < 1 or steps < 1 or workers < 0:
        raise GanscaleError("--batch and --steps must be >= 1, --workers >= 0")
    if gpu is not None and not 0 < mfu <= 1:
        raise GanscaleError(f"--mfu {mfu}: must be in (0, 1], e.g. 0.3")
    cfg = DataConfig(source="shards", path=target, num_workers=workers, in_memory=in_memory)
    size = size or resolve_corpus(cfg, 0).info.image_size
    stream = build_loader(
        cfg, image_size=size, batch_size=batch, seed=0, rank=0, world_size=1, output="uint8"
    )
    info = stream.info
    got = loader_rate(stream, steps)
    raw, fmt = raw_decode_rate(info.shard_urls, size)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    aug = augment_rate(got["batch"], dev)
    per_worker = got["images_per_s"] / max(1, workers)
    row: dict[str, Any] = {
        "target": target,
        "format": fmt,
        "image_size": size,
        "records": info.num_records,
        "shards": info.num_shards,
        "workers": workers,
        "batch": batch,
        "steps": steps,
        "in_memory": in_memory,
        "images_per_s": round(got["images_per_s"], 1),
        "per_worker_per_s": round(per_worker, 1),
        "main_cpu_images_per_s": round(got["main_cpu_per_s"], 1),
        "startup_s": round(got["startup_s"], 3),
        "raw_decode_per_s": round(raw, 1),
        "loader_over_raw_per_worker": round(per_worker / raw, 3),
        "augment_per_s": round(aug, 1),
        "augment_device": str(dev),
    }
    if gpu is not None:
        if model_cfg is None:
            raise GanscaleError("--gpu needs --config (the model whose FLOPs a step costs)")
        fpi = flops_per_image(model_cfg, target)
        need = peak_flops(gpu, model_cfg.train.mixed_precision) * mfu / fpi
        row |= {
            "gpu": gpu,
            "mfu": mfu,
            "config": model_cfg.name,
            "precision": model_cfg.train.mixed_precision,
            "flops_per_image": fpi,
            "needed_per_s": round(need, 1),
            "workers_needed": math.ceil(need / per_worker) if per_worker > 0 else None,
        }
    return row


def format_row(r: dict[str, Any]) -> str:
    """The human-readable lines printed before the JSON."""
    lines = [
        f"ganscale data bench: {r['target']} ({r['records']} records, {r['shards']} shards, "
        f"{r['format']}, {r['image_size']} px); batch {r['batch']}, {r['workers']} workers, "
        f"{r['steps']} steps{', in memory' if r['in_memory'] else ''}",
        f"  loader     : {r['images_per_s']:>12,.0f} img/s  ({r['per_worker_per_s']:,.0f} per worker; "
        f"read + decode + batch, uint8; start-up {r['startup_s']:.2f} s)",
        f"  raw decode : {r['raw_decode_per_s']:>12,.0f} img/s  (the same files, in memory, one core; "
        f"loader per worker = {r['loader_over_raw_per_worker']:.2f}x)",
        f"  augment    : {r['augment_per_s']:>12,.0f} img/s  on {r['augment_device']} "
        "(uint8 -> float, flip + rotation, one grid_sample per batch)",
    ]
    if "needed_per_s" in r:
        lines.append(
            f"  needed     : {r['needed_per_s']:>12,.0f} img/s  for one {r['gpu']} at MFU {r['mfu']:.0%} on "
            f"{r['config']} ({r['precision']}, {r['flops_per_image'] / 1e9:.2f} GFLOP/image): "
            f"{r['workers_needed']} loader workers at this rate"
        )
    return "\n".join(lines)
