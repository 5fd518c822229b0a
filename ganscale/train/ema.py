"""Exponential moving average of G's weights (used for samples and export)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """``shadow = decay * shadow + (1 - decay) * G``; buffers (BatchNorm stats) are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self._pairs = list(zip(self.shadow.parameters(), model.parameters(), strict=True))
        pairs = list(zip(self.shadow.buffers(), model.buffers(), strict=True))
        self._buffers = ([s for s, _ in pairs], [b for _, b in pairs])

    @torch.no_grad()
    def update(self) -> None:
        shadow = [s for s, _ in self._pairs]
        live = [p.detach() for _, p in self._pairs]
        if self.decay > 0:
            torch._foreach_lerp_(shadow, live, 1.0 - self.decay)
        else:
            torch._foreach_copy_(shadow, live)
        if self._buffers[0]:  # one call for every BatchNorm statistic
            torch._foreach_copy_(*self._buffers)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow.load_state_dict(state)
