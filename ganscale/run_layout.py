"""The run folder's layout: what a run writes where, and how its checkpoints are found.

A low-level module (it imports nothing of ganscale but :mod:`ganscale.errors`): the trainer
(:mod:`ganscale.train.checkpoint`, :mod:`ganscale.train.run_folder`), the exporter
(:mod:`ganscale.outputs.export`) and the sweep runner (:mod:`ganscale.sweep.local`) all read
the folder through it instead of through each other.

    RUN/
      config.yaml            the config the run was started with
      metrics.jsonl          one JSON row per logged step, eval and event
      checkpoints/step-XXXXXXX/   resumable checkpoints (state.json written last)
      samples/step-XXXXXXX.png    sample grids of the EMA generator
      generator.safetensors + generator.json   the exported EMA generator
      best/                  the best generator so far (eval.keep_best)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ganscale.errors import GanscaleError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
SAMPLES = "samples"
STATE = "state.json"
"""A checkpoint's counters; written last, so a folder without it is incomplete."""

RUN_ENTRIES = (
    CHECKPOINTS,
    METRICS,
    SAMPLES,
    "best",
    "generator.safetensors",
    "generator.json",
    "generator.onnx",
    "losses.png",
    "eval.json",
    "wandb",
    "tensorboard",
    CONFIG,
)
"""What a run writes into its folder (``--overwrite`` removes these, and nothing else)."""
RUN_GLOBS = ("confusion-*.png",)  # `ganscale eval RUN`'s confusion matrices

FORMAT_VERSION = 2
"""Version 2: the noise streams of :mod:`ganscale.seeding` (packed counters). A version-1
checkpoint would resume with other noise than it was trained with, so it is refused."""
_STEP_RE = re.compile(r"^step-(\d{7,})$")


@dataclass
class CheckpointRef:
    path: Path
    step: int


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS


def list_checkpoints(run_dir: Path) -> list[CheckpointRef]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    refs = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / STATE).is_file():
            refs.append(CheckpointRef(p, int(m.group(1))))
    return sorted(refs, key=lambda r: r.step)


def latest_checkpoint(run_dir: Path) -> CheckpointRef | None:
    refs = list_checkpoints(run_dir)
    return refs[-1] if refs else None


def read_state(folder: Path) -> dict[str, Any]:
    """A checkpoint's ``state.json``, refused (one line) when unreadable or of another format."""
    try:
        state = json.loads((folder / STATE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GanscaleError(
            f"checkpoint {folder}: unreadable state.json ({e}); resume from an earlier checkpoint"
        ) from None
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != FORMAT_VERSION:
        raise GanscaleError(version_message(folder, version))
    return state


def version_message(folder: Path, version: Any) -> str:
    """Why a checkpoint of another format version is refused, and what to do (one line)."""
    if isinstance(version, int) and not isinstance(version, bool) and 0 < version < FORMAT_VERSION:
        return (
            f"checkpoint {folder}: format version {version} was written by an older ganscale whose "
            f"noise streams differ (this one reads version {FORMAT_VERSION}); resume it with the "
            f"ganscale that wrote it, or start fresh with --overwrite or a new --out"
        )
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        return (
            f"checkpoint {folder}: format version {version} is newer than this ganscale reads "
            f"({FORMAT_VERSION}); upgrade ganscale to resume it"
        )
    return (
        f"checkpoint {folder}: format version {version!r} is not one ganscale wrote (this one "
        f"reads {FORMAT_VERSION}); resume from another checkpoint"
    )
