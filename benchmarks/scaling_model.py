"""Parameters, bytes all-reduced per step and compute per step of G and D, for docs/scaling.md.

    python benchmarks/scaling_model.py configs/dcgan.yaml configs/acgan.yaml

Counts, not measurements: parameters from the real networks, FLOPs from torch's FLOP counter
on one forward pass (a training step's forward + backward is ~3x that), bytes all-reduced from
the gradient sizes. Measure the real step time and scaling with benchmarks/scaling_measure.sh.
"""

from __future__ import annotations

import json
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from ganscale.config import load_config
from ganscale.models import build_discriminator, build_generator
from ganscale.train.plan import d_norm_of


def count(path: str) -> dict:
    cfg = load_config(path)
    from ganscale.shardformat.vocab import MLDS_ATTRIBUTES  # the study's tags: hair and eye colours

    num_classes = [len(v) for v in MLDS_ATTRIBUTES.values()] if cfg.model.conditional else []
    G = build_generator(cfg.model, num_classes)
    D = build_discriminator(cfg.model, num_classes, norm=d_norm_of(cfg))
    b = cfg.train.batch_size
    z = torch.randn(1, cfg.model.z_dim)
    labels = torch.zeros(1, len(num_classes), dtype=torch.long) if num_classes else None
    with FlopCounterMode(display=False) as fc_g:
        x = G(z, labels)
    with FlopCounterMode(display=False) as fc_d:
        D(x.detach(), labels)
    g_fwd, d_fwd = fc_g.get_total_flops(), fc_d.get_total_flops()
    p_g = sum(p.numel() for p in G.parameters())
    p_d = sum(p.numel() for p in D.parameters())
    # One optimizer step per network (n_critic = 1) on a per-GPU batch b:
    #   D step: G forward (no grad) on b + D fwd+bwd on 2b (real and fake)
    #   G step: G fwd+bwd on b + D fwd+bwd (input gradient) on b
    step = b * (g_fwd + 3 * 2 * d_fwd + 3 * g_fwd + 3 * d_fwd)
    return {
        "config": path,
        "params_G": p_g,
        "params_D": p_d,
        "allreduce_bytes_G_fp32": 4 * p_g,
        "allreduce_bytes_D_fp32": 4 * p_d,
        "allreduce_bytes_G_bf16": 2 * p_g,
        "allreduce_bytes_D_bf16": 2 * p_d,
        "flops_fwd_G_per_image": g_fwd,
        "flops_fwd_D_per_image": d_fwd,
        "batch_per_gpu": b,
        "flops_per_step_per_gpu": step,
    }


if __name__ == "__main__":
    print(
        json.dumps([count(p) for p in sys.argv[1:] or ["configs/dcgan.yaml", "configs/acgan.yaml"]], indent=1)
    )
