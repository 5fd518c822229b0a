"""Benchmark (not a test): images/s the corpus layer delivers on this machine.

Rows, all on the same synthetic corpus packed twice (PNG and ``--format raw``):

- the synthetic renderer (render + PNG + write, one core);
- the limits: raw PIL decode of the packed PNGs held in memory, and for raw shards the copy of
  their bytes into an array (``np.frombuffer`` + copy);
- the loader as the trainer reads it (``output="uint8"``: read, decode, batch; the flip /
  rotation parameters drawn, the warp left to the device) with 0, 1 and 2 workers, for PNG
  and raw shards, and from memory (``data.in_memory``);
- the former CPU path for comparison: PIL flip + rotation in the loader (``augment_on:
  loader``) and the float API (``iter()``: float [-1, 1] batches, warped on the CPU);
- the device augmentation (uint8 -> float -> one ``grid_sample`` per batch) on the CPU, and on
  CUDA when there is one.

Each row is timed ``--repeats`` times, interleaved with the others, and the best round is kept
(on a shared machine the best round is the one least disturbed by other load). ``per cpu-s`` is
images per CPU-second of the main process: with 0 workers, the cost per core, which other load
distorts much less than wall time. Ratios to the raw decode are taken from the same run.

    .venv/bin/python benchmarks/data_throughput.py --n 4000 --size 64
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ganscale.augment import RealBatchAugment
from ganscale.config import DataConfig
from ganscale.corpus.pack import pack
from ganscale.corpus.synth import write_synthetic
from ganscale.data.loader import LoaderBatch, build_loader


def members(shards: Path, ext: str) -> list[bytes]:
    out = []
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as tf:
            out += [tf.extractfile(m).read() for m in tf.getmembers() if m.name.endswith("." + ext)]
    return out


def timed(fn: Callable[[], int]) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    n = fn()
    return n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)


def png_decode(blobs: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        for b in blobs:
            with Image.open(io.BytesIO(b)) as im:
                np.asarray(im.convert("RGB"))
        return len(blobs)

    return run


def raw_copy(blobs: list[bytes], size: int) -> Callable[[], int]:
    buf = np.empty((64, size, size, 3), np.uint8)

    def run() -> int:
        for i, b in enumerate(blobs):
            buf[i % 64] = np.frombuffer(b, np.uint8).reshape(size, size, 3)
        return len(blobs)

    return run


def loader(
    shards: Path, size: int, batch: int, workers: int, epochs: int, **data: object
) -> Callable[[], int]:
    output = "float" if data.pop("_float", False) else "uint8"
    cfg = DataConfig(source="shards", path=str(shards), num_workers=workers, pin_memory=False, **data)
    s = build_loader(cfg, image_size=size, batch_size=batch, seed=0, rank=0, world_size=1, output=output)
    it = iter(s)
    next(it)  # start-up (worker spawn, in-memory decode) is not throughput
    n = s.batches_per_epoch * epochs

    def run() -> int:
        for _ in range(n):
            b = next(it)
            assert isinstance(b, LoaderBatch) == (output == "uint8")
        return n * batch

    return run


def augment(size: int, batch: int, device: str, rounds: int) -> Callable[[], int]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=g).permute(0, 3, 1, 2)
    params = torch.stack(
        [(torch.rand(batch, generator=g) < 0.5).float(), torch.rand(batch, generator=g) * 10 - 5], 1
    )
    prep = RealBatchAugment(torch.device(device), torch.contiguous_format)
    prep(images, params)  # warm-up

    def run() -> int:
        for _ in range(rounds):
            out = prep(images, params)
        if device == "cuda":
            torch.cuda.synchronize()
        assert out.shape == (batch, 3, size, size)
        return rounds * batch

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2, help="Epochs per timed round.")
    ap.add_argument("--repeats", type=int, default=3, help="Timed rounds per row (best kept).")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the device augmentation on CPU: one core, as a worker would be
    size, batch, ep = args.size, args.batch, args.epochs
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0, c0 = time.perf_counter(), time.process_time()
        write_synthetic(root / "src", args.n, size, seed=0)
        synth = (args.n / (time.perf_counter() - t0), args.n / (time.process_time() - c0))
        per = max(1, args.n // 16)
        png, raw = root / "png", root / "raw"
        pack(root / "src", png, size=size, per_shard=per)
        pack(root / "src", raw, size=size, per_shard=per, fmt="raw")
        rows: dict[str, Callable[[], int]] = {
            "raw PIL decode (png)": png_decode(members(png, "png")),
            "raw copy (raw shards)": raw_copy(members(raw, "u8"), size),
        }
        for w in (0, 1, 2):
            rows[f"loader png, {w} workers"] = loader(png, size, batch, w, ep)
        for w in (0, 1, 2):
            rows[f"loader raw, {w} workers"] = loader(raw, size, batch, w, ep)
        rows["loader png, in memory"] = loader(png, size, batch, 0, ep, in_memory=True)
        rows["png, PIL rotate (old)"] = loader(png, size, batch, 0, ep, augment_on="loader")
        rows["png, float API (CPU)"] = loader(png, size, batch, 0, ep, _float=True)
        rows["device augment, cpu"] = augment(size, batch, "cpu", max(1, args.n // batch))
        if torch.cuda.is_available():
            rows["device augment, cuda"] = augment(size, batch, "cuda", 10 * max(1, args.n // batch))
        best = {k: (0.0, 0.0) for k in rows}
        for _ in range(args.repeats):
            for name, fn in rows.items():
                r = timed(fn)
                best[name] = (max(best[name][0], r[0]), max(best[name][1], r[1]))
    raw_png, raw_u8 = best["raw PIL decode (png)"], best["raw copy (raw shards)"]
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} cores; best of {args.repeats} rounds")
    print(f"{'what':<26}{'images/s':>10}{'per cpu-s':>11}{'x raw':>8}{'x raw/cpu':>10}")
    print(f"{'synth (1 core)':<26}{synth[0]:>10.0f}{synth[1]:>11.0f}")
    for name, (rate, per_cpu) in best.items():
        ref = raw_u8 if " raw" in name and "PIL" not in name else raw_png
        workers = name.endswith(("1 workers", "2 workers"))
        cpu_col = f"{'':>11}" if workers else f"{per_cpu:>11.0f}"
        ratio_cpu = f"{'':>10}" if workers or "augment" in name else f"{per_cpu / ref[1]:>10.2f}"
        ratio = "" if "augment" in name else f"{rate / ref[0]:>8.2f}"
        print(f"{name:<26}{rate:>10.0f}{cpu_col}{ratio:>8}{ratio_cpu}")
    result = {
        "size": size,
        "n": args.n,
        "batch": batch,
        "load_average": round(load, 2),
        "synth_per_s": round(synth[0]),
        "raw_decode_per_s": round(raw_png[0]),
        "raw_decode_per_cpu_s": round(raw_png[1]),
        "raw_copy_per_s": round(raw_u8[0]),
        **{f"loader_png_w{w}_per_s": round(best[f"loader png, {w} workers"][0]) for w in (0, 1, 2)},
        **{f"loader_raw_w{w}_per_s": round(best[f"loader raw, {w} workers"][0]) for w in (0, 1, 2)},
        "loader_png_w0_per_cpu_s": round(best["loader png, 0 workers"][1]),
        "loader_raw_w0_per_cpu_s": round(best["loader raw, 0 workers"][1]),
        "loader_in_memory_per_s": round(best["loader png, in memory"][0]),
        "loader_pil_rotate_per_s": round(best["png, PIL rotate (old)"][0]),
        "loader_float_api_per_s": round(best["png, float API (CPU)"][0]),
        "augment_cpu_per_s": round(best["device augment, cpu"][0]),
        "augment_cuda_per_s": round(best["device augment, cuda"][0])
        if "device augment, cuda" in best
        else None,
        "png_w0_over_raw_decode_per_cpu": round(best["loader png, 0 workers"][1] / raw_png[1], 3),
        "png_w0_over_raw_decode": round(best["loader png, 0 workers"][0] / raw_png[0], 3),
        "png_w2_over_w1": round(best["loader png, 2 workers"][0] / best["loader png, 1 workers"][0], 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
