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
  plain module), which stage 0 requires and stages 1-3 accept.

Precision: DeepSpeed's ``torch_autocast`` section, not its ``bf16``/``fp16`` sections.
Those convert the module's weights and buffers to 16 bit: BatchNorm then fails with
"expected scalar type BFloat16 but found Float" unless ``data_types.buffer_dtype`` is set,
its running statistics are kept in bf16, and -- worse for a GAN -- the EMA of G, which the
trainer deep-copies from the live module, would be a bf16 copy in which a 0.999 decay
barely moves. With ``torch_autocast`` the weights, buffers, EMA and export stay fp32, the
math is the same autocast the Accelerate backend uses, Linear/Conv gradients are still
communicated in 16 bit, and fp16 gets one GradScaler per engine (saved via
:meth:`scaler_state`, which DeepSpeed's own checkpoints leave out).

Gradient accumulation: the trainer calls ``backward`` ``grad_accum`` times, then ``step``
once. The engines are told where the boundary is (``set_gradient_accumulation_boundary``)
from a count of backward calls, so one ``engine.step()`` per optimizer step applies the
update and zeroes the gradients. Losses arrive already divided by ``grad_accum``, so
``engine.backward(..., scale_wrt_gas=False)``.

Checkpoints: each engine saves into its own folder (``ds_G``, ``ds_D``; a shared folder's
``latest`` file would be overwritten), every rank writing its optimizer partition. ZeRO-1/2
are saved "elastic", so a checkpoint loads on a different number of processes. Rank 0
also writes the full fp32 weights (``G.safetensors``, ``D.safetensors``) like the
Accelerate backend, and the trainer exports the EMA generator as usual, so sampling never
needs DeepSpeed. DeepSpeed's own files are torch pickles: only ``--resume`` of a DeepSpeed
run reads them.

ZeRO-3 partitions the weights themselves: the trainer's EMA of G (a deep copy of the live
module, updated in place) then sees empty tensors. :meth:`gathered` gives the full weights
for a block; the trainer has to build and update its EMA inside it (see the scaling notes).

Everything DeepSpeed lives in this module; nothing else imports it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganscale.config import Config
from ganscale.errors import ConfigError, GanscaleError
from ganscale.runtime.base import NETS, BatchPlan, Runtime, contiguous_state, make_adam

_AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
_TAG = "state"  # DeepSpeed checkpoint tag inside ds_G/ and ds_D/


def ds_config(cfg: Config, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config of one engine, built from the ganscale config.

    ``launch/deepspeed/zero{1,2}.json`` show the same dicts (with ``"auto"`` where a value
    comes from the ganscale config); a test keeps them in step. ``deepspeed.config`` (a JSON
    file) is merged over this.
    """
    tc = cfg.train
    accum = cfg.grad_accum_for(world_size)
    stage = cfg.deepspeed.zero_stage
    zero: dict[str, Any] = {"stage": stage}
    if stage in (1, 2):
        # Optimizer partitions saved so that a checkpoint loads on another process count.
        zero["elastic_checkpoint"] = True
    out: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": tc.batch_size,
        "gradient_accumulation_steps": accum,
        "train_batch_size": tc.batch_size * accum * world_size,
        # Our optimizer is torch's Adam (foreach/fused), not DeepSpeed's CPU/fused Adam ops,
        # which need compiled extensions.
        "zero_allow_untested_optimizer": True,
        "zero_optimization": zero,
        "gradient_clipping": 0.0,
        "wall_clock_breakdown": False,
    }
    if tc.mixed_precision in _AUTOCAST_DTYPES:
        out["torch_autocast"] = {"enabled": True, "dtype": _AUTOCAST_DTYPES[tc.mixed_precision]}
    if cfg.deepspeed.config:
        out = _merge_user_config(out, Path(cfg.deepspeed.config))
    return out


def _merge_user_config(built: dict[str, Any], path: Path) -> dict[str, Any]:
    """Merge a DeepSpeed JSON over the built config; ``"auto"`` keeps the built value and a
    value that contradicts the ganscale config is an error (one source of truth)."""
    try:
        user = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"config key deepspeed.config: cannot read {path} ({e})") from None

    def merge(base: dict[str, Any], over: dict[str, Any], prefix: str) -> dict[str, Any]:
        res = dict(base)
        for k, v in over.items():
            if isinstance(k, str) and k.startswith("//"):  # comment keys in our JSON files
                continue
            if v == "auto":
                continue
            if isinstance(v, dict):
                sub = merge(base[k] if isinstance(base.get(k), dict) else {}, v, f"{prefix}{k}.")
                if sub or k in base:
                    res[k] = sub
                continue
            if k in base and not isinstance(base[k], dict) and k in _OWNED and base[k] != v:
                raise ConfigError(
                    f"{path}: {prefix}{k} is {v!r} but the ganscale config gives "
                    f'{base[k]!r} ({_OWNED[k]}); write "auto" there'
                )
            res[k] = v
        return res

    return merge(built, user, "")


# Keys the ganscale config owns; a DeepSpeed JSON may only repeat them (or say "auto").
_OWNED = {
    "train_micro_batch_size_per_gpu": "train.batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
    "train_batch_size": "train.batch_size x grad_accum x processes",
    "stage": "deepspeed.zero_stage",
    "enabled": "train.mixed_precision",
    "dtype": "train.mixed_precision",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_process_group(device_type: str) -> None:
    """Join (or, for a plain single process, create) the process group.

    ``torchrun``, ``accelerate launch`` and the ``deepspeed`` launcher all export RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (the deepspeed launcher also passes
    ``--local_rank``, which the CLI strips). A bare ``ganscale train`` has none: DeepSpeed
    would go looking for MPI, so a one-process group is described here instead.
    """
    import deepspeed

    if torch.distributed.is_initialized():
        return
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.update(
            {
                "RANK": "0",
                "WORLD_SIZE": "1",
                "LOCAL_RANK": "0",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": os.environ.get("MASTER_PORT") or str(_free_port()),
            }
        )
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cpu":
        _check_shm_op_lock()
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)


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
        if not torch.cuda.is_available():
            # Without this DeepSpeed probes for accelerators and logs about each one.
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed  # noqa: F401  (ImportError -> build_runtime's install hint)
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
        self.cfg = cfg
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        _init_process_group(device_type)
        self.rank = torch.distributed.get_rank()
        self.world_size = torch.distributed.get_world_size()
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device_type == "cuda":
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.mixed_precision)
        # Loss scaling is the engines' (one GradScaler each); the base class's scalers stay off.
        self.scalers = {net: torch.amp.GradScaler(self.device.type, enabled=False) for net in NETS}
        self.plan = BatchPlan.of(cfg, self.world_size)
        self.grad_accum = self.plan.grad_accum
        self._backwards = dict.fromkeys(NETS, 0)

    # ---- setup ------------------------------------------------------------------------
    def setup(self, G: nn.Module, D: nn.Module) -> None:
        import deepspeed

        cfg = self.cfg
        G, D = self.sync_batchnorm(G, D)
        if cfg.train.compile and self.is_main:
            warnings.warn("train.compile is not applied under backend: deepspeed", stacklevel=2)
        G.to(self.device)
        D.to(self.device)
        # train.channels_last is not applied to the weights here: DeepSpeed broadcasts and
        # flattens parameters as contiguous (NCHW) memory (a channels_last weight fails in
        # deepspeed.initialize: "stride(-1) must be 1 to view Float as Byte"). The trainer's
        # channels_last batches still work; convolutions pick their layout from them.
        betas = (cfg.optim.beta1, cfg.optim.beta2)
        config = ds_config(cfg, self.world_size)
        self.ds_config = config
        self.engines: dict[str, Any] = {}
        for net, model, lr in (("g", G, cfg.optim.g_lr), ("d", D, cfg.optim.d_lr)):
            opt = make_adam(model.parameters(), lr, betas, cfg.optim.impl, self.device)
            engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)
            self.engines[net] = engine
        self.G, self.D = self.engines["g"], self.engines["d"]
        self.opt = {net: _EngineOptimizer(e) for net, e in self.engines.items()}  # type: ignore[misc]
        if cfg.deepspeed.zero_stage == 3 and self.is_main:
            warnings.warn(
                "ZeRO-3 partitions G's weights: the EMA and the sample grids need the trainer "
                "to gather them (see docs/scaling.md)",
                stacklevel=2,
            )

    def module(self, net: str) -> nn.Module:
        return self.engines[net].module

    # ---- steps ------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor, net: str) -> None:
        engine = self.engines[net]
        self._backwards[net] += 1
        engine.set_gradient_accumulation_boundary(self._backwards[net] % self.grad_accum == 0)
        engine.backward(loss, scale_wrt_gas=False)

    def step(self, net: str) -> torch.Tensor:
        """One optimizer step of ``net`` (after ``grad_accum`` backward calls); returns the
        gradient norm DeepSpeed measured (or, for stage 0, the norm of the reduced grads)."""
        engine = self.engines[net]
        if self._backwards[net] % self.grad_accum != 0:
            raise GanscaleError(
                f"step({net!r}) after {self._backwards[net]} backward calls; "
                f"expected a multiple of grad_accum={self.grad_accum}"
            )
        scale = self.loss_scale(net)  # fp16: gradients (and DeepSpeed's norm) are still scaled
        norm = None
        if not engine.zero_optimization():
            grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        engine.step()
        if norm is None:
            value = engine.get_global_grad_norm()
            norm = torch.tensor(float(value) if value is not None else float("nan"))
        return (norm.detach().float() / scale).reshape(())

    def no_sync(self, net: str, enabled: bool) -> contextlib.AbstractContextManager:
        # The engines reduce at the boundary set in backward(); nothing to suspend here.
        return contextlib.nullcontext()

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
            _expose_adam_step(engine)
            engine.save_checkpoint(str(folder / f"ds_{net.upper()}"), tag=_TAG)
        if self.is_main:
            from safetensors.torch import save_file

            meta = {
                "zero_stage": self.cfg.deepspeed.zero_stage,
                "world_size": self.world_size,
                "ds_config": self.ds_config,  # what the engines ran with (user JSON merged)
            }
            (folder / "deepspeed.json").write_text(json.dumps(meta))
            for net in NETS:
                with self.gathered(net):
                    save_file(
                        contiguous_state(self.module(net).state_dict()),
                        str(folder / f"{net.upper()}.safetensors"),
                    )
        else:
            for net in NETS:  # the gather is collective under ZeRO-3
                with self.gathered(net):
                    pass

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
        if stage == 3 and meta["world_size"] != self.world_size:
            raise GanscaleError(
                f"checkpoint {folder}: ZeRO-3 partitions cannot be re-split from "
                f"{meta['world_size']} to {self.world_size} processes; resume on "
                f"{meta['world_size']} (ZeRO-0/1/2 checkpoints resume on any count)"
            )
        for net, engine in self.engines.items():
            path = folder / f"ds_{net.upper()}"
            if stage in (1, 2) and meta["world_size"] != self.world_size:
                _load_zero12_elastic(engine, path, meta["world_size"])
            else:
                load_path, _ = engine.load_checkpoint(
                    str(path), tag=_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
                )
                if load_path is None:
                    raise GanscaleError(f"checkpoint {folder}: DeepSpeed could not load {path}")
            self._backwards[net] = 0

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

    def gathered(self, net: str) -> contextlib.AbstractContextManager:
        """Full parameters of ``net`` inside the block (ZeRO-3 gathers them; collective)."""
        if self.cfg.deepspeed.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.module(net).parameters()), modifier_rank=None)

    def end(self) -> None:
        self.engines = {}
        self.G = self.D = None  # type: ignore[assignment]
        # gloo aborts at exit unless garbage is collected before teardown. The process group is
        # left up: DeepSpeed caches its groups globally, so a destroyed and re-created group
        # breaks the next deepspeed.initialize in this process (tests, notebooks).
        gc.collect()
        if torch.distributed.is_initialized():
            torch.distributed.barrier()


def _expose_adam_step(engine: Any) -> None:
    """Copy torch Adam's step count into its param groups before a ZeRO-1/2 save.

    DeepSpeed's elastic (any-process-count) checkpoint reads the step from
    ``param_groups[0]["step"]``, where its own Adam keeps it; torch's Adam keeps it per
    parameter, so without this the save has no step and the load asserts. torch's Adam
    ignores the extra group key, and the per-parameter steps are restored as well.
    """
    basic = getattr(engine.optimizer, "optimizer", None)
    if basic is None or not getattr(engine.optimizer, "elastic_checkpoint", False):
        return
    for group in basic.param_groups:
        steps = [basic.state[p]["step"] for p in group["params"] if "step" in basic.state.get(p, {})]
        group["step"] = int(steps[0]) if steps else 0


def _load_zero12_elastic(engine: Any, path: Path, saved_world_size: int) -> None:
    """Load a ZeRO-1/2 checkpoint written on ``saved_world_size`` processes into this one.

    The checkpoint is saved "elastic" (each rank's unpadded fp32 partition and Adam state),
    and DeepSpeed's ZeRO-1/2 optimizer can merge and re-split such partitions, but its
    ``engine.load_checkpoint`` refuses any process-count change up front, and its universal
    checkpoint converter needs Megatron-style metadata. So: module weights and buffers
    through the engine (module only), then the optimizer's own elastic restore steps. These
    are DeepSpeed internals (checked with 0.19.8); a missing one is a clear error, not a
    silently fresh optimizer.
    """
    from deepspeed.checkpoint.constants import OPTIMIZER_STATE_DICT

    opt = engine.optimizer
    steps = (
        "_load_global_state",
        "_restore_elastic_base_optimizer_state",
        "_restore_from_elastic_fp32_weights",
        "_link_all_hp_params",
    )
    missing = [s for s in steps if not hasattr(opt, s)]
    if missing:
        raise GanscaleError(
            f"{path}: resuming on another process count needs DeepSpeed's ZeRO-1/2 elastic "
            f"restore ({', '.join(missing)} missing in this DeepSpeed version); resume on "
            f"{saved_world_size} processes"
        )
    load_path, _ = engine.load_checkpoint(
        str(path),
        tag=_TAG,
        load_module_only=True,
        load_optimizer_states=False,
        load_lr_scheduler_states=False,
    )
    if load_path is None:
        raise GanscaleError(f"{path}: DeepSpeed could not load the module weights")
    shards = []
    for rank in range(saved_world_size):
        f = path / _TAG / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        if not f.is_file():
            raise GanscaleError(f"{path}: optimizer partition {f.name} missing (checkpoint incomplete)")
        # DeepSpeed's own files are pickles (its loader does the same); ours never are.
        shards.append(torch.load(f, map_location="cpu", weights_only=False)[OPTIMIZER_STATE_DICT])
    opt._load_global_state(shards[0])
    opt._restore_elastic_base_optimizer_state(shards)
    opt._restore_from_elastic_fp32_weights(shards)
    opt._link_all_hp_params()
