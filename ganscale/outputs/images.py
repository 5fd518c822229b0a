"""Image grids and plots written with PIL/numpy (no torchvision).

torch is imported only by the functions that take tensors: ``labelled_grid``/``upscale`` also
serve the torch-free ONNX path of ``ganscale sample``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

LABEL_INK = (25, 25, 25)
LABEL_MARGIN = 6


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N,3,H,W] in [-1,1] -> uint8 [N,H,W,3]."""
    import torch

    x = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def tile(images: np.ndarray, ncol: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 [N, H, W, 3] -> one uint8 HWC grid on white, ``ncol`` per row (torch-free)."""
    n, h, w, c = images.shape
    ncol = ncol or max(1, int(math.ceil(math.sqrt(n))))
    nrow = int(math.ceil(n / ncol))
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def make_grid(images: torch.Tensor, ncol: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile [N,3,H,W] images (in [-1,1]) into one uint8 HWC array, ``ncol`` per row."""
    return tile(to_uint8(images), ncol, pad)


def upscale(images: np.ndarray, min_cell: int) -> np.ndarray:
    """uint8 [N,H,W,C] enlarged by the smallest whole factor that makes each image at least
    ``min_cell`` px wide (nearest neighbour: every generated pixel stays a crisp square);
    ``min_cell`` <= the image size leaves them as they are."""
    factor = max(1, math.ceil(min_cell / images.shape[2])) if min_cell > 0 else 1
    if factor == 1:
        return images
    return images.repeat(factor, axis=1).repeat(factor, axis=2)


def _font(px: int):  # noqa: ANN202 - a PIL font object
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=px)  # Pillow >= 10.1 with FreeType: scalable
    except (TypeError, OSError):  # older Pillow or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def labelled_grid(
    images: np.ndarray,
    ncol: int,
    row_labels: list[str] | None = None,
    caption: str | None = None,
    pad: int = 2,
) -> np.ndarray:
    """The grid of uint8 [N,H,W,3] images (``ncol`` per row, as ``engines.grid``) with one
    text label at the left of each row (``row_labels``) and/or a ``caption`` above, in PIL's
    built-in font (works offline), sized to the cells."""
    from PIL import ImageDraw

    body = tile(images, ncol=ncol, pad=pad)
    if not row_labels and not caption:
        return body
    h = images.shape[1]
    font = _font(max(11, min(18, h // 4)))
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def box(text: str) -> tuple[int, int, int, int]:
        return tuple(int(v) for v in draw.textbbox((0, 0), text, font=font))  # type: ignore[return-value]

    left = max(box(t)[2] for t in row_labels) + 2 * LABEL_MARGIN if row_labels else 0
    top = box(caption)[3] + 2 * LABEL_MARGIN if caption else 0
    width = max(left + body.shape[1], left + pad + box(caption)[2] + LABEL_MARGIN if caption else 0)
    canvas = Image.new("RGB", (width, top + body.shape[0]), "white")  # a long caption widens it
    canvas.paste(Image.fromarray(body), (left, top))
    draw = ImageDraw.Draw(canvas)
    if caption:
        draw.text((left + pad, LABEL_MARGIN), caption, fill=LABEL_INK, font=font)
    for r, text in enumerate(row_labels or []):
        x0, y0, x1, y1 = box(text)
        centre = top + pad + r * (h + pad) + h / 2
        draw.text((left - LABEL_MARGIN - x1, round(centre - (y0 + y1) / 2)), text, fill=LABEL_INK, font=font)
    return np.asarray(canvas)


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
    try:
        import matplotlib
    except ImportError:  # a bare GPU image may lack it: the run's metrics.jsonl has the curves
        import warnings

        warnings.warn(f"matplotlib is not installed: {path.name} not written", stacklevel=2)
        return None

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
