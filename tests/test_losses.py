"""Losses on hand-made logits, class loss/accuracy with unknown labels, gradient penalties."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from ganscale.train.losses import (
    class_accuracy,
    class_loss,
    d_adversarial_loss,
    g_adversarial_loss,
    gradient_penalty,
)

LOG2 = math.log(2.0)


def close(a: Tensor, b: float) -> None:
    torch.testing.assert_close(a, torch.tensor(b, dtype=torch.float32), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- adversarial


def test_bce_at_zero_logits() -> None:
    zeros = torch.zeros(5)
    close(g_adversarial_loss("bce", zeros), LOG2)
    close(d_adversarial_loss("bce", zeros, zeros), 2 * LOG2)  # real term + fake term


def test_bce_hand_computed() -> None:
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731  softplus
    d = (sp(-2.0) + sp(1.0)) / 2 + (sp(0.5) + sp(-3.0)) / 2
    close(d_adversarial_loss("bce", real, fake), d)
    close(g_adversarial_loss("bce", fake), (sp(-0.5) + sp(3.0)) / 2)  # non-saturating


def test_hinge_hand_computed() -> None:
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, .5, 2] -> 2.5/3 ; relu(1 + fake) = [0, 1, 2] -> 3/3
    close(d_adversarial_loss("hinge", real, fake), 2.5 / 3 + 1.0)
    close(g_adversarial_loss("hinge", fake), -(-1.0 / 3))


def test_wgan_signs() -> None:
    real, fake = torch.tensor([3.0, 1.0]), torch.tensor([-1.0, 0.0])
    # the critic wants real high and fake low: its loss is fake - real
    close(d_adversarial_loss("wgan", real, fake), -0.5 - 2.0)
    close(g_adversarial_loss("wgan", fake), 0.5)
    # raising the fake logits lowers G's loss and raises D's
    assert g_adversarial_loss("wgan", fake + 1) < g_adversarial_loss("wgan", fake)
    assert d_adversarial_loss("wgan", real, fake + 1) > d_adversarial_loss("wgan", real, fake)


@pytest.mark.parametrize("kind", ["bce", "hinge", "wgan"])
def test_losses_are_float32_from_bf16(kind: str) -> None:
    logits = torch.randn(8).bfloat16()
    assert d_adversarial_loss(kind, logits, logits).dtype == torch.float32
    assert g_adversarial_loss(kind, logits).dtype == torch.float32


def test_unknown_kind_rejected() -> None:
    with pytest.raises(ValueError, match="hinge"):
        g_adversarial_loss("lsgan", torch.zeros(2))


# --------------------------------------------------------------------------- class loss


def test_class_loss_uniform_logits() -> None:
    logits = [torch.zeros(4, 12), torch.zeros(4, 10)]
    labels = torch.tensor([[0, 1], [3, 2], [11, 9], [5, 0]])
    close(class_loss(logits, labels, device="cpu"), (math.log(12) + math.log(10)) / 2)


def test_class_loss_ignores_unknown() -> None:
    lg = torch.tensor([[5.0, 0.0], [0.0, 5.0], [100.0, -100.0]])
    labels = torch.tensor([[0], [0], [-1]])  # the -1 row would add a huge loss if counted
    ce = lambda a, b: -torch.log_softmax(torch.tensor([a, b]), 0)[0].item()  # noqa: E731
    close(class_loss([lg], labels, device="cpu"), (ce(5.0, 0.0) + ce(0.0, 5.0)) / 2)


def test_class_loss_all_known_equals_masked() -> None:
    """The fake labels' shortcut (no -1 possible) gives the masked loss, value and gradient."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.stack([torch.randint(n, (16,), generator=gen) for n in (12, 10)], 1)
    grads = []
    for known in (False, True):
        logits = [torch.randn(16, n, generator=torch.Generator().manual_seed(n)) for n in (12, 10)]
        logits = [lg.requires_grad_() for lg in logits]
        loss = class_loss(logits, labels, all_known=known, device="cpu")
        loss.backward()
        grads.append((loss.detach(), [lg.grad for lg in logits]))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-6, atol=0)
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_class_loss_all_unknown_is_zero_not_nan() -> None:
    loss = class_loss([torch.randn(3, 4, requires_grad=True)], torch.full((3, 1), -1), device="cpu")
    close(loss, 0.0)
    loss.backward()


def test_class_loss_no_attributes() -> None:
    loss = class_loss([], torch.zeros(4, 0, dtype=torch.long), device="cpu")
    assert loss.dim() == 0 and loss.item() == 0.0
    assert class_loss([], None, device="cpu").item() == 0.0
    # an unconditional model's zero is made where the losses live (it was always a CPU zero,
    # which the metrics row's torch.stack refused beside CUDA tensors): "meta" shows it here
    assert class_loss([], None, device="meta").device.type == "meta"


def test_class_loss_bf16_is_float32() -> None:
    assert (
        class_loss([torch.randn(4, 3).bfloat16()], torch.zeros(4, 1, dtype=torch.long), device="cpu").dtype
        == torch.float32
    )


def test_class_accuracy() -> None:
    hair = torch.tensor([[9.0, 0.0], [9.0, 0.0], [0.0, 9.0], [0.0, 9.0]])
    eyes = torch.tensor([[1.0, 0.0, 0.0]] * 4)
    labels = torch.tensor([[0, 0], [1, -1], [1, -1], [-1, -1]])
    acc = class_accuracy([hair, eyes], labels)
    assert all(a.dim() == 0 and a.dtype == torch.float32 for a in acc)
    close(acc[0], 2 / 3)  # rows 0 and 2 right, row 1 wrong, row 3 unknown
    close(acc[1], 1.0)
    close(class_accuracy([eyes], torch.full((4, 1), -1))[0], 0.0)  # nothing known: 0, not NaN


# --------------------------------------------------------------------------- penalties


class LinearD(nn.Module):
    """D(x) = <w, x> (+ c): gradient w everywhere."""

    def __init__(self, w: Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        return (x * self.w).flatten(1).sum(1) + 0.3, []


class SquareD(nn.Module):
    """D(x) = a * ||x||^2: gradient 2 a x."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))

    def forward(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        return self.a * x.pow(2).flatten(1).sum(1), []


def images(b: int = 6, seed: int = 0) -> Tensor:
    return torch.randn(b, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["gp", "dragan"])
def test_penalty_zero_for_unit_gradient(kind: str) -> None:
    w = torch.randn(3, 4, 4)
    D = LinearD(w / w.norm())
    gp = gradient_penalty(kind, D, images(), images(seed=1), None)
    assert gp.item() < 1e-10


def test_gp_linear_analytic() -> None:
    w = torch.full((3, 4, 4), 0.25)  # ||w|| = 0.25 * sqrt(48)
    D = LinearD(w)
    close(gradient_penalty("gp", D, images(), images(seed=1), None), (0.25 * math.sqrt(48) - 1) ** 2)
    close(gradient_penalty("r1", D, images(), None, None), 0.5 * 0.25**2 * 48)


def test_r1_matches_analytic_square_d() -> None:
    a, real = 0.7, images()
    D = SquareD(a)
    expected = 0.5 * (2 * a) ** 2 * real.pow(2).flatten(1).sum(1).mean()
    close(gradient_penalty("r1", D, real, None, None), expected.item())


def test_gp_square_d_matches_manual_interpolation() -> None:
    a, real, fake = 0.3, images(), images(seed=1)
    torch.manual_seed(5)
    got = gradient_penalty("gp", SquareD(a), real, fake, None)
    torch.manual_seed(5)
    alpha = torch.rand(real.shape[0], 1, 1, 1)
    x = alpha * real + (1 - alpha) * fake
    expected = ((2 * a * x).flatten(1).norm(dim=1) - 1).pow(2).mean()
    close(got, expected.item())


@pytest.mark.parametrize("kind", ["gp", "r1", "dragan"])
def test_penalty_trains_d(kind: str) -> None:
    D = SquareD(0.4)
    gradient_penalty(kind, D, images(), images(seed=1), None).backward()
    assert D.a.grad is not None and D.a.grad.abs() > 0


def test_penalty_passes_labels_to_d() -> None:
    seen = []

    class RecordingD(LinearD):
        def forward(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
            seen.append(labels)
            return super().forward(x, labels)

    labels = torch.zeros(6, 2, dtype=torch.long)
    gradient_penalty("r1", RecordingD(torch.ones(3, 4, 4)), images(), None, labels)
    assert seen and seen[0] is labels


def test_gp_needs_fake() -> None:
    with pytest.raises(ValueError, match="fake"):
        gradient_penalty("gp", SquareD(1.0), images(), None, None)


def test_penalty_with_real_discriminator() -> None:
    """Runs through a built D (norm none, projection head) and backpropagates into it."""
    from ganscale.config import ModelConfig
    from ganscale.models import build_discriminator

    cfg = ModelConfig(
        arch="resnet", conditional=True, head="projection", image_size=16, d_channels=8, head_layers=3
    )
    D = build_discriminator(cfg, [3, 2], "none")
    real, fake = torch.rand(4, 3, 16, 16) * 2 - 1, torch.rand(4, 3, 16, 16) * 2 - 1
    labels = torch.tensor([[0, 1], [2, -1], [1, 0], [-1, -1]])
    gp = gradient_penalty("gp", D, real, fake, labels)
    assert gp.dim() == 0 and torch.isfinite(gp)
    gp.backward()
    # every weight outside the class heads shapes dD/dx, so the penalty trains it (biases do not)
    weights = {n: p for n, p in D.named_parameters() if p.dim() > 1 and "class_heads" not in n}
    assert weights and all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights.values())
