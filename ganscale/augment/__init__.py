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

How later stages plug in (DiffAugment, ADA: ``diffaugment.py``, ``ada.py`` here):

- They augment *every input of D* (reals and fakes, in the D and the G phase, differentiably),
  so they are not part of :class:`RealBatchAugment`, which runs once per real batch in
  ``Trainer.next_batch``. Give them the signature ``stage(x, generator) -> x`` (float
  [B, C, H, W] on the device, differentiable) and call them on D's inputs in the two phases.
- Their randomness must be derived, not carried, like the noise: a ``torch.Generator`` on the
  device seeded from (seed, rank, step, phase, micro-batch) (see
  :func:`ganscale.train.noise.step_generator`), so a resumed run draws the same transforms.
- ADA's adaptive probability ``p`` is state: it goes into the checkpoint (TrainState), and its
  update from ``sign(D(real))`` must be averaged over ranks (one all-reduce) so every rank
  keeps the same ``p``.
- ADA's geometric group (flips, 90-degree rotations, translation, scaling, rotation) is a
  per-sample 2x3 matrix too: on the reals it can be composed with
  :func:`~ganscale.augment.geometric.affine_theta` so that reals are resampled once, not twice.
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
