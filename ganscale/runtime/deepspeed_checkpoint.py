"""Saving and loading one DeepSpeed engine, including ZeRO-1/2 resume on another process count.

Each engine saves into its own folder (``ds_G``, ``ds_D``: a shared folder's ``latest`` file
would be overwritten), every rank writing its optimizer partition, under the tag
:data:`TAG`. ZeRO-1/2 partitions are saved "elastic" (``ds_config`` asks for it), so
:func:`load_engine` can merge and re-split them when the process count changed. The elastic
path uses DeepSpeed internals (checked with 0.19.8); a missing one is a clear error, never a
silently fresh optimizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ganscale.errors import GanscaleError

TAG = "state"
"""DeepSpeed checkpoint tag inside ``ds_G/`` and ``ds_D/``."""


def save_engine(engine: Any, folder: Path) -> None:
    """Save one engine's module, optimizer partition and loss scaler into ``folder`` (all ranks)."""
    _expose_adam_step(engine)
    engine.save_checkpoint(str(folder), tag=TAG)


def load_engine(engine: Any, folder: Path, saved_world_size: int, world_size: int) -> None:
    """Load what :func:`save_engine` wrote on ``saved_world_size`` processes into this run."""
    if engine.zero_optimization() and saved_world_size != world_size:
        _load_zero12_elastic(engine, folder, saved_world_size)
        return
    load_path, _ = engine.load_checkpoint(
        str(folder), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if load_path is None:
        raise GanscaleError(f"checkpoint {folder.parent}: DeepSpeed could not load {folder}")


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
    through the engine (module only), then the optimizer's own elastic restore steps.
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
        tag=TAG,
        load_module_only=True,
        load_optimizer_states=False,
        load_lr_scheduler_states=False,
    )
    if load_path is None:
        raise GanscaleError(f"{path}: DeepSpeed could not load the module weights")
    shards = []
    for rank in range(saved_world_size):
        f = path / TAG / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        if not f.is_file():
            raise GanscaleError(f"{path}: optimizer partition {f.name} missing (checkpoint incomplete)")
        # DeepSpeed's own files are pickles (its loader does the same); ours never are.
        shards.append(torch.load(f, map_location="cpu", weights_only=False)[OPTIMIZER_STATE_DICT])
    opt._load_global_state(shards[0])
    opt._restore_elastic_base_optimizer_state(shards)
    opt._restore_from_elastic_fp32_weights(shards)
    opt._link_all_hp_params()
