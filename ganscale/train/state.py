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
    ``load_state_dict`` (e.g. ``{"eval": hook}``); a None value is saved as null.
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
    ) -> None:
        self.cfg, self.run_dir, self.rt, self.ema, self.data, self.meta = cfg, run_dir, rt, ema, data, meta
        self.stateful = dict(stateful or {})

    def is_latest(self, step: int) -> bool:
        """Is the run's latest checkpoint the one of ``step``?"""
        latest = ckpt.latest_checkpoint(self.run_dir)
        return latest is not None and latest.step == step

    def save(self, state: TrainState) -> None:
        """Checkpoint ``state`` (no-op when the latest checkpoint is already this step)."""
        from safetensors.torch import save_file

        rt, step = self.rt, state.step
        if self.is_latest(step):
            return
        data_states = rt.all_gather_object(self.data.state_dict())
        error = None
        try:
            if rt.is_main:
                ckpt.begin(self.run_dir, step)
            rt.barrier()
            folder = ckpt.staging_dir(self.run_dir, step)
            rt.save_training_state(folder)
            if rt.is_main:
                save_file(
                    {k: v.contiguous() for k, v in self.ema.state_dict().items()},
                    str(folder / "G_ema.safetensors"),
                )
                save_config(self.cfg, folder / "config.yaml")
                ckpt.write_json(folder / "generator.json", self.meta)
        except ckpt.WRITE_ERRORS as e:  # on a full disk torch.save raises RuntimeError, not OSError
            error = ckpt.disk_error(e, ckpt.staging_dir(self.run_dir, step))
        errors = rt.all_gather_object(str(error) if error else None)
        if any(errors):
            if rt.is_main:
                ckpt.abort(self.run_dir, step)
            message = next(e for e in errors if e)
            if self.cfg.checkpoint.on_disk_full == "continue":
                warnings.warn(message + " (continuing: checkpoint.on_disk_full=continue)", stacklevel=2)
                return
            raise ckpt.CheckpointWriteError(message)
        if rt.is_main:
            record = {
                "step": step,
                "images_seen": state.images_seen,
                "lr_factor": state.lr_factor,
                "skipped_steps": state.skipped_steps,
                "rollbacks": state.rollbacks,
                "world_size": rt.world_size,
                "data": data_states,
                "scalers": rt.scaler_state(),
            }
            record |= {k: (s.state_dict() if s else None) for k, s in self.stateful.items()}
            try:
                ckpt.commit(self.run_dir, step, record, self.cfg.checkpoint.keep)
            except OSError as e:
                ckpt.abort(self.run_dir, step)
                raise ckpt.disk_error(e, ckpt.staging_dir(self.run_dir, step)) from None
        rt.barrier()

    def restore(self, folder: Path, state: TrainState) -> None:
        """Load the checkpoint in ``folder`` into the runtime, the EMA, the data and ``state``."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        saved = ckpt.read_state(folder)
        try:
            self.rt.load_training_state(folder)
            self.ema.load_state_dict(load_file(str(folder / "G_ema.safetensors"), device=str(self.rt.device)))
        except (OSError, RuntimeError, ValueError, pickle.UnpicklingError, SafetensorError) as e:
            # e.g. an optimizer file whose pickle would run code: weights_only refuses it
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise GanscaleError(
                f"checkpoint {folder} cannot be loaded ({type(e).__name__}: {first}); "
                f"resume from another checkpoint"
            ) from e
        self.rt.load_scaler_state(saved.get("scalers", {}))
        state.step = saved["step"]
        state.images_seen = saved["images_seen"]
        state.skipped_steps = saved.get("skipped_steps", 0)
        state.rollbacks = saved.get("rollbacks", 0)
        state.lr_factor = saved.get("lr_factor", 1.0)
        for key, part in self.stateful.items():
            if part is not None and saved.get(key):
                part.load_state_dict(saved[key])
        self.data.load_state_dict(data_position(saved["data"], self.rt.rank, self.rt.world_size))


def data_position(states: list[dict], rank: int, world_size: int) -> dict:
    """This rank's data position; when the process count changed (elastic resume), rank 0's
    epoch with its batch index rescaled so the same fraction of the epoch is done."""
    if len(states) == world_size:
        return states[rank]
    first = dict(states[0])
    first["batch"] = int(first.get("batch", 0) * len(states) / world_size)
    return first
