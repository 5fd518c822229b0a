"""Benchmark (not a test): ganscale's per-step overhead at a small step, against an independent
canonical loop.

At a step of a few milliseconds (where a GPU step of the real model lands), everything
ganscale runs around the math shows: the runtime's contexts, the NaN flag, the noise
counters, the EMA, logging-only metrics. This times :meth:`Trainer.step` of a real Trainer
(``ganscale.bench.step_bench.Bench``, in-memory batches) against a loop written here from the
pytorch/examples DCGAN recipe: it imports nothing of ganscale's training code, only the
same G and D modules (copies of the Trainer's, so the math is identical), and uses
PyTorch's defaults (``torch.optim.Adam``, global RNG, plain ``F`` losses). Both keep an EMA
of G (the loop with a ``torch._foreach_lerp_``), as every ganscale run does.

Like for like (fp32, contiguous, same batch): ``--fake shared`` compares
``train.shared_fake: true`` with the canonical one-G-forward loop (D steps on
``fake.detach()``, G steps through the same graph); ``--fake fresh`` compares the default
(a no-grad fake for D, a fresh fake for G) with the loop drawing twice. Rounds alternate
ganscale / loop (A/B/B/A...) so machine noise hits both; medians over rounds. Goal >= 0.97.

    .venv/bin/python benchmarks/overhead_small.py                        # both shapes, both fakes
    .venv/bin/python benchmarks/overhead_small.py --shape tiny --fake fresh --rounds 30
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
PLAIN = [
    "train.channels_last=false",
    "train.mixed_precision=no",
    "train.compile=false",
    "optim.impl=auto",
    "log.every=50",
]
SHAPES = {
    # the study's DCGAN shrunk to 8 channels, batch 8 (unconditional, 64 px)
    "dcgan8": ("configs/dcgan.yaml", ["model.g_channels=8", "model.d_channels=8", "train.batch_size=8"]),
    # the test config: a conditional 16 px DCGAN with separate heads, batch 8
    "tiny": ("configs/tiny.yaml", []),
    # the study's DCGAN itself (64 px, ngf = ndf = 64, batch 64): not in "all" (a ~1 s step);
    # run it with e.g. --shape study --rounds 6 --steps 3 --warmup 2
    "study": ("configs/dcgan.yaml", []),
}


class CanonicalLoop:
    """pytorch/examples' DCGAN step (+ the ACGAN class loss and an EMA of G)."""

    def __init__(self, G, D, cfg, num_classes: list[int], shared: bool) -> None:
        self.G, self.D, self.num_classes, self.shared = G, D, num_classes, shared
        lr, betas = cfg.optim.g_lr, (cfg.optim.beta1, cfg.optim.beta2)
        self.opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
        self.opt_d = torch.optim.Adam(D.parameters(), lr=cfg.optim.d_lr, betas=betas)
        self.z_dim, self.sigma, self.weight = cfg.model.z_dim, cfg.model.z_sigma, cfg.loss.class_weight
        self.fake_class = cfg.loss.d_fake_class
        self.decay = cfg.train.ema_decay
        self.ema = [p.detach().clone() for p in G.parameters()]

    def noise(self, batch: int):
        z = torch.randn(batch, self.z_dim) * self.sigma
        if not self.num_classes:
            return z, None
        return z, torch.stack([torch.randint(n, (batch,)) for n in self.num_classes], 1)

    def cls(self, logits: list, labels) -> torch.Tensor:
        if labels is None:
            return torch.zeros(())
        return sum(F.cross_entropy(x, labels[:, i]) for i, x in enumerate(logits)) / len(logits)  # mean

    def step(self, real: torch.Tensor, real_labels) -> None:
        G, D, b = self.G, self.D, real.shape[0]
        real_labels = real_labels if self.num_classes else None
        z, labels = self.noise(b)
        fake = G(z, labels) if self.shared else None
        # D
        self.opt_d.zero_grad(set_to_none=True)
        if fake is None:
            with torch.no_grad():
                d_fake_in = G(z, labels)
        else:
            d_fake_in = fake.detach()
        r_adv, r_cls = D(real, real_labels)
        f_adv, f_cls = D(d_fake_in, labels)
        loss_d = F.binary_cross_entropy_with_logits(r_adv, torch.ones_like(r_adv))
        loss_d = loss_d + F.binary_cross_entropy_with_logits(f_adv, torch.zeros_like(f_adv))
        loss_cls = self.cls(r_cls, real_labels) + (self.cls(f_cls, labels) if self.fake_class else 0.0)
        loss_d = loss_d + self.weight * loss_cls
        loss_d.backward()
        self.opt_d.step()
        # G
        self.opt_g.zero_grad(set_to_none=True)
        if fake is None:
            z, labels = self.noise(b)
            fake = G(z, labels)
        for p in D.parameters():
            p.requires_grad_(False)
        g_adv, g_cls = D(fake, labels)
        loss_g = F.binary_cross_entropy_with_logits(g_adv, torch.ones_like(g_adv)) + self.weight * self.cls(
            g_cls, labels
        )
        loss_g.backward()
        for p in D.parameters():
            p.requires_grad_(True)
        self.opt_g.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in G.parameters()], 1.0 - self.decay)


def measure(shape: str, fake: str, rounds: int, steps: int, warmup: int) -> dict:
    from ganscale.bench.step_bench import Bench, BenchOptions
    from ganscale.config import load_config

    config, extra = SHAPES[shape]
    shared = fake == "shared"
    cfg = load_config(REPO / config, [*PLAIN, *extra, f"train.shared_fake={str(shared).lower()}"])
    bench = Bench(cfg, BenchOptions(data="synthetic", flops=False))
    trainer = bench.trainer
    try:
        num_classes = list(trainer.num_classes)
        G, D = copy.deepcopy(trainer.rt.module("g")), copy.deepcopy(trainer.rt.module("d"))
        loop = CanonicalLoop(G, D, cfg, num_classes, shared)
        gen = torch.Generator().manual_seed(0)
        size, b = cfg.model.image_size, cfg.train.batch_size
        pool = [
            (
                torch.rand(b, 3, size, size, generator=gen) * 2 - 1,
                torch.stack([torch.randint(n, (b,), generator=gen) for n in num_classes], 1)
                if num_classes
                else None,
            )
            for _ in range(4)
        ]

        def run_ganscale(n: int) -> float:
            t0 = time.perf_counter()
            for _ in range(n):
                trainer.step()
            return time.perf_counter() - t0

        def run_loop(n: int) -> float:
            t0 = time.perf_counter()
            for i in range(n):
                loop.step(*pool[i % len(pool)])
            return time.perf_counter() - t0

        run_ganscale(warmup), run_loop(warmup)
        ours, theirs = [], []
        for r in range(rounds):
            order = (run_ganscale, run_loop) if r % 2 == 0 else (run_loop, run_ganscale)
            for fn in order:
                (ours if fn is run_ganscale else theirs).append(b * steps / fn(steps))
        ratios = [a / c for a, c in zip(ours, theirs, strict=True)]
        return {
            "shape": shape,
            "fake": fake,
            "batch_size": b,
            "image_size": size,
            "threads": torch.get_num_threads(),
            "ganscale_images_per_s": round(statistics.median(ours), 1),
            "loop_images_per_s": round(statistics.median(theirs), 1),
            "ms_per_step_loop": round(1000 * b / statistics.median(theirs), 2),
            "ratio": round(statistics.median(ours) / statistics.median(theirs), 3),
            "paired_ratio": round(statistics.median(ratios), 3),
            "rounds": rounds,
            "steps_per_round": steps,
        }
    finally:
        bench.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=[*SHAPES, "all"], default="all")
    ap.add_argument("--fake", choices=["shared", "fresh", "all"], default="all")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=25, help="steps per round and side")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: PyTorch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = ["dcgan8", "tiny"] if args.shape == "all" else [args.shape]
    fakes = ["shared", "fresh"] if args.fake == "all" else [args.fake]
    print("| shape | fake | ganscale img/s | canonical loop img/s | loop ms/step | ratio | paired |")
    print("|---|---|---:|---:|---:|---:|---:|")
    results = []
    for shape in shapes:
        for fake in fakes:
            r = measure(shape, fake, args.rounds, args.steps, args.warmup)
            results.append(r)
            print(
                f"| {shape} | {fake} | {r['ganscale_images_per_s']:.0f} | {r['loop_images_per_s']:.0f} | "
                f"{r['ms_per_step_loop']:.2f} | {r['ratio']:.3f} | {r['paired_ratio']:.3f} |",
                flush=True,
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
