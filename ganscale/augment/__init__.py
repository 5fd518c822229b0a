"""Augmentation of the batch on the training device.

The loader only reads and decodes: it hands over uint8 images plus, per sample, the
parameters of the study's flip + slight rotation (drawn where the record was read, from
seed, epoch, shard name and key; see :mod:`ganscale.augment.geometric`). On the device,
:class:`RealBatchAugment` then

1. copies the uint8 batch (4x fewer bytes than float32) and converts it to float32 [-1, 1];
2. warps it: the study's flip + rotation, one ``grid_sample`` for the whole batch
   (:func:`ganscale.augment.geometric.warp`).

``data.augment_on: loader`` keeps the old CPU path (PIL in the loader workers); the stream
then sends no parameters and step 2 is skipped.

The other stage, on *every input of D* (reals and fakes, in the D and the G phase,
differentiably), is :class:`ganscale.augment.ada.Augmenter` (``augment.kind``: diffaugment or
ada; :class:`~ganscale.augment.ada.NoAugment` for none), built by
:func:`~ganscale.augment.ada.build_augmenter` with the plan's resolved policy. The training step
calls ``aug.start_step(step)``, then ``aug(x)`` on each batch D sees,
``aug.discriminator(D, plain)`` for the gradient penalties, ``aug.observe_real(logits)`` on the
real logits, and ``aug.end_step(step)`` (ADA's adjustment of p).

- Its randomness is derived, not carried: one ``torch.Generator`` per step on the device,
  seeded from (seed, rank, step, :attr:`~ganscale.seeding.NoisePhase.AUGMENT`)
  (:func:`ganscale.seeding.step_generator`), so a resumed run draws the same transforms.
- ADA's ``p`` and its r_t statistics are per-rank state saved in every checkpoint
  (``state.json["per_rank"]["augment"]``); r_t is averaged over ranks (one all-reduce every
  ``augment.ada_interval`` steps), so every rank keeps the same ``p``.
"""

from __future__ import annotations

import torch

from ganscale.augment.geometric import identity_params, to_unit_range, warp

__all__ = ["RealBatchAugment", "identity_params", "to_unit_range", "warp"]


class RealBatchAugment:
    """A real batch from the loader -> float32 [-1, 1] on ``device``, augmented there.

    ``images`` uint8 [B, 3, H, W] (any memory layout) from the loader, or float [-1, 1]
    (batches fed in directly, e.g. by the bench: moved as they are). ``params`` float32
    [B, 2] (flip, angle) on the CPU, or None when nothing is left to do.
    """

    def __init__(self, device: torch.device, memory_format: torch.memory_format) -> None:
        self.device, self.memory_format = device, memory_format

    def __call__(self, images: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = to_unit_range(images)
        if params is not None:
            images = warp(images, params)
        return images.contiguous(memory_format=self.memory_format)
