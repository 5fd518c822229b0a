"""The study's geometric augmentation (random flip, slight rotation) as one warp of a batch.

The parameters of each record are drawn where the record is read, from (seed, epoch, pass,
shard file name, record key) exactly as the CPU path has always drawn them
(:func:`ganscale.data.decode.augment_params`), and travel with the batch as float32 [B, 2]:
``[flip (0 or 1), angle in degrees (0 = not rotated)]``. Resume therefore stays exact and
the distribution of transforms is the CPU path's, whichever device warps.

:func:`warp` applies them on the batch's device as *one* ``affine_grid`` + ``grid_sample``
(bilinear, border-clamped), the same geometry as PIL's ``Image.transform(AFFINE, BILINEAR)``
in :func:`ganscale.data.decode.augment`: flip first, then rotate about the image centre,
zoomed in by ``cos|a| + sin|a|`` so that no empty corner appears. PIL truncates its result
to uint8 (on average 0.5 of a level darker); the warp keeps float, otherwise the two agree
(tests/test_augment_geometric.py holds the tolerance).

This is the first stage of augmenting the batch on the training device; see
:mod:`ganscale.augment` for how later stages (DiffAugment, ADA) plug in after it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PARAMS = ("flip", "angle_degrees")
"""Columns of the per-sample parameter tensor."""

ANGLE_EPS_RAD = 1e-4
"""Angles below this (radians) are not rotated at all (no zoom either), as on the CPU path."""


def identity_params(n: int) -> torch.Tensor:
    """Parameters that leave ``n`` images unchanged."""
    return torch.zeros(n, len(PARAMS), dtype=torch.float32)


def affine_theta(params: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-sample 2x3 matrices (output -> input, normalised coordinates) of ``params`` [B, 2].

    In pixels (centre ``c``) PIL reads input ``(a(x-cx) + b(y-cy) + cx, -b(x-cx) + a(y-cy) + cy)``
    with ``a = cos t / zoom``, ``b = sin t / zoom``; a flip before it negates the input x. In
    ``affine_grid``'s [-1, 1] coordinates (``align_corners=False``, pixel edges at +-1, as PIL's
    pixel centres at i + 0.5) the same map needs the aspect ratio on the off-diagonal terms.
    Computed in float64 (as PIL does), returned in float32.
    """
    p = params.to(torch.float64)
    t = torch.deg2rad(p[:, 1])
    t = torch.where(t.abs() > ANGLE_EPS_RAD, t, torch.zeros_like(t))
    zoom = torch.cos(t.abs()) + torch.sin(t.abs())
    a, b = torch.cos(t) / zoom, torch.sin(t) / zoom
    sx = 1.0 - 2.0 * (p[:, 0] > 0.5).to(torch.float64)  # -1 where flipped
    zero = torch.zeros_like(a)
    row0 = torch.stack([sx * a, sx * b * (height / width), zero], 1)
    row1 = torch.stack([-b * (width / height), a, zero], 1)
    return torch.stack([row0, row1], 1).to(torch.float32)


def warp(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Flip and rotate float ``images`` [B, C, H, W] by ``params`` [B, 2] on their device.

    No rotation anywhere in the batch: flips by indexing (bit-exact, no resampling). Else one
    bilinear ``grid_sample`` for the whole batch (unflipped, unrotated samples pass through it
    at their own pixel centres: equal up to float rounding).
    """
    if images.shape[0] != params.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {params.shape[0]} augmentation parameters")
    host = params.detach().to("cpu", torch.float32)  # the loader's CPU tensor: no device sync
    flip = host[:, 0] > 0.5
    rotated = (torch.deg2rad(host[:, 1].double()).abs() > ANGLE_EPS_RAD).any().item()
    if not rotated:
        if not flip.any().item():
            return images
        mask = to_device(flip, images.device).view(-1, 1, 1, 1)
        return torch.where(mask, images.flip(-1), images)
    _, _, h, w = images.shape
    theta = to_device(affine_theta(host, h, w), images.device)
    x = images if images.dtype in (torch.float32, torch.float64) else images.float()
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(images.dtype)


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor (the flips, the warp's matrices) on ``device`` without making the
    host wait for the GPU: on CUDA through pinned memory with ``non_blocking`` (a pageable
    ``.to()`` waits for the copy, and with it for every kernel queued before it, once per
    micro-batch). The CUDA caching host allocator keeps the pinned block until the copy has
    run, so the temporary may go out of scope at once. Elsewhere a plain ``.to()``."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1] (``x / 127.5 - 1``, the loader's CPU formula)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"to_unit_range expects uint8 images, got {images.dtype}")
    return images.to(torch.float32).mul_(1 / 127.5).sub_(1.0)
