"""Benchmark (not a test): the numbers of docs/performance.md, on whatever device is here.

Sections (``--sections``, comma separated; all by default):

- ``models``: the study's DCGAN and the ResNet ACGAN at batch 256 (``--batch``) in fp32, bf16,
  bf16 + channels_last, + torch.compile, + no per-step host sync (faults.check_every) and
  + compile mode reduce-overhead (CUDA graphs); each beside the plain fp32 loop (ratio) with
  MFU. A variant that fails (e.g. CUDA graphs refusing a pattern) is reported, not fatal.
- ``loader``: the streaming loader's img/s at 64 px with 0, 1, 2, 4, 8 workers (per worker
  too), and the workers needed to feed the fastest step measured in ``models``.
- ``scaling``: img/s of the DCGAN at batch 16, 64, 256 (64 px) and at 32, 64, 128 px (batch 64).

Every measurement runs ``ganscale bench`` in its own process (fresh compile caches and
memory statistics) and appends its JSON line to ``OUT/results.jsonl``; at the end a Markdown
summary is printed and written to ``OUT/summary.md``. On a GPU machine:

    .venv/bin/python benchmarks/gpu_bench.py --out runs/gpu-bench
    .venv/bin/python benchmarks/gpu_bench.py --sections loader --out runs/gpu-bench   # one part
    .venv/bin/python benchmarks/gpu_bench.py --sections models --models dcgan --variants fp32,+compile

(``benchmarks/gpu_check.sh`` is the 7-minute subset: three DCGAN variants, the study configs'
short trainings, the loader, the gpu tests.)

On a CPU (slow: seconds per step) pass ``--steps 3 --warmup 1 --batch 64`` and pick sections.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = {"dcgan": "configs/dcgan.yaml", "acgan-resnet": "configs/acgan.yaml"}
VARIANTS = {
    "fp32": ["train.mixed_precision=no"],
    "bf16": ["train.mixed_precision=bf16"],
    "bf16+channels_last": ["train.mixed_precision=bf16", "train.channels_last=true"],
    "+compile": ["train.mixed_precision=bf16", "train.channels_last=true", "train.compile=true"],
    "+no step sync": [
        "train.mixed_precision=bf16",
        "train.channels_last=true",
        "train.compile=true",
        "faults.nan_policy=rollback",
        "faults.check_every=50",
        "checkpoint.every=2000",
    ],
    "+reduce-overhead": [
        "train.mixed_precision=bf16",
        "train.channels_last=true",
        "train.compile=true",
        "train.compile_mode=reduce-overhead",
        "faults.nan_policy=rollback",
        "faults.check_every=50",
        "checkpoint.every=2000",
    ],
}
COMMON = ["optim.impl=auto", "train.compile=false", "train.channels_last=false"]


def bench(config: str, overrides: list[str], args: argparse.Namespace, *extra: str) -> dict:
    """One `ganscale bench` in a subprocess; its JSON line (or an error row)."""
    cmd = [
        sys.executable,
        "-m",
        "ganscale",
        "bench",
        str(REPO / config),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
        *extra,
    ]
    for o in [*COMMON, f"data.cache_dir={args.cache_dir}", *overrides]:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = proc.stdout.strip().splitlines()
    try:
        row = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        row = {"error": " | ".join(tail)[-400:]}
    row["command"] = " ".join(cmd[1:])
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    with (args.out / "results.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
    status = row.get("error") or f"{row.get('images_per_s')} img/s, ratio {row.get('ratio')}"
    print(f"  {config} {' '.join(overrides)}: {status}", flush=True)
    return row


def section_models(args: argparse.Namespace) -> list[str]:
    out = [
        f"## Models at batch {args.batch} (ratio: to the plain fp32 loop)",
        "",
        "| model | variant | img/s | ms/step | plain fp32 img/s | ratio | MFU | peak MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model, config in MODELS.items():
        if model not in args.models:
            continue
        for name, over in VARIANTS.items():
            if name not in args.variants:
                continue
            r = bench(config, [*over, f"train.batch_size={args.batch}"], args, "--baseline-fp32")
            args.best_rate = max(args.best_rate, r.get("images_per_s", 0) or 0)
            if "error" in r:
                out.append(f"| {model} | {name} | failed: {r['error'][:80]} | | | | | |")
                continue
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
            out.append(
                f"| {model} | {name} | {r['images_per_s']:.0f} | {r['ms_per_step']:.1f} | "
                f"{r['baseline_images_per_s']:.0f} | {r['ratio']:.2f} | {mfu} | {r['peak_mem_mb']:.0f} |"
            )
    return out


def loader_rate(workers: int, args: argparse.Namespace) -> float:
    """img/s of the real loader alone at 64 px, batch 64, as the trainer asks for it (read,
    decode, batch into uint8; the flip/rotation run on the training device, not here)."""
    from ganscale.config import DataConfig
    from ganscale.data.loader import build_loader

    cfg = DataConfig(
        source="synthetic", cache_dir=str(args.cache_dir), synthetic_n=args.synthetic_n, num_workers=workers
    )
    stream = build_loader(cfg, image_size=64, batch_size=64, seed=0, rank=0, world_size=1, output="uint8")
    it = iter(stream)
    for _ in range(3):  # worker start-up is not throughput
        next(it)
    t0 = time.perf_counter()
    for _ in range(args.loader_batches):
        next(it)
    return args.loader_batches * 64 / (time.perf_counter() - t0)


def section_loader(args: argparse.Namespace) -> list[str]:
    cpus = os.cpu_count() or 1
    counts = [w for w in (0, 1, 2, 4, 8, 16) if w <= max(2, cpus)]
    rows = {w: loader_rate(w, args) for w in counts}
    for w, r in rows.items():
        print(f"  loader, {w} workers: {r:.0f} img/s", flush=True)
    with (args.out / "results.jsonl").open("a") as f:
        f.write(json.dumps({"loader_images_per_s": {str(w): round(r) for w, r in rows.items()}}) + "\n")
    per_worker = max(rows[w] / w for w in rows if w > 0) if any(w > 0 for w in rows) else rows[0]
    out = [
        "## Data loader (64 px, batch 64, PNG shards, flip + rotate)",
        "",
        "| workers | img/s | img/s per worker |",
        "|---:|---:|---:|",
    ]
    out += [f"| {w} | {r:.0f} | {r / w if w else r:.0f} |" for w, r in rows.items()]
    if args.best_rate:
        need = math.ceil(args.best_rate / per_worker)
        out += [
            "",
            f"Fastest step measured: {args.best_rate:.0f} img/s -> about {need} workers "
            f"({per_worker:.0f} img/s each) to feed it, on {cpus} CPU cores.",
        ]
    return out


def section_scaling(args: argparse.Namespace) -> list[str]:
    best = args.scaling_variant
    over = VARIANTS[best]
    out = [
        f"## How cost grows (DCGAN, {best})",
        "",
        "| batch | px | img/s | ms/step | GFLOP/image |",
        "|---:|---:|---:|---:|---:|",
    ]
    for batch, px in [(16, 64), (64, 64), (256, 64), (64, 32), (64, 128)]:
        r = bench(MODELS["dcgan"], [*over, f"train.batch_size={batch}", f"model.image_size={px}"], args)
        if "error" in r:
            out.append(f"| {batch} | {px} | failed: {r['error'][:60]} | | |")
            continue
        out.append(
            f"| {batch} | {px} | {r['images_per_s']:.1f} | {r['ms_per_step']:.0f} | "
            f"{r['flops_per_image'] / 1e9:.2f} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "runs/gpu-bench")
    ap.add_argument("--sections", default="models,loader,scaling")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--loader-batches", type=int, default=60)
    ap.add_argument("--synthetic-n", type=int, default=20000, help="images in the loader's corpus")
    ap.add_argument("--scaling-variant", default="+compile", choices=list(VARIANTS))
    ap.add_argument("--threads", type=int, default=0, help="torch threads per bench (0: default)")
    ap.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"models section: comma list of {', '.join(VARIANTS)}"
    )
    ap.add_argument(
        "--models", default=",".join(MODELS), help=f"models section: comma list of {', '.join(MODELS)}"
    )
    ap.add_argument("--cache-dir", type=Path, default=REPO / ".cache/ganscale")
    args = ap.parse_args()
    for key, known in (("variants", VARIANTS), ("models", MODELS)):
        chosen = [v.strip() for v in getattr(args, key).split(",") if v.strip()]
        unknown = [v for v in chosen if v not in known]
        if unknown:
            ap.error(f"--{key}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
        setattr(args, key, chosen)
    args.out.mkdir(parents=True, exist_ok=True)
    args.best_rate = 0.0
    summary: list[str] = []
    sections = {"models": section_models, "loader": section_loader, "scaling": section_scaling}
    for name in args.sections.split(","):
        print(f"[{name}]", flush=True)
        summary += [*sections[name](args), ""]
    text = "\n".join(summary)
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
