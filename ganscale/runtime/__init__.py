"""Everything that knows about processes, devices and precision: the :class:`Runtime`
interface (steps, collectives, state), its two backends, and the launcher's environment."""

from __future__ import annotations

import os
import warnings

from ganscale.config import Config
from ganscale.errors import GanscaleError
from ganscale.runtime.base import NETS, Runtime, finite

__all__ = ["NETS", "Runtime", "build_runtime", "finite"]


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
            from ganscale.runtime.deepspeed_backend import DeepSpeedRuntime
        except ImportError as e:
            raise GanscaleError(
                f"backend: deepspeed needs DeepSpeed ({e}); pip install 'ganscale[deepspeed]'"
            ) from e
        return DeepSpeedRuntime(cfg)
    from ganscale.runtime.accelerate_backend import AccelerateRuntime

    return AccelerateRuntime(cfg)
