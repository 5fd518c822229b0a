"""The noise of each training step: z and fake labels of one draw, from :mod:`ganscale.seeding`."""

from __future__ import annotations

import torch

from ganscale.seeding import NoisePhase, step_generator, stream_id

__all__ = ["NoisePhase", "NoiseSource", "step_generator"]


class NoiseSource:
    """z ~ N(0, sigma) and uniformly drawn fake labels for one draw of a training step."""

    def __init__(
        self,
        seed: int,
        rank: int,
        z_dim: int,
        z_sigma: float,
        num_classes: list[int],
        device: torch.device,
        paired: bool = False,
    ) -> None:
        self.seed, self.rank, self.z_dim, self.z_sigma = seed, rank, z_dim, z_sigma
        self.num_classes, self.device = list(num_classes), device
        self.paired = paired  # loss.mode_seeking_weight: image i + B/2 takes image i's labels
        self._gen = torch.Generator(device=device)  # re-seeded per draw: the same stream as a new one

    def draw(
        self, step: int, batch: int, net: str, micro: int, critic: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The noise of ``net``'s phase ("d", "g": a :class:`NoisePhase` name) at (step, critic
        update, micro-batch)."""
        phase = NoisePhase[net.upper()]
        dev = self.device
        gen = self._gen.manual_seed(stream_id(self.seed, self.rank, step, phase, critic, micro))
        z = torch.randn(batch, self.z_dim, device=dev, generator=gen) * self.z_sigma
        if not self.num_classes:
            return z, None
        labels = torch.stack(
            [torch.randint(n, (batch,), device=dev, generator=gen) for n in self.num_classes], 1
        )
        if self.paired:
            half = batch // 2
            labels[half : 2 * half] = labels[:half]
        return z, labels

    def generator(self, step: int, phase: NoisePhase, critic: int = 0, micro: int = 0) -> torch.Generator:
        """The generator of one other draw of the step (e.g. :attr:`NoisePhase.PENALTY`)."""
        return step_generator(self.seed, self.rank, step, phase, self.device, critic, micro)
