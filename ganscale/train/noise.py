"""The noise of each training step, derived (not carried) so a resume continues bit-exactly.

The noise of step ``t`` on rank ``r`` comes from a generator seeded with (seed, rank, t,
phase); the phase tells the draws of one step apart. Its numbering (kept as it was; another
issue replaces the scheme):

- G phase, first micro-batch: :attr:`NoisePhase.G_FIRST` (0)
- D phase, critic update ``c``, micro-batch ``m`` of ``accum``: ``D_BASE + c * accum + m``
- G phase, micro-batch ``m >= 1``: ``G_MICRO_BASE + m``
"""

from __future__ import annotations

from enum import IntEnum

import torch


class NoisePhase(IntEnum):
    """Bases of the phase numbers (see the module docstring)."""

    G_FIRST = 0
    D_BASE = 1
    G_MICRO_BASE = 1000


def d_phase(critic: int, micro: int, accum: int) -> int:
    """Phase number of D's fake batch for critic update ``critic``, micro-batch ``micro``."""
    return NoisePhase.D_BASE + critic * accum + micro


def g_phase(micro: int) -> int:
    """Phase number of G's batch for micro-batch ``micro``."""
    return NoisePhase.G_FIRST if micro == 0 else NoisePhase.G_MICRO_BASE + micro


def step_generator(seed: int, rank: int, step: int, phase: int, device: torch.device) -> torch.Generator:
    """The generator of one draw: seeded with (seed, rank, step, phase)."""
    g = torch.Generator(device=device)
    # modulo 2**64: a large seed (>= ~10**7) would overflow manual_seed; values in range keep
    # their stream (torch maps a negative seed to seed + 2**64 itself)
    g.manual_seed((((seed * 1_000_003 + rank) * 1_000_003 + step) * 8 + int(phase)) % 2**64)
    return g


class NoiseSource:
    """z ~ N(0, sigma) and uniformly drawn fake labels for one draw of a training step."""

    def __init__(
        self,
        seed: int,
        rank: int,
        z_dim: int,
        z_sigma: float,
        num_classes: list[int],
        grad_accum: int,
        device: torch.device,
    ) -> None:
        self.seed, self.rank, self.z_dim, self.z_sigma = seed, rank, z_dim, z_sigma
        self.num_classes, self.grad_accum, self.device = list(num_classes), grad_accum, device

    def draw(
        self, step: int, batch: int, net: str, micro: int, critic: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The noise of ``net``'s phase ("d" or "g") at (step, critic update, micro-batch)."""
        phase = d_phase(critic, micro, self.grad_accum) if net == "d" else g_phase(micro)
        dev = self.device
        gen = step_generator(self.seed, self.rank, step, phase, dev)
        z = torch.randn(batch, self.z_dim, device=dev, generator=gen) * self.z_sigma
        if not self.num_classes:
            return z, None
        labels = torch.stack(
            [torch.randint(n, (batch,), device=dev, generator=gen) for n in self.num_classes], 1
        )
        return z, labels
