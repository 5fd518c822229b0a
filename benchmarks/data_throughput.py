"""Benchmark (not a test): images/s the corpus layer delivers on this machine.

Rows: the synthetic renderer (render + PNG + write, one core), raw PIL decode of the packed
images (the limit), and the streaming loader (decode + flip/rotate 5 degrees + batch to float
[-1, 1]) with 0, 1 and 2 workers, and with 0 workers and no rotation. Prints a table, then
one line of JSON.

    .venv/bin/python benchmarks/data_throughput.py --n 4000 --size 64
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ganscale.config import DataConfig
from ganscale.corpus.pack import pack
from ganscale.corpus.synth import write_synthetic
from ganscale.data.loader import build_loader


def raw_decode_rate(shards: Path, repeats: int) -> tuple[float, float]:
    blobs = []
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as tf:
            blobs += [tf.extractfile(m).read() for m in tf.getmembers() if m.name.endswith(".png")]
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        for b in blobs:
            with Image.open(io.BytesIO(b)) as im:
                np.asarray(im.convert("RGB"))
    n = repeats * len(blobs)
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def loader_rate(
    shards: Path, size: int, batch: int, workers: int, epochs: int, rotate: float = 5.0
) -> tuple[float, float]:
    cfg = DataConfig(
        source="shards", path=str(shards), num_workers=workers, pin_memory=False, rotate_degrees=rotate
    )
    s = build_loader(cfg, image_size=size, batch_size=batch, seed=0, rank=0, world_size=1)
    it = iter(s)
    next(it)  # start-up (worker spawn) is not throughput
    n = s.batches_per_epoch * epochs
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        next(it)
    # CPU time of the main process only: meaningful per core with 0 workers.
    return n * batch / (time.perf_counter() - t0), n * batch / max(time.process_time() - c0, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0, c0 = time.perf_counter(), time.process_time()
        write_synthetic(root / "src", args.n, args.size, seed=0)
        synth = (args.n / (time.perf_counter() - t0), args.n / (time.process_time() - c0))
        pack(root / "src", root / "shards", size=args.size, per_shard=max(1, args.n // 16))
        raw = raw_decode_rate(root / "shards", args.epochs)
        rows = {"synth (1 core)": synth, "raw PIL decode": raw}
        for w in (0, 1, 2):
            rows[f"loader, {w} workers"] = loader_rate(root / "shards", args.size, args.batch, w, args.epochs)
        # the same without the rotation (PIL's bilinear affine is the costliest step per image)
        rows["loader, 0 w, no rotate"] = loader_rate(
            root / "shards", args.size, args.batch, 0, args.epochs, 0.0
        )
    # Wall-clock rates are what a run sees. On a shared machine also read "per cpu-s" (images
    # per CPU-second of the main process; 0 workers only), which other load does not distort.
    print(f"{'what':<22}{'images/s':>10}{'x raw':>8}{'per cpu-s':>11}")
    for name, (rate, per_cpu) in rows.items():
        cpu_col = "" if name.startswith(("loader, 1", "loader, 2")) else f"{per_cpu:>11.0f}"
        print(f"{name:<22}{rate:>10.0f}{rate / raw[0]:>8.2f}{cpu_col}")
    best = max(v[0] for k, v in rows.items() if k.startswith("loader") and "no rotate" not in k)
    result = {
        "size": args.size,
        "n": args.n,
        "batch": args.batch,
        "synth_per_s": round(synth[0]),
        "synth_per_cpu_s": round(synth[1]),
        "raw_decode_per_s": round(raw[0]),
        "raw_decode_per_cpu_s": round(raw[1]),
        **{f"loader_w{w}_per_s": round(rows[f"loader, {w} workers"][0]) for w in (0, 1, 2)},
        "loader_w0_per_cpu_s": round(rows["loader, 0 workers"][1]),
        "loader_w0_no_rotate_per_s": round(rows["loader, 0 w, no rotate"][0]),
        "best_loader_over_raw": round(best / raw[0], 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
