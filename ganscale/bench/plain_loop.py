"""A hand-written plain-PyTorch GAN training step: the baseline ganscale is measured against.

This is the loop a user would write without ganscale (pytorch/examples' DCGAN, extended to
ACGAN's class loss): the same G and D (``ganscale.models``), the same batch, Adam with
PyTorch's default implementation, ``loss.backward()`` / ``opt.step()``, no runtime object,
no NaN policy, no derived per-step noise generators. It runs the same algorithm as
:class:`ganscale.train.trainer.Trainer` so the two do the same arithmetic:

- D step: a fresh fake from G under ``no_grad``; D on real and fake; BCE (non-saturating
  GAN loss) + the class loss for conditional D.
- G step: a new fake *with* grad; D (frozen) on it; G's loss; step G; EMA of G.

Only the bce adversarial loss without penalties is implemented (that is the study's DCGAN
and ACGAN); anything else raises.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganscale.config import Config
from ganscale.models import build_discriminator, build_generator
from ganscale.train.plan import d_norm_of


class PlainLoop:
    """``step(real, labels)`` trains D once, then G once, in plain PyTorch."""

    def __init__(
        self,
        cfg: Config,
        num_classes: list[int],
        device: torch.device,
        precision: str = "no",
        channels_last: bool = False,
    ) -> None:
        if cfg.loss.adversarial != "bce" or cfg.loss.penalty != "none":
            raise ValueError("the plain baseline loop implements only loss.adversarial=bce without penalty")
        if cfg.train.n_critic != 1 or cfg.grad_accum_for(1) != 1:
            raise ValueError("the plain baseline loop implements only n_critic=1 and grad_accum=1")
        self.cfg, self.device = cfg, device
        self.num_classes = list(num_classes) if cfg.model.conditional else []
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.channels_last = channels_last
        torch.manual_seed(cfg.seed)
        self.G = build_generator(cfg.model, self.num_classes).to(device)
        self.D = build_discriminator(cfg.model, self.num_classes, norm=d_norm_of(cfg)).to(device)
        if channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        betas = (cfg.optim.beta1, cfg.optim.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.optim.g_lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.optim.d_lr, betas=betas)
        self.ema_decay = cfg.train.ema_decay
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False) if self.ema_decay > 0 else None
        self.last_losses: tuple[Tensor, Tensor] | None = None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _noise(self, batch: int) -> tuple[Tensor, Tensor | None]:
        z = torch.randn(batch, self.cfg.model.z_dim, device=self.device) * self.cfg.model.z_sigma
        if not self.num_classes:
            return z, None
        labels = torch.stack([torch.randint(n, (batch,), device=self.device) for n in self.num_classes], 1)
        return z, labels

    def _class_loss(self, logits: list[Tensor], labels: Tensor | None) -> Tensor:
        if not logits or labels is None:
            return torch.zeros((), device=self.device)
        terms = [F.cross_entropy(lg.float(), labels[:, i], ignore_index=-1) for i, lg in enumerate(logits)]
        return torch.stack(terms).mean()

    def step(self, real: Tensor, real_labels: Tensor | None) -> None:
        G, D, weight = self.G, self.D, self.cfg.loss.class_weight
        real = real.to(self.device)
        if self.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        if not self.num_classes:
            real_labels = None
        elif real_labels is not None:
            real_labels = real_labels.to(self.device)
        batch = real.shape[0]

        # D step
        z, fake_labels = self._noise(batch)
        with self._autocast():
            with torch.no_grad():
                fake = G(z, fake_labels)
            real_logits, real_cls = D(real, real_labels)
            fake_logits, fake_cls = D(fake, fake_labels)
            loss_d = F.binary_cross_entropy_with_logits(
                real_logits.float(), torch.ones_like(real_logits, dtype=torch.float32)
            ) + F.binary_cross_entropy_with_logits(
                fake_logits.float(), torch.zeros_like(fake_logits, dtype=torch.float32)
            )
            loss_d = loss_d + weight * (
                self._class_loss(real_cls, real_labels) + self._class_loss(fake_cls, fake_labels)
            )
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()

        # G step
        z, fake_labels = self._noise(batch)
        D.requires_grad_(False)
        with self._autocast():
            fake = G(z, fake_labels)
            logits, cls = D(fake, fake_labels)
            loss_g = F.binary_cross_entropy_with_logits(
                logits.float(), torch.ones_like(logits, dtype=torch.float32)
            ) + weight * self._class_loss(cls, fake_labels)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        D.requires_grad_(True)
        if self.G_ema is not None:
            with torch.no_grad():
                for e, p in zip(self.G_ema.parameters(), G.parameters(), strict=True):
                    e.lerp_(p, 1.0 - self.ema_decay)
                for e, b in zip(self.G_ema.buffers(), G.buffers(), strict=True):
                    e.copy_(b)
        self.last_losses = (loss_d.detach(), loss_g.detach())

    def modules(self) -> dict[str, nn.Module]:
        return {"g": self.G, "d": self.D}
