"""Within-condition diversity: how varied a generator's images of one condition are, against
real images of the same condition.

A conditional GAN can get every colour right and still draw one face per condition (the
textbook collapse); accuracy and a colour-dominated FID do not see it. ``diversity`` is

    mean over conditions c of  d(generated images of c)
    ----------------------------------------------------  (conditions with >= 2 of each)
    mean over the same c of    d(real images of c)

where ``d`` is the mean pairwise Euclidean distance within a set. 1.0: as varied as the data;
~0: one image per condition; above 1: more varied than the data (noise is "varied" too, so
diversity is read beside FID and precision, never alone). An unconditional run is one
condition: the whole set. The mean pairwise distance is an unbiased estimate at any set size
(each pair counts once), so a condition drawn 3 times and one drawn 80 times measure the same
quantity; averaging distances before dividing keeps a condition whose few real images happen
to be alike from dominating the ratio.

Which space the distances are measured in (:func:`structure_embedding`): the *edges* of the
image, not its colours. The condition is a colour (hair, eyes), and what varies within it in
real data is structure: hair style, glasses, expression, background pattern. So the image is
reduced to luma (colour dropped), the Sobel gradient magnitude is taken (a uniform
brightness or tint change of a flat region, like the "background tint" that is all that
varies in a collapsed grid, leaves the edges inside it unchanged), averaged down to at most
16 x 16 (pixel noise and checkerboard artefacts are not diversity), and each image's edge map
is standardised (zero mean, unit variance: global contrast does not count). Two such vectors
differ by ``sqrt(2 (1 - r))``, r the correlation of the two edge maps.

The same ratio in the attribute classifier's feature space is reported beside it
(``diversity_classifier``); that network is trained to read colour and to ignore structure,
so its spread within a condition says little about faces: it is a second opinion, not the
headline.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

STRUCTURE_SIZE = 16
"""Side of the edge map the distances are computed on (256 numbers per image)."""
EDGE_INPUT_SIZE = 32
"""Images larger than this are area-averaged to it before the edges are taken."""
MAX_PER_CONDITION = 1000
"""Images per condition (and per set) used for pairwise distances: 1000 -> 499,500 pairs."""
MIN_PER_CONDITION = 2
DIVERSITY_FLOOR = 1e-3
"""fid_div divides by diversity clamped to [DIVERSITY_FLOOR, 1]."""

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601
_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


@torch.no_grad()
def structure_embedding(images: Tensor) -> Tensor:
    """[N, 3, S, S] images (float in [-1, 1] or uint8) -> [N, D] float32 cpu edge-map vectors
    (D = min(S, 16)^2), each of unit norm up to rounding (zero for a flat image)."""
    x = images.float().div(127.5).sub(1.0) if images.dtype == torch.uint8 else images.float()
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    luma = (x * w).sum(1, keepdim=True)
    if luma.shape[-1] > EDGE_INPUT_SIZE:
        luma = F.adaptive_avg_pool2d(luma, EDGE_INPUT_SIZE)
    padded = F.pad(luma, (1, 1, 1, 1), mode="replicate")
    kx = _SOBEL.to(x.device, x.dtype).view(1, 1, 3, 3)
    gx = F.conv2d(padded, kx)
    gy = F.conv2d(padded, kx.transpose(2, 3))
    edges = (gx.square() + gy.square()).sqrt()
    if edges.shape[-1] > STRUCTURE_SIZE:
        edges = F.adaptive_avg_pool2d(edges, STRUCTURE_SIZE)
    v = edges.flatten(1)
    v = v - v.mean(1, keepdim=True)
    v = v / (v.std(1, keepdim=True, unbiased=False) + 1e-6)
    return (v / math.sqrt(v.shape[1])).cpu()


def mean_pairwise_distance(x: Tensor) -> float:
    """Mean Euclidean distance over all pairs of the first MAX_PER_CONDITION rows of [k, D]."""
    x = x[:MAX_PER_CONDITION].double()
    if len(x) < 2:
        raise ValueError(f"need at least 2 vectors for a pairwise distance, got {len(x)}")
    return float(torch.pdist(x).mean())


def _groups(labels: Tensor | None, n: int) -> dict[tuple[int, ...], Tensor]:
    """Row indices per condition (the full label row); one group of all rows without labels."""
    if labels is None:
        return {(): torch.arange(n)}
    uniq, inverse = torch.unique(labels.long(), dim=0, return_inverse=True)
    return {tuple(int(v) for v in row): (inverse == i).nonzero().flatten() for i, row in enumerate(uniq)}


def within_condition_diversity(
    gen: Tensor, gen_labels: Tensor | None, real: Tensor, real_labels: Tensor | None
) -> tuple[float, int] | None:
    """(diversity ratio, number of conditions averaged over), or None when no condition has at
    least 2 generated and 2 real vectors, or the real ones do not vary at all.

    ``gen`` [N, D], ``real`` [M, D]: vectors in one space; ``*_labels`` [N, A] / [M, A] label
    rows (a condition is a whole row; real rows with unknown (-1) entries match no request),
    or None for an unconditional generator (all vectors are one condition)."""
    if (gen_labels is None) != (real_labels is None):
        raise ValueError("give labels for both sets or for neither")
    g_groups = _groups(gen_labels, len(gen))
    r_groups = _groups(real_labels, len(real))
    shared = [
        c for c in g_groups if c in r_groups and min(len(g_groups[c]), len(r_groups[c])) >= MIN_PER_CONDITION
    ]
    if not shared:
        return None
    g = sum(mean_pairwise_distance(gen[g_groups[c]]) for c in shared) / len(shared)
    r = sum(mean_pairwise_distance(real[r_groups[c]]) for c in shared) / len(shared)
    if r <= 0:
        return None
    return g / r, len(shared)


def fid_div(fid_value: float, diversity: float) -> float:
    """FID penalised for collapse: ``fid / clamp(diversity, 1e-3, 1)``.

    At diversity >= 1 it is the FID; at 0.5 twice the FID; a generator that draws one image per
    condition (diversity ~0) scores ~1000x its FID, so collapsing cannot win ``best/`` however
    well the colours match. Diversity above 1 earns nothing (noise is varied too)."""
    return fid_value / min(max(diversity, DIVERSITY_FLOOR), 1.0)
