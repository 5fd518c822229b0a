"""GAN losses: adversarial (bce / hinge / wgan), ACGAN class loss, gradient penalties.

Pure functions of logits (and, for the penalties, of D). Everything is computed in float32
(logits are cast with ``.float()``) so the losses are safe under bf16/fp16 autocast. Nothing
here calls ``.item()``: no host sync.

Conventions:
- D's adversarial loss is the *sum* of its real and fake terms (bce at logits 0 = 2 log 2).
- The weights (penalty weight, the study's lambda on the class loss) are applied by the caller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ADVERSARIAL_KINDS = ("bce", "hinge", "wgan")
PENALTY_KINDS = ("gp", "r1", "dragan")


def _check_kind(kind: str, kinds: tuple[str, ...], what: str) -> None:
    if kind not in kinds:
        raise ValueError(f"{what} must be one of {', '.join(kinds)}, got {kind!r}")


# --------------------------------------------------------------------------- adversarial


def d_adversarial_loss(kind: str, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """D's loss on real and fake logits.

    bce: -log sigmoid(real) - log(1 - sigmoid(fake)); hinge: relu(1 - real) + relu(1 + fake);
    wgan: fake - real (the critic maximises real - fake). Each term averaged over the batch.
    """
    _check_kind(kind, ADVERSARIAL_KINDS, "adversarial loss")
    real, fake = real_logits.float(), fake_logits.float()
    if kind == "bce":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    return fake.mean() - real.mean()


def g_adversarial_loss(kind: str, fake_logits: Tensor) -> Tensor:
    """G's loss on fake logits: non-saturating -log sigmoid(fake) for bce, -fake for hinge/wgan."""
    _check_kind(kind, ADVERSARIAL_KINDS, "adversarial loss")
    fake = fake_logits.float()
    if kind == "bce":
        return F.softplus(-fake).mean()
    return -fake.mean()


# --------------------------------------------------------------------------- class (ACGAN)


def class_loss(logits: list[Tensor], labels: Tensor | None) -> Tensor:
    """Mean over attributes of the cross-entropy of each attribute, skipping labels of -1.

    An attribute whose labels in this batch are all -1 contributes 0 (not NaN). With no
    attributes, a 0-dim zero tensor.
    """
    if not logits or labels is None:
        device = labels.device if labels is not None else None
        return torch.zeros((), device=device)
    losses = []
    for i, lg in enumerate(logits):
        y = labels[:, i]
        total = F.cross_entropy(lg.float(), y, ignore_index=-1, reduction="sum")
        known = (y >= 0).sum().clamp(min=1)
        losses.append(total / known)
    return torch.stack(losses).mean()


def class_accuracy(logits: list[Tensor], labels: Tensor) -> list[Tensor]:
    """Top-1 accuracy per attribute over the known (not -1) labels; 0-dim float tensors."""
    out = []
    for i, lg in enumerate(logits):
        y = labels[:, i]
        known = y >= 0
        correct = ((lg.argmax(1) == y) & known).sum().float()
        out.append(correct / known.sum().clamp(min=1).float())
    return out


# --------------------------------------------------------------------------- penalties


def _input_grad(D: nn.Module, x: Tensor, labels: Tensor | None, grad_scale: float) -> Tensor:
    """d D(x)[0] / dx flattened per sample ([B, N], float32), with the graph kept so the
    penalty trains D.

    With fp16 loss scaling the output is multiplied by ``grad_scale`` before differentiating
    (so small gradients do not underflow) and the gradients divided by it afterwards.
    """
    x = x.detach().requires_grad_(True)
    out = D(x, labels)[0]
    (grad,) = torch.autograd.grad(out.float().sum() * grad_scale, x, create_graph=True)
    return grad.float().flatten(1) / grad_scale


def gradient_penalty(
    kind: str,
    D: nn.Module,
    real: Tensor,
    fake: Tensor | None,
    labels: Tensor | None,
    grad_scale: float = 1.0,
) -> Tensor:
    """Gradient penalty on D's adversarial output (the caller multiplies by its weight).

    gp (WGAN-GP, Gulrajani et al.): x = a*real + (1-a)*fake, a ~ U[0,1] per sample;
        mean (||grad||-1)^2.
    r1 (Mescheder et al.): on real images; mean 0.5*||grad||^2.
    dragan (Kodali et al.): x = real + (1-a) * 0.5 * std(real) * U[0,1] noise, i.e. the
        reference implementation's interpolation between real and its perturbation;
        mean (||grad||-1)^2.
    """
    _check_kind(kind, PENALTY_KINDS, "penalty")
    real = real.detach()
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    if kind == "gp":
        if fake is None:
            raise ValueError("the gp penalty interpolates real and fake images; pass fake")
        x = alpha * real + (1 - alpha) * fake.detach()
    elif kind == "dragan":
        noise = 0.5 * real.std() * torch.rand_like(real)
        x = real + (1 - alpha) * noise
    else:
        x = real
    grad = _input_grad(D, x, labels, grad_scale)
    if kind == "r1":  # squared norm directly: no sqrt, whose gradient is undefined at 0
        return 0.5 * grad.pow(2).sum(1).mean()
    return (grad.norm(2, dim=1) - 1.0).pow(2).mean()
