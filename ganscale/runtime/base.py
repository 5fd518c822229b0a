"""The :class:`Runtime` interface both backends implement, and what they share.

The trainer calls only what is here: ``rt.autocast()``, ``rt.backward(loss, "d")``,
``rt.step("d")``, ``rt.no_sync("d", ...)``, ``rt.is_main``, ``rt.all_reduce_mean``.
Models stay plain ``nn.Module``s. The backends: :mod:`ganscale.runtime.accelerate_backend`
(DDP through Accelerate) and :mod:`ganscale.runtime.deepspeed_backend` (two ZeRO engines).

Gradient accumulation is one contract for both backends: every micro-step's forward and
backward run inside ``rt.no_sync(net, enabled=micro < accum - 1)``, so ``enabled`` says
"not the accumulation boundary" (no gradient reduction yet), and ``rt.step(net)`` follows
the boundary micro-step's backward.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganscale.config import Config

NETS = ("g", "d")

AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""``train.mixed_precision`` -> autocast dtype (absent: "no", full precision)."""


def amp_dtype(mixed_precision: str) -> torch.dtype | None:
    """The autocast dtype for ``train.mixed_precision``, None for full precision."""
    return AMP_DTYPES.get(mixed_precision)


def make_adam(
    params: Any, lr: float, betas: tuple[float, float], impl: str, device: torch.device
) -> torch.optim.Adam:
    """Adam in ``impl`` (optim.impl); ``auto``: fused on CUDA, else the single-tensor loop
    (PyTorch's own CPU default). On the CPU foreach is faster alone but not inside the step: at
    a 5 ms step it cost 3-8% (its temporaries evict what backward reads; docs/performance.md)."""
    kwargs: dict[str, Any] = {}
    if impl == "auto":
        impl = "fused" if device.type == "cuda" else "plain"
    if impl == "fused":
        kwargs["fused"] = True
    elif impl == "foreach":
        kwargs["foreach"] = True
    else:
        kwargs["foreach"] = False
    return torch.optim.Adam(params, lr=lr, betas=betas, **kwargs)


def configure_cuda(cfg: Config, device: torch.device) -> None:
    """On CUDA: cuDNN autotuning (``train.cudnn_benchmark``) and TF32 (``train.matmul_precision``:
    fp32 matmuls, and cuDNN's fp32 convolutions unless "highest"); with ``train.deterministic``,
    deterministic kernels instead of autotuning (cuBLAS workspace, deterministic algorithms where
    torch has them, a warning where it has none). Nothing elsewhere (the CPU is deterministic)."""
    if device.type != "cuda":
        return
    from ganscale.runtime.env import deterministic_cublas

    torch.set_float32_matmul_precision(cfg.train.matmul_precision)
    torch.backends.cudnn.allow_tf32 = cfg.train.matmul_precision != "highest"
    if cfg.train.deterministic:
        deterministic_cublas()
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False  # the autotuner's choice may differ between runs
    else:
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark


def collective_timeout(cfg: Config) -> timedelta:
    """How long one collective may wait for the other ranks (``faults.collective_timeout_s``):
    the process group's timeout, which gloo applies to every collective and NCCL's watchdog
    enforces, so a rank that died or froze fails the others instead of hanging them."""
    return timedelta(seconds=cfg.faults.collective_timeout_s)


def unwinding() -> bool:
    """Is an exception propagating through the caller's ``finally`` (``rt.end()`` after a
    failed step)? Then the other ranks may be gone, and a closing barrier would only wait for
    them until the collective timeout: a second timeout before the process can exit."""
    return sys.exc_info()[1] is not None


@dataclass(frozen=True)
class BatchPlan:
    """How many images one optimizer step takes, worked out once from the config and the
    process count (``train.global_batch`` wins over ``train.grad_accum``) and passed down."""

    batch_size: int
    """Images per process per micro-step."""
    grad_accum: int
    """Micro-steps per optimizer step."""
    world_size: int
    n_critic: int

    @classmethod
    def of(cls, cfg: Config, world_size: int) -> BatchPlan:
        return cls(cfg.train.batch_size, cfg.grad_accum_for(world_size), world_size, cfg.train.n_critic)

    @property
    def global_batch(self) -> int:
        """Images per optimizer step across all processes."""
        return self.batch_size * self.grad_accum * self.world_size

    @property
    def images_per_step(self) -> int:
        """Real images D sees per training step (all D updates, all processes)."""
        return self.global_batch * self.n_critic


class Runtime:
    """Interface shared by the backends (see module docstring)."""

    cfg: Config
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    G: nn.Module
    D: nn.Module
    opt: dict[str, torch.optim.Optimizer]
    plan: BatchPlan

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- precision -----------------------------------------------------------------
    def _init_precision(self, mixed_precision: str) -> None:
        self.amp_dtype = amp_dtype(mixed_precision)
        if mixed_precision == "fp16" and self.device.type == "cpu":
            warnings.warn(
                "fp16 autocast on CPU is slow and unsupported by some ops; bf16 is the CPU choice",
                stacklevel=2,
            )
        fp16 = mixed_precision == "fp16"
        self.scalers = {net: torch.amp.GradScaler(self.device.type, enabled=fp16) for net in NETS}

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def loss_scale(self, net: str) -> float:
        """Current fp16 loss scale of one network (1.0 when not scaling)."""
        s = self.scalers[net]
        return float(s.get_scale()) if s.is_enabled() else 1.0

    # ---- steps ----------------------------------------------------------------------
    def backward(self, loss: torch.Tensor, net: str) -> None:
        self.scalers[net].scale(loss).backward()

    def step(self, net: str, measure: bool = True) -> torch.Tensor | None:
        """Unscale, step and zero one network's optimizer; with ``measure``, first the total
        gradient norm, returned as a 0-dim tensor (no host sync), else None (a pass over every
        gradient saved on the steps no metrics row reads)."""
        opt, scaler = self.opt[net], self.scalers[net]
        inner = getattr(opt, "optimizer", opt)
        scaler.unscale_(inner)
        norm = None
        if measure:
            grads = [p.grad for g in inner.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        scaler.step(inner)
        scaler.update()
        inner.zero_grad(set_to_none=True)
        return norm

    def skip_step(self, net: str) -> None:
        """Drop ``net``'s pending update after a non-finite loss (faults.nan_policy skip or
        rollback): zero its gradients and, under fp16, lower its loss scale as a step whose
        gradients overflowed does (:func:`back_off`). Without that a scale too large for fp16
        stays, and every later step is non-finite and skipped again."""
        self.opt[net].zero_grad(set_to_none=True)
        back_off(self.scalers[net])

    def sync_batchnorm(self, G: nn.Module, D: nn.Module) -> tuple[nn.Module, nn.Module]:
        """SyncBatchNorm when asked for (train.sync_batchnorm); Accelerate never converts, and
        on CPU (gloo) SyncBatchNorm does not run, so only CUDA with several processes."""
        if not self.cfg.train.sync_batchnorm:
            return G, D
        if self.device.type == "cuda" and self.world_size > 1:
            return nn.SyncBatchNorm.convert_sync_batchnorm(G), nn.SyncBatchNorm.convert_sync_batchnorm(D)
        if self.is_main:
            warnings.warn("train.sync_batchnorm needs CUDA and several processes; ignored here", stacklevel=3)
        return G, D

    def no_sync(self, net: str, enabled: bool) -> contextlib.AbstractContextManager:
        """Wrap one micro-step's forward and backward; ``enabled``: not the accumulation
        boundary (all micro-steps but the last), so gradients are not reduced yet."""
        return contextlib.nullcontext()

    def module(self, net: str) -> nn.Module:
        """The plain module (no DDP wrapper), e.g. D during the G step."""
        raise NotImplementedError

    def set_lr(self, net: str, factor: float) -> None:
        for group in self.opt[net].param_groups:
            group["lr"] *= factor

    # ---- collectives ------------------------------------------------------------------
    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return t
        t = t.detach().clone()
        torch.distributed.all_reduce(t)
        return t / self.world_size

    def all_gather_object(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank (pickled; one collective, none on one process).
        Unlike :meth:`all_gather_object`, memory does not grow with the number of ranks."""
        if self.world_size == 1:
            return obj
        box = [obj]
        device = self.device if self.device.type == "cuda" else None
        torch.distributed.broadcast_object_list(box, src=src, device=device)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    # ---- state ------------------------------------------------------------------------
    def save_training_state(self, folder: Path) -> None:
        raise NotImplementedError

    def load_training_state(self, folder: Path) -> None:
        raise NotImplementedError

    def scaler_state(self) -> dict[str, Any]:
        return {net: s.state_dict() for net, s in self.scalers.items() if s.is_enabled()}

    def load_scaler_state(self, state: dict[str, Any]) -> None:
        for net, s in state.items():
            if self.scalers[net].is_enabled():
                self.scalers[net].load_state_dict(s)

    def end(self) -> None:
        # gloo aborts at exit 15-25% of the time unless garbage is collected before teardown.
        gc.collect()


def back_off(scaler: torch.amp.GradScaler | None) -> None:
    """What ``scaler.update()`` does after an overflow, for a step that never reached the
    scaler: scale x backoff_factor, growth tracker 0 (through its public state dict, since
    ``update()`` refuses to run without an ``unscale_``/``step`` of this iteration)."""
    if scaler is None or not scaler.is_enabled():
        return
    state = scaler.state_dict()
    state["scale"] = state["scale"] * state["backoff_factor"]
    state["_growth_tracker"] = 0
    scaler.load_state_dict(state)


def contiguous_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in sd.items()}


def finite(*tensors: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool tensor: are all values finite? (no host sync until read)."""
    if len(tensors) == 1:  # the per-phase loss check: two ops, not four
        return torch.isfinite(tensors[0]).all()
    if not tensors:
        raise ValueError("finite() needs at least one tensor (its answer lives on their device)")
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()
