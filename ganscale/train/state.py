"""The resumable training state and its checkpoint: what is saved, by whom, in which order.

:mod:`ganscale.train.checkpoint` owns the atomic folder protocol (staging, commit, keep-K);
this module decides what goes in: both networks and optimizers (the runtime writes them),
the EMA generator, the config, the generator's metadata, the counters of :class:`TrainState`,
every rank's data position, the fp16 scalers and the state of other stateful parts (the
training-time evaluator's best value).
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ganscale.config import Config, save_config
from ganscale.errors import GanscaleError
from ganscale.runtime import Runtime
from ganscale.seeding import NOISE_SCHEME
from ganscale.train import checkpoint as ckpt
from ganscale.train.ema import EMA


@dataclass
class TrainState:
    """The counters a resume continues from."""

    step: int = 0
    images_seen: int = 0
    lr_factor: float = 1.0
    skipped_steps: int = 0
    rollbacks: int = 0


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Checkpointer:
    """Writes and reads checkpoints of one run (every call is collective: call on all ranks).

    ``stateful`` maps a key of ``state.json`` to an object with ``state_dict``/
    ``load_state_dict`` (e.g. ``{"eval": hook}``); a None value is saved as null. Those are
    the main process's; ``per_rank`` parts differ between ranks (ADA's statistics, LeCam's
    EMAs), so every rank's ``state_dict`` is gathered into ``state.json["per_rank"]`` and each
    rank loads its own (rank 0's after a change of process count).
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        rt: Runtime,
        ema: EMA,
        data: Stateful,
        meta: dict[str, Any],
        stateful: dict[str, Stateful | None] | None = None,
        per_rank: dict[str, Stateful | None] | None = None,
    ) -> None:
        self.cfg, self.run_dir, self.rt, self.ema, self.data, self.meta = cfg, run_dir, rt, ema, data, meta
        self.stateful = dict(stateful or {})
        self.per_rank = {k: s for k, s in (per_rank or {}).items() if s is not None}
        self._rank_states: list[dict[str, Any]] = []

    def latest(self) -> ckpt.CheckpointRef | None:
        """The run's latest complete checkpoint as the main process sees it, on every rank."""
        if self.rt.world_size == 1:
            return ckpt.latest_checkpoint(self.run_dir)
        return self.rt.all_gather_object(ckpt.latest_checkpoint(self.run_dir) if self.rt.is_main else None)[0]

    def is_latest(self, step: int) -> bool:
        """Is the run's latest checkpoint the one of ``step``? (agreed, like every answer here)"""
        latest = self.latest()
        return latest is not None and latest.step == step

    def save(self, state: TrainState) -> None:
        """Checkpoint ``state`` (no-op when the latest checkpoint is already this step).

        Each stage (staging folder, the files, the commit) ends in one gather of the ranks'
        errors, so a failure on any rank takes every rank down the same path
        (checkpoint.on_disk_full) instead of leaving the others in a collective."""
        rt, step = self.rt, state.step
        if self.is_latest(step):
            return
        data_states = rt.all_gather_object(self.data.state_dict())
        if self.per_rank:  # same keys on every rank (same config): a collective on all or none
            self._rank_states = rt.all_gather_object({k: s.state_dict() for k, s in self.per_rank.items()})
        staging = ckpt.staging_dir(self.run_dir, step)
        error = self._agreed_error(lambda: ckpt.begin(self.run_dir, step) if rt.is_main else None, staging)
        if error is None:
            error = self._agreed_error(lambda: self._write_files(staging), staging)
        if error is None:
            error = self._agreed_error(lambda: self._commit(state, data_states), staging)
        if error is None:
            return
        if rt.is_main:
            ckpt.abort(self.run_dir, step)
        if self.cfg.checkpoint.on_disk_full == "continue":
            warnings.warn(error + " (continuing: checkpoint.on_disk_full=continue)", stacklevel=2)
            return
        raise ckpt.CheckpointWriteError(error)

    def _agreed_error(self, write: Any, staging: Path) -> str | None:
        """Run one stage of a save; the first rank's error message (None: all went well)."""
        error = None
        try:
            write()
        except ckpt.WRITE_ERRORS as e:  # on a full disk torch.save raises RuntimeError, not OSError
            error = str(ckpt.disk_error(e, staging))
        errors = self.rt.all_gather_object(error) if self.rt.world_size > 1 else [error]
        return next((e for e in errors if e), None)

    def _write_files(self, folder: Path) -> None:
        from safetensors.torch import save_file

        self.rt.save_training_state(folder)
        if self.rt.is_main:
            save_file(
                {k: v.contiguous() for k, v in self.ema.state_dict().items()},
                str(folder / "G_ema.safetensors"),
            )
            save_config(self.cfg, folder / "config.yaml")
            ckpt.write_json(folder / "generator.json", self.meta)

    def _commit(self, state: TrainState, data_states: list[Any]) -> None:
        rt = self.rt
        if not rt.is_main:
            return
        record = {
            "step": state.step,
            "images_seen": state.images_seen,
            "lr_factor": state.lr_factor,
            "skipped_steps": state.skipped_steps,
            "rollbacks": state.rollbacks,
            "world_size": rt.world_size,
            "noise": NOISE_SCHEME,
            "data": data_states,
            "scalers": rt.scaler_state(),
        }
        record |= {k: (s.state_dict() if s else None) for k, s in self.stateful.items()}
        if self.per_rank:
            record["per_rank"] = self._rank_states
        ckpt.commit(self.run_dir, state.step, record, self.cfg.checkpoint.keep)

    def restore(self, folder: Path, state: TrainState) -> None:
        """Load the checkpoint in ``folder`` into the runtime, the EMA, the data and ``state``."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        saved: dict[str, Any] = {}
        error = None
        try:
            saved = ckpt.read_state(folder)
            self.rt.load_training_state(folder)
            self.ema.load_state_dict(load_file(str(folder / "G_ema.safetensors"), device=str(self.rt.device)))
        except GanscaleError as e:
            error = str(e)
        except (OSError, RuntimeError, ValueError, pickle.UnpicklingError, SafetensorError) as e:
            # e.g. an optimizer file whose pickle would run code: weights_only refuses it
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            error = (
                f"checkpoint {folder} cannot be loaded ({type(e).__name__}: {first}); "
                f"resume from another checkpoint"
            )
        # a rank that cannot load stops every rank (none trains on alone)
        errors = self.rt.all_gather_object(error) if self.rt.world_size > 1 else [error]
        error = next((e for e in errors if e), None)
        if error is not None:
            raise GanscaleError(error)
        self.rt.load_scaler_state(saved.get("scalers", {}))
        state.step = saved["step"]
        state.images_seen = saved["images_seen"]
        state.skipped_steps = saved.get("skipped_steps", 0)
        state.rollbacks = saved.get("rollbacks", 0)
        state.lr_factor = saved.get("lr_factor", 1.0)
        for key, part in self.stateful.items():
            if part is not None and saved.get(key):
                part.load_state_dict(saved[key])
        ranks = saved.get("per_rank") or [{}]
        mine = ranks[self.rt.rank] if len(ranks) == self.rt.world_size else ranks[0]
        for key, part in self.per_rank.items():
            if mine.get(key):
                part.load_state_dict(mine[key])
        self.data.load_state_dict(data_position(saved["data"], self.rt.rank, self.rt.world_size))


def data_position(states: list[dict], rank: int, world_size: int) -> dict:
    """This rank's data position; when the process count changed (elastic resume), rank 0's
    epoch with its batch index rescaled so the same fraction of the epoch is done."""
    if len(states) == world_size:
        return states[rank]
    first = dict(states[0])
    first["batch"] = int(first.get("batch", 0) * len(states) / world_size)
    return first
