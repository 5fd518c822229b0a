"""The Accelerate backend: DDP across processes (or a single device).

Autocast and loss scaling are done by :class:`~ganscale.runtime.base.Runtime` rather than by
Accelerate, because Accelerate keeps ONE GradScaler for all optimizers; a GAN wants one
scaler per network (a shared scaler updated after each optimizer step is a known source of
fp16 NaNs). The WebDataset loader is deliberately NOT passed to ``prepare()``: for an
IterableDataset Accelerate would dispatch batches from rank 0 or re-slice the stream, while
ours is already split by node and worker.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

from ganscale.config import Config
from ganscale.runtime.base import (
    NETS,
    BatchPlan,
    Runtime,
    collective_timeout,
    configure_cuda,
    contiguous_state,
    make_adam,
)


class AccelerateRuntime(Runtime):
    """Accelerate (DDP or single device) backend."""

    def __init__(self, cfg: Config) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

        # mixed_precision="no": precision is ours (see module docstring). broadcast_buffers
        # off: each rank keeps its own BatchNorm statistics, like SyncBN-free DCGAN training.
        ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
        # The collective timeout (faults.collective_timeout_s). Accelerate passes on only the
        # fields that differ from the class defaults, whose timeout is 600 s (NCCL's): exactly
        # 600 would be dropped and gloo would wait its own 1800. One microsecond more is kept.
        timeout = collective_timeout(cfg)
        if timeout == InitProcessGroupKwargs().timeout:
            timeout += timedelta(microseconds=1)
        pg = InitProcessGroupKwargs(timeout=timeout)
        # cpu=True without CUDA: otherwise, under torchrun (no ACCELERATE_USE_CPU), Accelerate on
        # a CPU-only machine makes every process "rank 0 of 1" (no gradient averaging, data not
        # split, every rank writing checkpoints).
        self.accelerator = Accelerator(
            mixed_precision="no", kwargs_handlers=[ddp, pg], cpu=not torch.cuda.is_available()
        )
        state = self.accelerator.state
        # Several CPU processes get device "cpu:0", which safetensors' load_file(device=...) rejects
        # (so every multi-process CPU resume failed); CPU has one device: call it "cpu".
        device = self.accelerator.device
        self.device = torch.device("cpu") if device.type == "cpu" else device
        self.rank = state.process_index
        self.world_size = state.num_processes
        self.local_rank = state.local_process_index
        configure_cuda(cfg, self.device)
        self._init_precision(cfg.train.mixed_precision)
        self.cfg = cfg
        self.plan = BatchPlan.of(cfg, self.world_size)

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
            save_file(
                contiguous_state(self._plain[net].state_dict()), str(folder / f"{net.upper()}.safetensors")
            )
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
