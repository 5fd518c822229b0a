"""Image grids and plots written with PIL/numpy (no torchvision)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N,3,H,W] in [-1,1] -> uint8 [N,H,W,3]."""
    x = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: torch.Tensor, ncol: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile [N,3,H,W] images (in [-1,1]) into one uint8 HWC array, ``ncol`` per row."""
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    ncol = ncol or max(1, int(math.ceil(math.sqrt(n))))
    nrow = int(math.ceil(n / ncol))
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = arr[i]
    return grid


def save_png(array: np.ndarray, path: Path) -> Path:
    """Write a uint8 HWC array as PNG, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    tmp.replace(path)
    return path


def plot_losses(records: list[dict], path: Path) -> Path | None:
    """Loss curves from metrics.jsonl records, for people who do not use W&B."""
    steps = [r["step"] for r in records if "loss/d" in r]
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in ("loss/d", "loss/g"):
        axes[0].plot(steps, [r.get(key, float("nan")) for r in records if "loss/d" in r], label=key)
    axes[0].set_xlabel("step")
    axes[0].legend()
    axes[0].set_title("losses")
    for key in ("d/real", "d/fake"):
        axes[1].plot(steps, [r.get(key, float("nan")) for r in records if "loss/d" in r], label=key)
    axes[1].set_xlabel("step")
    axes[1].legend()
    axes[1].set_title("D(x), D(G(z))")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
