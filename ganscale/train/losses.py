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


def class_loss(
    logits: list[Tensor], labels: Tensor | None, all_known: bool = False, *, device: torch.device | str
) -> Tensor:
    """Mean over attributes of the cross-entropy of each attribute, skipping labels of -1.

    An attribute whose labels in this batch are all -1 contributes 0 (not NaN). With no
    attributes, a 0-dim zero tensor on ``device`` (an unconditional model has neither logits
    nor labels to take it from, and the metrics row stacks it with the step's other tensors:
    a CPU zero there fails on CUDA). ``all_known``: the labels hold no -1 (drawn fake labels),
    so each attribute's loss is a plain mean (the same value, without the masked counts).
    """
    if not logits or labels is None:
        return torch.zeros((), device=device)
    if all_known:
        return torch.stack([F.cross_entropy(lg.float(), labels[:, i]) for i, lg in enumerate(logits)]).mean()
    totals = [
        F.cross_entropy(lg.float(), labels[:, i], ignore_index=-1, reduction="sum")
        for i, lg in enumerate(logits)
    ]
    # the known-label counts of every attribute at once (3 ops per call instead of 3 per
    # attribute: this runs 3 times a step); the same divisions as one per attribute, bit for bit
    known = (labels[:, : len(logits)] >= 0).sum(0).clamp(min=1)
    return (torch.stack(totals) / known).mean()


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


def plain_module(D: nn.Module) -> nn.Module:
    """The network inside its training wrappers (torch.compile, DDP, a DeepSpeed engine, in
    any nesting), else ``D`` itself.

    ``torch.compile``'s module keeps the original in ``_orig_mod``: the penalty's double
    backward must not run through it (AOTAutograd has no double backward). A DDP/DeepSpeed
    wrapper is recognised by its shape, so this module needs neither DeepSpeed nor a process
    group: exactly one child, named ``module``, and no parameters of its own.
    """
    while True:
        children = getattr(D, "_modules", {})
        compiled = children.get("_orig_mod")
        if isinstance(compiled, nn.Module) and len(children) == 1:
            D = compiled
            continue
        inner = children.get("module")
        if isinstance(inner, nn.Module) and len(children) == 1 and not D._parameters:
            D = inner
            continue
        return D


def _input_grad(D: nn.Module, x: Tensor, labels: Tensor | None) -> Tensor:
    """d D(x)[0] / dx flattened per sample ([B, N], float32), with the graph kept so the
    penalty trains D.

    Computed in float32 with autocast off, whatever ``train.mixed_precision`` is: under fp16
    the input gradient of D's output overflows (multiplied by a loss scale of 65,536 it is
    inf at once; unscaled, small gradients underflow), and under bf16 its 8-bit mantissa makes
    ``(||grad|| - 1)^2`` mostly rounding. The weights are float32 under both backends (autocast,
    not converted weights), so only this one pass runs in full precision; the penalty's double
    backward then runs in float32 too, inside the step's scaled backward.

    This forward runs on the plain network (:func:`plain_module`), not through its wrapper: a
    DeepSpeed engine hooks the outputs of its forward so that the first gradient reaching them
    starts its backward (and queues the ZeRO reduction epilogue for the end of that graph),
    and ``torch.autograd.grad`` below would set that off for a pass that reduces nothing
    (``IndexError`` in ``reduce_ipg_grads``); by DeepSpeed's source it would also divide this
    input gradient by the accumulation steps. The parameters' gradient hooks stay, and do not
    fire here (``inputs=[x]`` only: no parameter accumulates), so the penalty's gradient
    reaches D's parameters once, in the caller's backward of the whole loss, where DDP and
    ZeRO reduce it with the rest.
    """
    x = x.detach().float().requires_grad_(True)
    with torch.autocast(device_type=x.device.type, enabled=False):
        out = plain_module(D)(x, labels)[0]
        (grad,) = torch.autograd.grad(out.float().sum(), x, create_graph=True)
    return grad.float().flatten(1)


def gradient_penalty(
    kind: str,
    D: nn.Module,
    real: Tensor,
    fake: Tensor | None,
    labels: Tensor | None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gradient penalty on D's adversarial output (the caller multiplies by its weight), in
    float32 with autocast off (see :func:`_input_grad`): no loss scale enters it.

    ``generator``: where gp's and dragan's random mixing is drawn from (the trainer passes the
    step's :attr:`~ganscale.train.noise.NoisePhase.PENALTY` generator, so a resume is exact;
    None: the global RNG).

    gp (WGAN-GP, Gulrajani et al.): x = a*real + (1-a)*fake, a ~ U[0,1] per sample;
        mean (||grad||-1)^2.
    r1 (Mescheder et al.): on real images; mean 0.5*||grad||^2.
    dragan (Kodali et al.): x = real + (1-a) * 0.5 * std(real) * U[0,1] noise, i.e. the
        reference implementation's interpolation between real and its perturbation;
        mean (||grad||-1)^2.
    """
    _check_kind(kind, PENALTY_KINDS, "penalty")
    real = real.detach()
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype, generator=generator)
    if kind == "gp":
        if fake is None:
            raise ValueError("the gp penalty interpolates real and fake images; pass fake")
        x = alpha * real + (1 - alpha) * fake.detach()
    elif kind == "dragan":
        noise = (
            0.5
            * real.std()
            * torch.rand(real.shape, device=real.device, dtype=real.dtype, generator=generator)
        )
        x = real + (1 - alpha) * noise
    else:
        x = real
    grad = _input_grad(D, x, labels)
    if kind == "r1":  # squared norm directly: no sqrt, whose gradient is undefined at 0
        return 0.5 * grad.pow(2).sum(1).mean()
    return (grad.norm(2, dim=1) - 1.0).pow(2).mean()


# --------------------------------------------------------------------------- LeCam


def lecam_penalty(real_logits: Tensor, fake_logits: Tensor, ema_real: Tensor, ema_fake: Tensor) -> Tensor:
    """LeCam regulariser (Tseng et al. 2021): mean (D(x) - a_F)^2 + mean (D(G(z)) - a_R)^2.

    ``ema_real`` / ``ema_fake`` (a_R, a_F) are the EMAs of D's mean output on real / fake
    batches (:class:`LeCamEMA`), constants here. Pulling D's real outputs toward its typical
    fake output and back bounds how far apart D can push them (the paper relates it to the
    LeCam divergence); the caller multiplies by loss.lecam_weight.
    """
    real, fake = real_logits.float().flatten(), fake_logits.float().flatten()
    return (real - ema_fake.detach()).pow(2).mean() + (fake - ema_real.detach()).pow(2).mean()


class LeCamEMA:
    """The EMAs a_R, a_F of D's mean real / fake output, on the device (no host sync).

    The first update sets them (the authors' code starts with decay 0); a non-finite batch
    mean leaves them unchanged, so one NaN step (faults.nan_policy=skip) cannot poison every
    later step. Per rank (each rank's own batches); saved per rank in checkpoints.
    """

    def __init__(self, decay: float, device: torch.device) -> None:
        self.decay, self.device = decay, device
        self.real = torch.zeros((), device=device)
        self.fake = torch.zeros((), device=device)
        self.updates = 0

    def update(self, real_logits: Tensor, fake_logits: Tensor) -> None:
        decay = self.decay if self.updates else 0.0
        for name, logits in (("real", real_logits), ("fake", fake_logits)):
            old = getattr(self, name)
            mean = logits.detach().float().mean()
            new = old * decay + mean * (1.0 - decay)
            setattr(self, name, torch.where(torch.isfinite(mean), new, old))
        self.updates += 1

    def penalty(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        """Update the EMAs with this batch, then :func:`lecam_penalty` (the authors' order)."""
        self.update(real_logits, fake_logits)
        return lecam_penalty(real_logits, fake_logits, self.real, self.fake)

    def state_dict(self) -> dict[str, float | int]:
        return {"real": float(self.real), "fake": float(self.fake), "updates": self.updates}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.real = torch.tensor(float(state["real"]), device=self.device)
        self.fake = torch.tensor(float(state["fake"]), device=self.device)
        self.updates = int(state["updates"])
