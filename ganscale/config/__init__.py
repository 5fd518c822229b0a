"""Typed run configuration: YAML + ``--set a.b=v`` overrides -> nested dataclasses.

Config flows one way: :func:`load_config` reads the YAML, applies overrides, builds the
dataclasses (strictly: an unknown key is an error naming the closest valid key, a value of
the wrong type is an error naming the key and the expected type), validates once in
``__post_init__``, and the result is passed down. Nothing deeper reads files or env vars.

- :mod:`ganscale.config.sections` (what is trained: model, loss, optim, train, augment) and
  :mod:`ganscale.config.run_sections` (data, checkpoint, log, deepspeed, faults, eval): one
  dataclass per YAML section, a docstring per field.
- :mod:`ganscale.config.schema`: the root :class:`Config`, cross-section checks,
  :meth:`Config.grad_accum_for` (the one place gradient accumulation is derived).
- :mod:`ganscale.config.load`: YAML, ``--set``, type coercion, saving.
"""

from ganscale.config.load import (
    apply_override,
    config_from_dict,
    load_config,
    read_yaml,
    save_config,
    valid_keys,
)
from ganscale.config.run_sections import (
    METRIC_DIRECTIONS,
    CheckpointConfig,
    DataConfig,
    DeepSpeedConfig,
    EvalConfig,
    FaultConfig,
    LogConfig,
)
from ganscale.config.schema import Config
from ganscale.config.sections import (
    STUDY_Z_SIGMA,
    AugmentConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from ganscale.errors import ConfigError

__all__ = [
    "METRIC_DIRECTIONS",
    "STUDY_Z_SIGMA",
    "AugmentConfig",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DeepSpeedConfig",
    "EvalConfig",
    "FaultConfig",
    "LogConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "apply_override",
    "config_from_dict",
    "load_config",
    "read_yaml",
    "save_config",
    "valid_keys",
]
