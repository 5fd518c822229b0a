"""Benchmark (not a test): ganscale's training step against a plain PyTorch loop.

The study's DCGAN (64 px, ngf=ndf=64, batch 64, BCE, Adam) by default: images/s of
ganscale's real step (``Trainer.d_phase`` + ``Trainer.g_phase``) and of the hand-written
plain loop (``ganscale/plain_loop.py``) with the same model, batch and precision, in the same
process, alternating step by step (A/B/A/B) so machine noise hits both; medians reported.
Prints both and the ratio; the last line is JSON. Goal on CPU: ratio >= 0.97.

    .venv/bin/python benchmarks/train_step.py                       # fp32 vs fp32
    .venv/bin/python benchmarks/train_step.py --precision bf16      # bf16 vs bf16
    .venv/bin/python benchmarks/train_step.py --best-cpu            # ganscale's CPU settings vs plain fp32

It reuses :mod:`ganscale.bench.step_bench` (``ganscale bench configs/dcgan.yaml --baseline`` is the same
measurement with more options).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ganscale.bench.step_bench import BenchOptions, format_result, run_bench
from ganscale.config import load_config

REPO = Path(__file__).resolve().parents[1]
STUDY = ["model.image_size=64", "model.g_channels=64", "model.d_channels=64", "train.batch_size=64"]
BEST_CPU = ["train.mixed_precision=bf16", "train.channels_last=true", "optim.impl=foreach"]
"""ganscale's fastest settings measured on the 2-core CPU (docs/performance.md)."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs/dcgan.yaml"))
    ap.add_argument(
        "--precision",
        default="no",
        choices=["no", "bf16", "fp16"],
        help="precision of both sides (default fp32)",
    )
    ap.add_argument(
        "--best-cpu",
        action="store_true",
        help="ganscale with its best CPU settings against the plain fp32 loop",
    )
    ap.add_argument("--steps", type=int, default=10, help="timed steps per side")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra config override")
    args = ap.parse_args()
    overrides = [
        *STUDY,
        "train.channels_last=false",
        "train.compile=false",
        "optim.impl=auto",
        f"train.mixed_precision={args.precision}",
        *args.overrides,
    ]
    if args.best_cpu:
        overrides += BEST_CPU
    cfg = load_config(args.config, overrides)
    opts = BenchOptions(
        steps=args.steps,
        warmup=args.warmup,
        repeats=args.steps,
        data="synthetic",
        baseline=True,
        baseline_fp32=args.best_cpu,
        threads=args.threads,
    )
    result = run_bench(cfg, opts)
    print(format_result(result))
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "images_per_s",
                    "baseline_images_per_s",
                    "ratio",
                    "best_ratio",
                    "paired_ratio",
                    "cpu_ratio",
                    "ms_per_step",
                    "baseline_ms_per_step",
                    "precision",
                    "baseline_precision",
                    "channels_last",
                    "batch_size",
                    "image_size",
                    "device",
                    "steps",
                    "images_per_s_per_round",
                    "baseline_images_per_s_per_round",
                )
            }
        )
    )


if __name__ == "__main__":
    main()
