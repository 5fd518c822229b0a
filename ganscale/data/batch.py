"""What the loader hands over per batch, and its conversion to float for CPU consumers."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from ganscale.augment.geometric import warp


class LoaderBatch(NamedTuple):
    """A batch as the loader hands it to the training device (``output="uint8"``)."""

    images: torch.Tensor
    """uint8 [B, 3, S, S] (NCHW indexing over HWC memory, i.e. channels_last: as decoded)."""
    labels: torch.Tensor
    """int64 [B, A] (-1 = unknown)."""
    aug: torch.Tensor | None
    """float32 [B, 2]: flip (0/1), rotation in degrees, for the device to apply
    (:func:`ganscale.augment.geometric.warp`); None when nothing is left to do."""
    keys: list[str]
    """``<shard url>#<key>`` of each record."""


def to_float(b: LoaderBatch) -> torch.Tensor:
    """float32 [B, 3, S, S] in [-1, 1], contiguous; the augmentation applied on the CPU."""
    u8 = b.images.permute(0, 2, 3, 1).numpy()  # back to the HWC memory it has
    arr = np.empty((u8.shape[0], 3, u8.shape[1], u8.shape[2]), np.float32)
    # numpy, single-threaded: torch's intra-op threads stall for a time slice per op when
    # the cores are busy (measured: ~20 ms per op on a loaded 2-core box vs ~0.3 ms here).
    np.multiply(u8.transpose(0, 3, 1, 2), np.float32(1 / 127.5), out=arr)
    arr -= 1.0
    images = torch.from_numpy(arr)
    if b.aug is not None:
        images = warp(images, b.aug)
    return images


def join(parts: list[np.ndarray]) -> np.ndarray:
    """One array of ``parts`` (the part itself when there is one: no copy)."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def take(
    pending: list[list[Any]], consumed: dict[int, list[int]], n: int, workers: int, pin: bool
) -> LoaderBatch:
    """Cut ``n`` records off the front of ``pending`` ([pass, chunk, offset] entries) into one
    batch, recording in ``consumed`` (per pass, per worker) the raw position after each."""
    parts_img, parts_lab, parts_aug, keys = [], [], [], []
    while n > 0:
        p, ch, off = pending[0]
        k = min(n, len(ch["keys"]) - off)
        parts_img.append(ch["images"][off : off + k])
        parts_lab.append(ch["labels"][off : off + k])
        parts_aug.append(ch["aug"][off : off + k] if ch["aug"] is not None else None)
        keys += ch["keys"][off : off + k]
        consumed.setdefault(p, [0] * workers)[ch["worker"]] = ch["raw"][off + k - 1] + 1
        n -= k
        if off + k == len(ch["keys"]):
            pending.pop(0)
        else:
            pending[0][2] = off + k
    # HWC as decoded (never transposed image by image); a batch that is one whole chunk is
    # that chunk's memory (chunks are never written again), else one copy
    u8 = torch.from_numpy(join(parts_img))
    labels = torch.from_numpy(join(parts_lab))
    aug = None
    if any(a is not None for a in parts_aug):
        zeros = [np.zeros((len(p), 2), np.float32) for p in parts_lab]
        aug = torch.from_numpy(
            join([a if a is not None else z for a, z in zip(parts_aug, zeros, strict=True)])
        )
    if pin:
        u8, labels = u8.pin_memory(), labels.pin_memory()
    return LoaderBatch(u8.permute(0, 3, 1, 2), labels, aug, keys)
