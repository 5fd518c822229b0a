"""The DeepSpeed backend: two ZeRO engines, one for G and one for D.

Why two raw ``deepspeed.initialize`` engines, and not Accelerate:
- One Accelerator cannot hold two DeepSpeed models, and a GAN has two networks with two
  optimizers. Accelerate's multi-model recipe (``deepspeed_plugins`` + a second
  Accelerator) is marked experimental, needs ``transformers``, and on CPU reports each
  rank as 0 of 1 (unsharded data, wrong averaging): not something to build training on.
- Two engines are plain DeepSpeed: each owns its network's ZeRO partitioning, optimizer
  state, gradient reduction and (fp16) loss scaler, which is exactly one scaler per
  network. The catch is the G step: G's loss runs through D, so D must be frozen
  (``requires_grad_(False)``, which the trainer does around its G phase). Without that,
  ZeRO-2 fails ("Gradient computed twice for this partition") and ZeRO-0/1 silently keep
  D's G-step gradients and add them to the next D step (tests/test_deepspeed.py shows both).
  In the G phase the trainer calls D through :meth:`DeepSpeedRuntime.module` (the engine's
  plain module), which stage 0 requires and stages 1-2 accept.

Precision: DeepSpeed's ``torch_autocast`` section, not its ``bf16``/``fp16`` sections.
Those convert the module's weights and buffers to 16 bit: BatchNorm then fails with
"expected scalar type BFloat16 but found Float" unless ``data_types.buffer_dtype`` is set,
its running statistics are kept in bf16, and -- worse for a GAN -- the EMA of G, which the
trainer deep-copies from the live module, would be a bf16 copy in which a 0.999 decay
barely moves. With ``torch_autocast`` the weights, buffers, EMA and export stay fp32, the
math is the same autocast the Accelerate backend uses, Linear/Conv gradients are still
communicated in 16 bit, and fp16 gets one GradScaler per engine (saved via
:meth:`scaler_state`, which DeepSpeed's own checkpoints leave out).

Gradient accumulation: the trainer wraps each micro-step in ``rt.no_sync(net, enabled)``,
``enabled`` meaning "not the last micro-step" (see :mod:`ganscale.runtime.base`). That is
what the engine is told (``set_gradient_accumulation_boundary(not enabled)``), so it reduces
at the boundary and one ``engine.step()`` per optimizer step applies the update and zeroes
the gradients; nothing counts backward calls. ``step`` refuses to run unless the last
backward was at a boundary. Losses arrive already divided by ``grad_accum``, so
``engine.backward(..., scale_wrt_gas=False)``.

Checkpoints (:mod:`ganscale.runtime.deepspeed_checkpoint`): each engine saves into its own
folder, every rank writing its optimizer partition; ZeRO-1/2 are saved "elastic", so a
checkpoint loads on a different number of processes. Rank 0
also writes the full fp32 weights (``G.safetensors``, ``D.safetensors``) like the
Accelerate backend, and the trainer exports the EMA generator as usual, so sampling never
needs DeepSpeed. DeepSpeed's own files are torch pickles: only ``--resume`` of a DeepSpeed
run reads them.

Collective timeout (``faults.collective_timeout_s``): the world group's
(``deepspeed.init_distributed(timeout=...)``) and, through torch's default for new groups, that
of the groups DeepSpeed makes for itself; so a rank that dies or freezes fails the others
within it. After such a failure :meth:`DeepSpeedRuntime.end` skips its closing barrier.

Gradient penalties (GP, R1, DRAGAN) differentiate D's output with respect to its input before
the engine's backward; that pass runs on the plain module (``losses.plain_module``), because
the engine's forward hooks its outputs to start its backward (ZeRO's reduction epilogue).

ZeRO-3 is refused by the config: it partitions the weights themselves, and the trainer's
EMA of G (a deep copy of the live module, updated in place) would see empty tensors.

Everything DeepSpeed lives in this module and its two helpers (``deepspeed_config``,
``deepspeed_checkpoint``); nothing outside :mod:`ganscale.runtime` imports it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganscale.config import Config
from ganscale.errors import GanscaleError
from ganscale.runtime.base import (
    NETS,
    BatchPlan,
    Runtime,
    amp_dtype,
    back_off,
    collective_timeout,
    configure_cuda,
    contiguous_state,
    make_adam,
    unwinding,
)
from ganscale.runtime.deepspeed_checkpoint import load_engine, save_engine
from ganscale.runtime.deepspeed_config import ds_config
from ganscale.runtime.env import default_ds_accelerator, export_single_process_group, launch_env

__all__ = ["DeepSpeedRuntime", "ds_config"]


def _init_process_group(device_type: str, timeout: timedelta) -> None:
    """Join (or, for a plain single process, create) the process group.

    ``torchrun``, ``accelerate launch`` and the ``deepspeed`` launcher all export RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (the deepspeed launcher also passes
    ``--local_rank``, which the CLI strips). A bare ``ganscale train`` has none: a one-process
    group is described instead (:func:`ganscale.runtime.env.export_single_process_group`).
    """
    import deepspeed

    _default_group_timeout(timeout)  # DeepSpeed's own groups, even in a group made elsewhere
    if torch.distributed.is_initialized():
        return
    export_single_process_group()
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cpu":
        _check_shm_op_lock()
    # timeout: faults.collective_timeout_s, for every collective of the group (gloo and NCCL)
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False, timeout=timeout)


def _default_group_timeout(timeout: timedelta) -> None:
    """Make ``timeout`` the default of every process group created later in this process.

    DeepSpeed reduces ZeRO gradients over groups of its own (a clone of the world group for
    data parallelism), made with ``torch.distributed.new_group(ranks)`` and no timeout: such a
    group takes torch's module default (1800 s for gloo), not the world group's. Seen here: a
    frozen rank left the other waiting in that clone's all-reduce long after the world group's
    timeout. So the default that ``new_group`` reads is set as well.
    """
    from torch.distributed import distributed_c10d as c10d

    c10d.default_pg_timeout = timeout
    if isinstance(c10d.default_pg_nccl_timeout, timedelta):  # None in builds without NCCL
        c10d.default_pg_nccl_timeout = timeout


def _check_shm_op_lock(max_age_s: float = 300.0) -> None:
    """Refuse to hang on a stale DeepSpeed build lock (CPU only).

    On CPU DeepSpeed JIT-compiles a shared-memory all-reduce op (~20 s, once; it makes the
    CPU collectives ~8x faster than plain gloo here) under a lock file in the torch
    extensions folder. A process killed mid-build leaves the lock behind, and every later
    DeepSpeed start then waits on it forever, silently (seen on the shared test machine).
    """
    try:
        from torch.utils.cpp_extension import _get_build_directory

        lock = Path(_get_build_directory("deepspeed_shm_comm", False)) / "lock"
    except Exception:  # noqa: BLE001 - private torch helper; no check rather than no training
        return
    import time

    try:
        age = time.time() - lock.stat().st_mtime
    except OSError:
        return
    if age > max_age_s:
        raise GanscaleError(
            f"{lock} is {age / 60:.0f} min old: a DeepSpeed op build was killed and left "
            f"its lock, and DeepSpeed would wait on it forever; delete the file (no build "
            f"is running) and start again"
        )


class _EngineOptimizer:
    """What the trainer sees as ``rt.opt[net]``: the learning rates (``param_groups``) and a
    ``zero_grad`` that drops a pending (non-finite) accumulation without stepping."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.engine.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        opt = self.engine.optimizer
        opt.zero_grad(set_to_none=True)
        # ZeRO-1/2 keep the reduced gradient partitions here until step(); DeepSpeed's own
        # overflow path clears them the same way.
        for attr in ("averaged_gradients", "all_grad_tensors"):
            buf = getattr(opt, attr, None)
            if isinstance(buf, dict):
                for k in buf:
                    buf[k] = None

    def state_dict(self) -> dict[str, Any]:
        return self.engine.optimizer.state_dict()


class DeepSpeedRuntime(Runtime):
    """Two DeepSpeed engines (see module docstring)."""

    def __init__(self, cfg: Config) -> None:
        default_ds_accelerator(torch.cuda.is_available())
        try:
            import deepspeed  # noqa: F401
            from deepspeed.utils import logger as ds_logger
        except ImportError as e:
            raise GanscaleError(
                f"backend: deepspeed needs DeepSpeed ({e}); pip install 'ganscale[deepspeed]'"
            ) from e

        ds_logger.setLevel(logging.WARNING)
        self.cfg = cfg
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        _init_process_group(device_type, collective_timeout(cfg))
        self.rank = torch.distributed.get_rank()
        self.world_size = torch.distributed.get_world_size()
        self.local_rank = launch_env().local_rank
        if device_type == "cuda":
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        configure_cuda(cfg, self.device)
        self.amp_dtype = amp_dtype(cfg.train.mixed_precision)
        # Loss scaling is the engines' (one GradScaler each); the base class's scalers stay off.
        self.scalers = {net: torch.amp.GradScaler(self.device.type, enabled=False) for net in NETS}
        self.plan = BatchPlan.of(cfg, self.world_size)
        # Was the last backward of each net at an accumulation boundary (so step() may run)?
        self._at_boundary = dict.fromkeys(NETS, False)

    # ---- setup ------------------------------------------------------------------------
    def setup(self, G: nn.Module, D: nn.Module) -> None:
        import deepspeed

        cfg = self.cfg
        G, D = self.sync_batchnorm(G, D)
        G.to(self.device)
        D.to(self.device)
        # train.channels_last is not applied to the weights here: DeepSpeed broadcasts and
        # flattens parameters as contiguous (NCHW) memory (a channels_last weight fails in
        # deepspeed.initialize: "stride(-1) must be 1 to view Float as Byte"). The trainer's
        # channels_last batches still work; convolutions pick their layout from them.
        betas = (cfg.optim.beta1, cfg.optim.beta2)
        self.engines: dict[str, Any] = {}
        for net, model, lr in (("g", G, cfg.optim.g_lr), ("d", D, cfg.optim.d_lr)):
            # ZeRO-1/2's buckets sized to this network (DeepSpeed's 5e8 elements: ~2 GB of buffers)
            config = ds_config(cfg, self.plan, n_params=sum(p.numel() for p in model.parameters()))
            if net == "d":
                self.ds_config = config  # what deepspeed.json records (G's differs in bucket sizes only)
            opt = make_adam(model.parameters(), lr, betas, cfg.optim.impl, self.device)
            engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)
            self.engines[net] = engine
        self.G, self.D = self.engines["g"], self.engines["d"]
        self.opt = {net: _EngineOptimizer(e) for net, e in self.engines.items()}  # type: ignore[misc]

    def module(self, net: str) -> nn.Module:
        return self.engines[net].module

    # ---- steps ------------------------------------------------------------------------
    def no_sync(self, net: str, enabled: bool) -> contextlib.AbstractContextManager:
        """Tell the engine whether this micro-step is the accumulation boundary (``not
        enabled``); outside the block every backward is one, as with DDP."""
        return self._boundary(self.engines[net], not enabled)

    @staticmethod
    @contextlib.contextmanager
    def _boundary(engine: Any, is_boundary: bool) -> Iterator[None]:
        engine.set_gradient_accumulation_boundary(is_boundary)
        try:
            yield
        finally:
            engine.set_gradient_accumulation_boundary(True)

    def backward(self, loss: torch.Tensor, net: str) -> None:
        engine = self.engines[net]
        engine.backward(loss, scale_wrt_gas=False)
        self._at_boundary[net] = bool(engine.is_gradient_accumulation_boundary())

    def step(self, net: str, measure: bool = True) -> torch.Tensor | None:
        """One optimizer step of ``net`` (after the boundary micro-step's backward); with
        ``measure``, returns the gradient norm DeepSpeed measured (or, for stage 0, the norm of
        the reduced grads), else None."""
        engine = self.engines[net]
        if not self._at_boundary[net]:
            raise GanscaleError(
                f"step({net!r}) without a backward at an accumulation boundary since the last "
                f"step: the last micro-step must run outside no_sync({net!r}) or with enabled=False"
            )
        self._at_boundary[net] = False
        scale = self.loss_scale(net)  # fp16: gradients (and DeepSpeed's norm) are still scaled
        norm = None
        if measure and not engine.zero_optimization():
            grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        engine.step()
        if not measure:
            return None
        if norm is None:
            # ZeRO-1/2's norm: a float or a tensor, by DeepSpeed version; on the device either way
            # (the metrics row stacks it with the step's other device tensors)
            value = engine.get_global_grad_norm()
            if isinstance(value, torch.Tensor):
                norm = value.detach().to(self.device)
            else:
                norm = torch.tensor(float(value) if value is not None else float("nan"), device=self.device)
        return (norm.detach().float() / scale).reshape(())

    def skip_step(self, net: str) -> None:
        """Drop the pending update (gradients and ZeRO's reduced partitions) and lower the
        engine's fp16 loss scale, as an overflowing ``engine.step()`` would."""
        self.opt[net].zero_grad(set_to_none=True)
        back_off(self._gradscaler(net))
        self._at_boundary[net] = False

    def loss_scale(self, net: str) -> float:
        scaler = self._gradscaler(net)
        return float(scaler.get_scale()) if scaler is not None else 1.0

    def _gradscaler(self, net: str) -> torch.amp.GradScaler | None:
        engine = self.engines[net]
        return getattr(engine.optimizer, "torch_autocast_gradscaler", None) or getattr(
            engine, "torch_autocast_z0_gradscaler", None
        )

    # ---- state ------------------------------------------------------------------------
    def save_training_state(self, folder: Path) -> None:
        """All ranks: each engine into its own folder; rank 0: full fp32 weights."""
        for net, engine in self.engines.items():
            save_engine(engine, folder / f"ds_{net.upper()}")
        if self.is_main:
            from safetensors.torch import save_file

            meta = {
                "zero_stage": self.cfg.deepspeed.zero_stage,
                "world_size": self.world_size,
                "ds_config": self.ds_config,  # what the engines ran with (user JSON merged)
            }
            (folder / "deepspeed.json").write_text(json.dumps(meta))
            for net in NETS:
                weights = contiguous_state(self.module(net).state_dict())
                save_file(weights, str(folder / f"{net.upper()}.safetensors"))

    def load_training_state(self, folder: Path) -> None:
        meta_path = folder / "deepspeed.json"
        if not meta_path.is_file():
            raise GanscaleError(
                f"checkpoint {folder}: not written by backend: deepspeed (no deepspeed.json); "
                f"resume it with the backend that wrote it"
            )
        meta = json.loads(meta_path.read_text())
        stage = self.cfg.deepspeed.zero_stage
        if meta["zero_stage"] != stage:
            raise GanscaleError(
                f"checkpoint {folder}: written with ZeRO stage {meta['zero_stage']}, this run "
                f"uses {stage}; add --set deepspeed.zero_stage={meta['zero_stage']}"
            )
        for net, engine in self.engines.items():
            load_engine(engine, folder / f"ds_{net.upper()}", meta["world_size"], self.world_size)
            self._at_boundary[net] = False

    def scaler_state(self) -> dict[str, Any]:
        out = {}
        for net in NETS:
            scaler = self._gradscaler(net)
            if scaler is not None:
                out[net] = scaler.state_dict()
        return out

    def load_scaler_state(self, state: dict[str, Any]) -> None:
        for net, s in state.items():
            scaler = self._gradscaler(net)
            if scaler is not None:
                scaler.load_state_dict(s)

    def end(self) -> None:
        self.engines = {}
        self.G = self.D = None  # type: ignore[assignment]
        # gloo aborts at exit unless garbage is collected before teardown. The process group is
        # left up: DeepSpeed caches its groups globally, so a destroyed and re-created group
        # breaks the next deepspeed.initialize in this process (tests, notebooks).
        gc.collect()
        if torch.distributed.is_initialized() and not unwinding():
            torch.distributed.barrier()
