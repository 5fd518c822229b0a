"""Everything that knows about processes, devices, precision and the process environment.

This package owns:

- the :class:`Runtime` interface the trainer calls (autocast, backward, step, no_sync,
  collectives, training state) and the :class:`BatchPlan` it runs (:mod:`.base`);
- its two backends: DDP through Accelerate (:mod:`.accelerate_backend`) and two DeepSpeed
  ZeRO engines (:mod:`.deepspeed_backend`, with :mod:`.deepspeed_config` and
  :mod:`.deepspeed_checkpoint`); nothing outside this package imports DeepSpeed;
- every read of the environment (:mod:`.env`): ranks, launcher variables, the W&B mode,
  the Inception weights path, the peak-TFLOPS override. Other packages receive those
  values as parameters.

The names below load lazily, so ``from ganscale.runtime.env import ...`` (the CLI does it
before parsing arguments) does not import torch.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ganscale.config import Config
    from ganscale.runtime.base import NETS, BatchPlan, Runtime, finite

__all__ = ["NETS", "BatchPlan", "Runtime", "build_runtime", "finite"]


def __getattr__(name: str) -> Any:
    if name in ("NETS", "BatchPlan", "Runtime", "finite"):
        from ganscale.runtime import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_runtime(cfg: Config) -> Runtime:
    """The runtime for ``cfg.backend``."""
    from ganscale.errors import GanscaleError
    from ganscale.runtime.env import launch_env

    # The launcher's settings must agree with the config's, which is the source of truth.
    launch = launch_env()
    if launch.accelerate_use_deepspeed and cfg.backend != "deepspeed":
        raise GanscaleError("this launch uses an Accelerate DeepSpeed config; add --set backend=deepspeed")
    launcher_mp = launch.accelerate_mixed_precision
    if launcher_mp not in ("no", cfg.train.mixed_precision):
        warnings.warn(
            f"the launcher asks for {launcher_mp} but train.mixed_precision is {cfg.train.mixed_precision}; "
            f"add --set train.mixed_precision={launcher_mp} to use it",
            stacklevel=2,
        )
    if cfg.backend == "deepspeed":
        try:
            from ganscale.runtime.deepspeed_backend import DeepSpeedRuntime
        except ImportError as e:
            raise GanscaleError(
                f"backend: deepspeed needs DeepSpeed ({e}); pip install 'ganscale[deepspeed]'"
            ) from e
        return DeepSpeedRuntime(cfg)
    from ganscale.runtime.accelerate_backend import AccelerateRuntime

    return AccelerateRuntime(cfg)
