"""The DeepSpeed config of one engine, built from the ganscale config and its :class:`BatchPlan`.

The ganscale config is the one source of truth: ``deepspeed.config`` (a DeepSpeed JSON file)
is merged over the built dict, may add keys of its own (``overlap_comm``, bucket sizes, ...),
and may repeat a value ganscale owns (or write ``"auto"``) but never contradict it.
Pure dict work: no DeepSpeed import.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ganscale.config import Config
from ganscale.errors import ConfigError
from ganscale.runtime.base import AMP_DTYPES, BatchPlan

# Keys the ganscale config owns; a DeepSpeed JSON may only repeat them (or say "auto").
_OWNED = {
    "train_micro_batch_size_per_gpu": "train.batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
    "train_batch_size": "train.batch_size x grad_accum x processes",
    "stage": "deepspeed.zero_stage",
    "enabled": "train.mixed_precision",
    "dtype": "train.mixed_precision",
}


DEFAULT_BUCKET = 500_000_000
"""DeepSpeed's default ZeRO-1/2 reduce/all-gather bucket (elements)."""


def bucket_elements(n_params: int) -> int:
    """ZeRO-1/2 bucket size for a network of ``n_params`` parameters: the whole network's
    gradients in one bucket (one reduction per backward, as with the default for any network
    under 5e8 parameters), but never more than the default. DeepSpeed allocates its buckets
    up front: at 5e8 elements ~2 GB per engine for networks of a few million parameters.
    Rounded up to a multiple of 1024 (DeepSpeed asserts an even all-gather bucket)."""
    return int(min(DEFAULT_BUCKET, -(-max(n_params, 1) // 1024) * 1024))


def ds_config(cfg: Config, plan: BatchPlan, n_params: int | None = None) -> dict[str, Any]:
    """The DeepSpeed config of one engine for ``plan`` (batch, accumulation, processes);
    ``n_params``: the engine's network size, for the ZeRO-1/2 bucket sizes (:func:`bucket_elements`).

    ``launch/deepspeed/zero{1,2}.json`` show the same dicts (with ``"auto"`` where a value
    comes from the ganscale config); a test keeps them in step. ``deepspeed.config`` (a JSON
    file) is merged over this.
    """
    stage = cfg.deepspeed.zero_stage
    zero: dict[str, Any] = {"stage": stage}
    if stage in (1, 2):
        # Optimizer partitions saved so that a checkpoint loads on another process count.
        zero["elastic_checkpoint"] = True
        if n_params is not None:
            zero["reduce_bucket_size"] = zero["allgather_bucket_size"] = bucket_elements(n_params)
    out: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": plan.batch_size,
        "gradient_accumulation_steps": plan.grad_accum,
        "train_batch_size": plan.global_batch,
        # Our optimizer is torch's Adam (foreach/fused), not DeepSpeed's CPU/fused Adam ops,
        # which need compiled extensions.
        "zero_allow_untested_optimizer": True,
        "zero_optimization": zero,
        "gradient_clipping": 0.0,
        "wall_clock_breakdown": False,
    }
    dtype = AMP_DTYPES.get(cfg.train.mixed_precision)
    if dtype is not None:
        # DeepSpeed names torch dtypes without the "torch." prefix: "bfloat16", "float16".
        out["torch_autocast"] = {"enabled": True, "dtype": str(dtype).removeprefix("torch.")}
    if cfg.deepspeed.config:
        out = merge_user_config(out, Path(cfg.deepspeed.config))
    return out


def merge_user_config(built: dict[str, Any], path: Path) -> dict[str, Any]:
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
