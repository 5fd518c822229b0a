"""Differentiable augmentation of the images D sees: DiffAugment's translation, cutout and colour.

DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training")
transforms every image D sees, real and fake alike, with the same family of random transforms;
because each transform is differentiable, G's gradient flows back through it. The transforms
follow the authors' reference code (``DiffAugment_pytorch.py``):

- translation: shift by an integer in [-H/8, H/8] x [-W/8, W/8] pixels, zero padding;
- cutout: zero a square of half the image side at a random centre (clipped at the border);
- color: brightness + U[-0.5, 0.5]; saturation (distance from the per-pixel channel mean) x
  U[0, 2]; contrast (distance from the image mean) x U[0.5, 1.5], in that order.

Images are in [-1, 1] (G's tanh), as in the reference code; nothing is clamped.

ADA (Karras et al. 2020) runs the same transforms with a probability: given ``p``, each
transform (brightness, saturation and contrast count as three) is applied to each sample with
probability p, and a sample that skips it is left exactly as it was (no shift, no box, its own
values). ``p=None`` applies everything (DiffAugment). See :mod:`ganscale.augment.ada`.

Every random number comes from the ``torch.Generator`` passed in (the trainer derives one per
step from (seed, rank, step), :mod:`ganscale.seeding`), never from the global RNG, and is
drawn in float32 whatever the image dtype: a resumed run draws the same parameters, and bf16
autocast draws what fp32 draws.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

TRANSFORMS = ("translation", "cutout", "color")
"""The policy's transform names (DiffAugment's)."""

TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"translation,cutout"`` -> ("translation", "cutout"); ValueError naming a bad name."""
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    bad = [n for n in names if n not in TRANSFORMS]
    if bad or not names:
        raise ValueError(f"{policy!r}: use a comma-separated list of {', '.join(TRANSFORMS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{policy!r} names a transform twice")
    return names


def _uniform(x: Tensor, gen: torch.Generator) -> Tensor:
    """One U[0, 1) per sample, float32, from ``gen``."""
    return torch.rand(x.shape[0], device=x.device, generator=gen)


def _applied(x: Tensor, gen: torch.Generator, p: Tensor | None) -> Tensor | None:
    """Which samples get this transform (None: all). Drawn before the transform's parameters."""
    if p is None:
        return None
    return _uniform(x, gen) < p


def _factor(values: Tensor, mask: Tensor | None, identity: float, x: Tensor) -> Tensor:
    """Per-sample factor [B, 1, 1, 1] in x's dtype; samples outside ``mask`` get ``identity``."""
    if mask is not None:
        values = torch.where(mask, values, torch.full_like(values, identity))
    return values.to(x.dtype).view(-1, 1, 1, 1)


def brightness(x: Tensor, gen: torch.Generator, p: Tensor | None = None) -> Tensor:
    mask = _applied(x, gen, p)
    return x + _factor(_uniform(x, gen) - 0.5, mask, 0.0, x)


def _only(mask: Tensor | None, y: Tensor, x: Tensor) -> Tensor:
    """``y`` where ``mask``, else exactly ``x`` ((x - m) * 1 + m is not always x in floating point)."""
    return y if mask is None else torch.where(mask.view(-1, 1, 1, 1), y, x)


def saturation(x: Tensor, gen: torch.Generator, p: Tensor | None = None) -> Tensor:
    mask = _applied(x, gen, p)
    mean = x.mean(dim=1, keepdim=True)
    return _only(mask, (x - mean) * _factor(_uniform(x, gen) * 2, None, 1.0, x) + mean, x)


def contrast(x: Tensor, gen: torch.Generator, p: Tensor | None = None) -> Tensor:
    mask = _applied(x, gen, p)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return _only(mask, (x - mean) * _factor(_uniform(x, gen) + 0.5, None, 1.0, x) + mean, x)


def _shifts(x: Tensor, gen: torch.Generator, limit: int, mask: Tensor | None) -> Tensor:
    """Integer shift in [-limit, limit] per sample (0 outside ``mask``)."""
    s = torch.randint(-limit, limit + 1, (x.shape[0],), device=x.device, generator=gen)
    return s if mask is None else s * mask


def translation(x: Tensor, gen: torch.Generator, p: Tensor | None = None) -> Tensor:
    """Shift each sample by whole pixels; what is shifted in is 0. Differentiable (a gather)."""
    mask = _applied(x, gen, p)
    b, _, h, w = x.shape
    sx = _shifts(x, gen, int(h * TRANSLATION_RATIO + 0.5), mask)
    sy = _shifts(x, gen, int(w * TRANSLATION_RATIO + 0.5), mask)
    # the reference code's gather: pad by one zero pixel, read each output pixel from row
    # (i + shift + 1) of the padded image, clamped onto the padding
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + sx.view(b, 1, 1) + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + sy.view(b, 1, 1) + 1).clamp(0, w + 1)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    padded = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # [B, H+2, W+2, C]
    return padded[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(x: Tensor, gen: torch.Generator, p: Tensor | None = None) -> Tensor:
    """Zero a (H/2 x W/2) box per sample, centred at a random pixel, clipped at the border."""
    mask = _applied(x, gen, p)
    b, _, h, w = x.shape
    ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    # the reference code's offsets: centre in [0, H + (1 - size % 2)), box [centre - size//2, +size)
    top = torch.randint(0, h + (1 - ch % 2), (b,), device=x.device, generator=gen) - ch // 2
    left = torch.randint(0, w + (1 - cw % 2), (b,), device=x.device, generator=gen) - cw // 2
    r = torch.arange(h, device=x.device).view(1, h, 1)
    c = torch.arange(w, device=x.device).view(1, 1, w)
    top, left = top.view(b, 1, 1), left.view(b, 1, 1)
    box = (r >= top) & (r < top + ch) & (c >= left) & (c < left + cw)
    if mask is not None:
        box = box & mask.view(b, 1, 1)
    return x * (~box).unsqueeze(1).to(x.dtype)


STEPS: dict[str, tuple[Callable[[Tensor, torch.Generator, Tensor | None], Tensor], ...]] = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}
"""The transforms of each policy name, in the reference code's order within a name."""


def augment(x: Tensor, policy: tuple[str, ...], gen: torch.Generator, p: Tensor | None = None) -> Tensor:
    """``x`` [B, C, H, W] through every transform of ``policy`` (each with probability ``p``
    per sample, or always when ``p`` is None), parameters drawn from ``gen`` in policy order.

    The reference code applies color, then translation, then cutout whatever the order in
    the policy string; so does this (the policy is a set).
    """
    for name in ("color", "translation", "cutout"):
        if name in policy:
            for fn in STEPS[name]:
                x = fn(x, gen, p)
    return x
