"""Benchmark (not a test): where the loader's time goes with worker processes, per image.

On a machine with fewer cores than processes, wall-clock rows cannot show how the loader
scales (with 2 cores, one worker already shares a core with the main process). CPU time can:
for each worker count this reads the main process's CPU seconds (``time.process_time``) and
the workers' (``RUSAGE_CHILDREN``, counted once they have exited: the stream is closed after
the last epoch), per delivered image, over whole epochs of a corpus large enough that worker
start-up (one fork per pass) is a small part of a pass.

From those two costs it prints what the loader would deliver with ``k`` workers on ``k + 1``
free cores, ``min(k / worker_cpu, 1 / main_cpu)`` images/s: each worker at its measured cost
on its own core, the main process (receive, copy out of the shared slot, batch) at its own.
That line is a projection from measured costs, labelled so; the wall rates measured on this
machine are printed beside it.

    .venv/bin/python benchmarks/loader_scaling.py --n 20000 --epochs 2
    .venv/bin/python benchmarks/loader_scaling.py --workers 0,1,2,4,8      # where there are cores
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch

from ganscale.config import DataConfig
from ganscale.corpus.pack import pack
from ganscale.corpus.synth import write_synthetic
from ganscale.data.loader import build_loader


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(shards: Path, size: int, batch: int, workers: int, epochs: int, persistent: bool = True) -> dict:
    cfg = DataConfig(
        source="shards",
        path=str(shards),
        num_workers=workers,
        pin_memory=False,
        persistent_workers=persistent,
    )
    stream = build_loader(
        cfg, image_size=size, batch_size=batch, seed=0, rank=0, world_size=1, output="uint8"
    )
    it = iter(stream)
    n = stream.batches_per_epoch * epochs
    t0, c0, w0 = time.perf_counter(), time.process_time(), children_cpu()
    for _ in range(n):
        next(it)
    wall = time.perf_counter() - t0
    main = time.process_time() - c0
    it.close()  # shuts the workers down (and the next epoch's, started ahead): now counted
    work = children_cpu() - w0
    images = n * batch
    return {
        "workers": workers,
        "persistent": persistent if workers else None,
        "images": images,
        "wall_per_s": images / wall,
        "main_us_per_image": 1e6 * main / images,
        "worker_us_per_image": 1e6 * work / images if workers else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="Images in the corpus.")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2, help="Epochs per measurement.")
    ap.add_argument("--formats", default="png,raw")
    ap.add_argument("--workers", default="0,1,2", help="Worker counts, e.g. 0,1,2,4,8 on a bigger machine.")
    ap.add_argument(
        "--per-pass",
        action="store_true",
        help="Also rows with workers forked per pass (persistent_workers=false).",
    )
    ap.add_argument("--corpus", type=Path, default=None, help="Keep the packed corpus here (reused).")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.corpus or Path(tmp)
        for fmt in args.formats.split(","):
            if not (root / fmt).exists():
                if not (root / "src").exists():
                    write_synthetic(root / "src", args.n, args.size, seed=0)
                pack(root / "src", root / fmt, size=args.size, per_shard=max(1, args.n // 16), fmt=fmt)
        load, cores = os.getloadavg()[0], os.cpu_count()
        print(f"load average {load:.1f} on {cores} cores; {args.n} images at {args.size} px")
        print("| format | workers | wall img/s (here) | main us/img | worker us/img | projected img/s |")
        print("|---|---|---:|---:|---:|---:|")
        results = []
        for fmt in args.formats.split(","):
            counts = [int(x) for x in args.workers.split(",")]
            runs = [(w, True) for w in counts] + [(w, False) for w in counts if w and args.per_pass]
            for w, persistent in runs:
                r = measure(root / fmt, args.size, args.batch, w, args.epochs, persistent)
                main_rate = 1e6 / r["main_us_per_image"]
                if w:
                    r["projected_per_s"] = min(w * 1e6 / r["worker_us_per_image"], main_rate)
                else:
                    r["projected_per_s"] = main_rate  # inline: the main process does everything
                r["format"] = fmt
                results.append(r)
                worker = f"{r['worker_us_per_image']:.1f}" if w else "-"
                label = f"{w}" if persistent or not w else f"{w} per pass"
                print(
                    f"| {fmt} | {label} | {r['wall_per_s']:,.0f} | {r['main_us_per_image']:.1f} | {worker} | "
                    f"{r['projected_per_s']:,.0f} |",
                    flush=True,
                )
    rounded = [{k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()} for r in results]
    print(json.dumps(rounded))


if __name__ == "__main__":
    main()
