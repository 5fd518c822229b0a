"""The one module that owns distribution, devices and precision.

The trainer calls only what is here: ``rt.autocast()``, ``rt.backward(loss, "d")``,
``rt.step("d")``, ``rt.no_sync("d", ...)``, ``rt.is_main``, ``rt.all_reduce_mean``.
Models stay plain ``nn.Module``s.

Two backends:
- :class:`AccelerateRuntime`: Accelerate prepares G, D and both optimizers (DDP across
  processes). Autocast and loss scaling are done here rather than by Accelerate, because
  Accelerate keeps ONE GradScaler for all optimizers; a GAN wants one scaler per network
  (a shared scaler updated after each optimizer step is a known source of fp16 NaNs).
  The WebDataset loader is deliberately NOT passed to ``prepare()``: for an
  IterableDataset Accelerate would dispatch batches from rank 0 or re-slice the stream,
  while ours is already split by node and worker.
- DeepSpeed lives in :mod:`ganscale.runtime_deepspeed` (two engines; see there why).
"""

from __future__ import annotations

import contextlib
import gc
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganscale.config import Config
from ganscale.errors import GanscaleError

NETS = ("g", "d")

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def make_adam(
    params: Any, lr: float, betas: tuple[float, float], impl: str, device: torch.device
) -> torch.optim.Adam:
    """Adam with the fastest implementation the device supports (fused on CUDA, foreach elsewhere)."""
    kwargs: dict[str, Any] = {}
    if impl == "auto":
        impl = "fused" if device.type == "cuda" else "foreach"
    if impl == "fused":
        kwargs["fused"] = True
    elif impl == "foreach":
        kwargs["foreach"] = True
    else:
        kwargs["foreach"] = False
    return torch.optim.Adam(params, lr=lr, betas=betas, **kwargs)


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

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- precision -----------------------------------------------------------------
    def _init_precision(self, mixed_precision: str) -> None:
        self.amp_dtype = _DTYPES.get(mixed_precision)
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

    def step(self, net: str) -> torch.Tensor:
        """Unscale, measure the gradient norm, step and zero one network's optimizer.

        Returns the total gradient norm as a 0-dim tensor (no host sync).
        """
        opt, scaler = self.opt[net], self.scalers[net]
        inner = getattr(opt, "optimizer", opt)
        scaler.unscale_(inner)
        params = [p for g in inner.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros(())
        scaler.step(inner)
        scaler.update()
        inner.zero_grad(set_to_none=True)
        return norm

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
        """Skip the gradient all-reduce for accumulation micro-steps (all but the last)."""
        return contextlib.nullcontext()

    def module(self, net: str) -> nn.Module:
        """The plain module (no DDP wrapper), e.g. D during the G step."""
        raise NotImplementedError

    def gathered(self, net: str) -> contextlib.AbstractContextManager:
        """Full parameters of ``net`` inside the block (collective). Only ZeRO-3 partitions
        them; e.g. ``with rt.gathered("g"): ema.update()``."""
        return contextlib.nullcontext()

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

    def broadcast_object(self, obj: Any) -> Any:
        if self.world_size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
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


class AccelerateRuntime(Runtime):
    """Accelerate (DDP or single device) backend."""

    def __init__(self, cfg: Config) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        # mixed_precision="no": precision is ours (see module docstring). broadcast_buffers
        # off: each rank keeps its own BatchNorm statistics, like SyncBN-free DCGAN training.
        ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
        # cpu=True without CUDA: otherwise, under torchrun (no ACCELERATE_USE_CPU), Accelerate on
        # a CPU-only machine makes every process "rank 0 of 1" (no gradient averaging, data not
        # split, every rank writing checkpoints).
        self.accelerator = Accelerator(
            mixed_precision="no", kwargs_handlers=[ddp], cpu=not torch.cuda.is_available()
        )
        state = self.accelerator.state
        # Several CPU processes get device "cpu:0", which safetensors' load_file(device=...) rejects
        # (so every multi-process CPU resume failed); CPU has one device: call it "cpu".
        device = self.accelerator.device
        self.device = torch.device("cpu") if device.type == "cpu" else device
        self.rank = state.process_index
        self.world_size = state.num_processes
        self.local_rank = state.local_process_index
        self._init_precision(cfg.train.mixed_precision)
        self.cfg = cfg

    def setup(self, G: nn.Module, D: nn.Module) -> None:
        """Place, wrap and build optimizers for both networks."""
        cfg = self.cfg
        G, D = self.sync_batchnorm(G, D)
        G.to(self.device)
        D.to(self.device)
        if cfg.train.channels_last:
            G.to(memory_format=torch.channels_last)
            D.to(memory_format=torch.channels_last)
        betas = (cfg.optim.beta1, cfg.optim.beta2)
        opt_g = make_adam(G.parameters(), cfg.optim.g_lr, betas, cfg.optim.impl, self.device)
        opt_d = make_adam(D.parameters(), cfg.optim.d_lr, betas, cfg.optim.impl, self.device)
        self._plain = {"g": G, "d": D}
        G, D, opt_g, opt_d = self.accelerator.prepare(G, D, opt_g, opt_d)
        if cfg.train.compile:
            mode = cfg.train.compile_mode
            G, D = torch.compile(G, mode=mode), torch.compile(D, mode=mode)
        self.G, self.D = G, D
        self.opt = {"g": opt_g, "d": opt_d}

    def module(self, net: str) -> nn.Module:
        return self._plain[net]

    def no_sync(self, net: str, enabled: bool) -> contextlib.AbstractContextManager:
        model = self.G if net == "g" else self.D
        inner = getattr(model, "_orig_mod", model)
        if enabled and hasattr(inner, "no_sync"):
            return inner.no_sync()
        return contextlib.nullcontext()

    # State: full (unsharded) tensors, written by rank 0 alone: safetensors for weights,
    # torch.save for optimizer states (loaded back with weights_only=True: no code runs).
    def save_training_state(self, folder: Path) -> None:
        if not self.is_main:
            return
        from safetensors.torch import save_file

        for net in NETS:
            save_file(_contiguous(self._plain[net].state_dict()), str(folder / f"{net.upper()}.safetensors"))
            torch.save(self.opt[net].state_dict(), folder / f"optim_{net.upper()}.pt")

    def load_training_state(self, folder: Path) -> None:
        from safetensors.torch import load_file

        for net in NETS:
            weights = load_file(str(folder / f"{net.upper()}.safetensors"), device=str(self.device))
            self._plain[net].load_state_dict(weights)
            opt_state = torch.load(
                folder / f"optim_{net.upper()}.pt", map_location=self.device, weights_only=True
            )
            self.opt[net].load_state_dict(opt_state)

    def end(self) -> None:
        super().end()
        self.accelerator.end_training()


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in sd.items()}


def build_runtime(cfg: Config) -> Runtime:
    """The runtime for ``cfg.backend``."""
    # The launcher's settings must agree with the config's, which is the source of truth.
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and cfg.backend != "deepspeed":
        raise GanscaleError("this launch uses an Accelerate DeepSpeed config; add --set backend=deepspeed")
    launcher_mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launcher_mp not in ("no", cfg.train.mixed_precision):
        warnings.warn(
            f"the launcher asks for {launcher_mp} but train.mixed_precision is {cfg.train.mixed_precision}; "
            f"add --set train.mixed_precision={launcher_mp} to use it",
            stacklevel=2,
        )
    if cfg.backend == "deepspeed":
        try:
            from ganscale.runtime_deepspeed import DeepSpeedRuntime
        except ImportError as e:
            raise GanscaleError(
                f"backend: deepspeed needs DeepSpeed ({e}); pip install 'ganscale[deepspeed]'"
            ) from e
        return DeepSpeedRuntime(cfg)
    return AccelerateRuntime(cfg)


def finite(*tensors: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool tensor: are all values finite? (no host sync until read)."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return torch.stack(flags).all() if flags else torch.tensor(True)
