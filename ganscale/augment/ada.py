"""The trainer's augmentation stage: DiffAugment always, or ADA's adaptive probability p.

:class:`Augmenter` is what the training step calls: ``aug(x)`` on every batch D sees (real and
fake, D and G phases), ``aug.discriminator(D)`` for the gradient penalties (D after the
augmentation), ``aug.observe_real(logits)`` and ``aug.end_step(step)`` for ADA. With
``augment.kind: none`` the trainer holds a :class:`NoAugment` (every call an identity).

ADA (Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data"): D's
overfitting is measured by r_t = E[sign(D(real))] (near 0: D cannot tell real from fake;
near 1: D is confident on every real image, i.e. it memorised them). Every
``augment.ada_interval`` steps, p moves by sign(r_t - ada_target) x (images in those steps) /
(ada_kimg x 1000), clamped to [0, 1]: p rises while D overfits and falls back otherwise. As in
the reference code, r_t is the mean over all ranks (one all-reduce of two numbers per
interval: a collective, on every rank at the same step) and over every real batch of the
interval. p stays a device tensor: no host sync.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ganscale.augment.diffaugment import augment, parse_policy
from ganscale.config.sections import AugmentConfig
from ganscale.seeding import NoisePhase, step_generator

if TYPE_CHECKING:
    from ganscale.config import Config
    from ganscale.runtime import Runtime


COLOR_WARNING = (
    "augment.policy has color and model.conditional is true: brightness, saturation and contrast "
    "change the very colours a colour-conditioned model learns (docs/results.md, 3 seeds on 1000 "
    "images: eye accuracy 99.6% with color, 99.9% without, worse in 2 of 3 seeds); drop color "
    "unless the corpus's attributes are not colours or FID matters more than the asked-for colour"
)


class AdaController:
    """ADA's p, adjusted from r_t every ``interval`` steps (see the module docstring)."""

    def __init__(
        self,
        target: float,
        interval: int,
        kimg: float,
        images_per_step: int,
        device: torch.device,
        all_reduce_mean: Callable[[Tensor], Tensor],
    ) -> None:
        self.target, self.interval, self.device = target, interval, device
        self.step_size = images_per_step * interval / (kimg * 1000)
        self.all_reduce_mean = all_reduce_mean
        self.p = torch.zeros((), device=device)
        self.rt = torch.zeros((), device=device)
        self._signs = torch.zeros(2, device=device)  # [sum of sign(D(real)), count] since the last adjustment

    def observe(self, real_logits: Tensor) -> None:
        """Accumulate sign(D(real)) of one real batch; non-finite logits are not counted."""
        logits = real_logits.detach().float().flatten()
        ok = torch.isfinite(logits)
        signs = torch.where(ok, logits.sign(), torch.zeros_like(logits))
        self._signs = self._signs + torch.stack([signs.sum(), ok.sum().float()])

    def end_step(self, step: int) -> None:
        """After 0-based ``step``: every ``interval`` steps, all-reduce r_t and move p (collective)."""
        if (step + 1) % self.interval:
            return
        total = self.all_reduce_mean(self._signs)  # mean over ranks: the ratio is the global one
        self.rt = total[0] / total[1].clamp(min=1.0)
        moved = self.p + torch.sign(self.rt - self.target) * self.step_size
        # no observation in the interval (every batch non-finite): p stays
        self.p = torch.where(total[1] > 0, moved, self.p).clamp(
            0.0, 1.0
        )  # new tensors: records keep old ones
        self._signs = torch.zeros(2, device=self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"p": float(self.p), "rt": float(self.rt), "signs": self._signs.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p = torch.tensor(float(state["p"]), device=self.device)
        self.rt = torch.tensor(float(state["rt"]), device=self.device)
        self._signs = torch.tensor([float(v) for v in state["signs"]], device=self.device)


class _AugmentedD(nn.Module):
    """D after the augmentation: what the gradient penalties differentiate (w.r.t. the input
    before the augmentation, as stylegan2-ada and DiffAugment's R1 do)."""

    def __init__(self, D: nn.Module, aug: Augmenter) -> None:
        super().__init__()
        self.inner, self.aug = D, aug

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Any:
        return self.inner(self.aug(x), labels)


class NoAugment:
    """augment.kind: none: every call is an identity (no randomness drawn)."""

    enabled = False

    def start_step(self, step: int) -> None:
        pass

    def __call__(self, x: Tensor) -> Tensor:
        return x

    def discriminator(self, D: nn.Module, plain: nn.Module) -> nn.Module:
        """What the gradient penalty differentiates: the plain network itself here (not a
        compiled or DDP-wrapped ``D``: the penalty's double backward runs on ``plain``)."""
        return plain

    def observe_real(self, real_logits: Tensor) -> None:
        pass

    def end_step(self, step: int) -> dict[str, Tensor]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Augmenter(NoAugment):
    """DiffAugment (p = 1) or ADA (adaptive p) of every image D sees.

    ``generator(step)`` gives the step's generator; every augmentation of the step draws from
    it in the step's fixed order (D phase: real then fake per micro-batch, penalty; G phase),
    so the same step draws the same parameters after a resume.
    """

    enabled = True

    def __init__(
        self,
        cfg: AugmentConfig,
        generator: Callable[[int], torch.Generator],
        images_per_step: int,
        device: torch.device,
        all_reduce_mean: Callable[[Tensor], Tensor],
        policy: tuple[str, ...] | None = None,
    ) -> None:
        """``policy``: the resolved transforms (:attr:`ganscale.train.plan.Plan.augment_policy`);
        None reads an explicit ``cfg.policy``."""
        self.cfg, self._make_generator = cfg, generator
        self.policy = policy if policy is not None else parse_policy(cfg.policy)
        self.ada = (
            AdaController(
                cfg.ada_target, cfg.ada_interval, cfg.ada_kimg, images_per_step, device, all_reduce_mean
            )
            if cfg.kind == "ada"
            else None
        )
        self._gen: torch.Generator | None = None

    def start_step(self, step: int) -> None:
        self._gen = self._make_generator(step)

    def __call__(self, x: Tensor) -> Tensor:
        if self._gen is None:
            raise RuntimeError("Augmenter.start_step(step) must run before the step's augmentations")
        return augment(x, self.policy, self._gen, None if self.ada is None else self.ada.p)

    def discriminator(self, D: nn.Module, plain: nn.Module) -> nn.Module:
        """D after the augmentation; on ``plain`` (the network without its DDP/DeepSpeed
        wrapper), the forward the penalty runs anyway (:func:`ganscale.train.losses.plain_module`)."""
        return _AugmentedD(plain, self)

    def observe_real(self, real_logits: Tensor) -> None:
        if self.ada is not None:
            self.ada.observe(real_logits)

    def end_step(self, step: int) -> dict[str, Tensor]:
        """ADA's adjustment (collective, every ada_interval steps); the step's ``augment/*`` metrics."""
        if self.ada is None:
            return {}
        self.ada.end_step(step)
        return {"augment/p": self.ada.p, "augment/rt": self.ada.rt}

    def state_dict(self) -> dict[str, Any]:
        return {} if self.ada is None else {"ada": self.ada.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.ada is not None and state.get("ada"):
            self.ada.load_state_dict(state["ada"])


def build_augmenter(cfg: Config, rt: Runtime, policy: tuple[str, ...], images_per_step: int) -> NoAugment:
    """The stage for ``cfg.augment.kind`` on this rank (a :class:`NoAugment` for none) with the
    run's resolved ``policy``; its generator of step ``t`` is the noise scheme's (seed, rank, t,
    NoisePhase.AUGMENT)."""
    if cfg.augment.kind == "none":
        return NoAugment()
    if cfg.model.conditional and "color" in policy and rt.is_main:
        # a warning, not a refusal: a corpus's attributes need not be colours (then color helps)
        warnings.warn(COLOR_WARNING, stacklevel=2)

    def generator(step: int) -> torch.Generator:
        return step_generator(cfg.seed, rt.rank, step, NoisePhase.AUGMENT, rt.device)

    return Augmenter(cfg.augment, generator, images_per_step, rt.device, rt.all_reduce_mean, policy)
