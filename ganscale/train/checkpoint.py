"""Resumable checkpoints: ``RUN/checkpoints/step-XXXXXXX/``, written atomically, last K kept.

A checkpoint folder is first written under a temporary name (``.step-XXXXXXX.tmp``), every
file flushed to disk, and only then renamed to its final name: a crash or kill mid-write
leaves the previous checkpoint intact and never a folder that looks complete. A folder
counts as complete only if it has its final name and its ``state.json``, which is written
last. Weights are safetensors; optimizer states load with ``weights_only=True``; nothing
in a checkpoint can run code when loaded.

Layout of one checkpoint (Accelerate backend; DeepSpeed adds its engine folders):
    G.safetensors, D.safetensors, G_ema.safetensors, optim_G.pt, optim_D.pt,
    config.yaml, state.json (step, images seen, data positions, loss scalers, lr, version)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ganscale.errors import GanscaleError
from ganscale.run_layout import (  # the folder's names live beneath: re-exported for the trainer
    FORMAT_VERSION,
    CheckpointRef,
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    read_state,
    version_message,
)

__all__ = [
    "FORMAT_VERSION",
    "WRITE_ERRORS",
    "CheckpointRef",
    "CheckpointWriteError",
    "abort",
    "begin",
    "checkpoint_dir",
    "commit",
    "disk_error",
    "final_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "prune",
    "read_state",
    "remove_after",
    "resolve_resume",
    "staging_dir",
    "version_message",
    "write_json",
]


class CheckpointWriteError(GanscaleError):
    """Saving a checkpoint failed (e.g. disk full); the previous checkpoint is intact."""


def resolve_resume(run_dir: Path, resume: str | None) -> Path | None:
    """``None`` -> no resume; ``latest`` -> the newest complete checkpoint (or none yet);
    a path -> that checkpoint folder (must be complete)."""
    if resume is None:
        return None
    if resume in ("latest", "auto", ""):
        ref = latest_checkpoint(run_dir)
        return ref.path if ref else None
    path = Path(resume)
    if (path / "checkpoints").is_dir():  # a run folder
        ref = latest_checkpoint(path)
        if ref is None:
            raise GanscaleError(f"--resume {resume}: run folder has no complete checkpoint")
        return ref.path
    if not (path / "state.json").is_file():
        raise GanscaleError(
            f"--resume {resume}: not a complete checkpoint folder (no state.json); "
            f"use --resume latest or a folder under RUN/checkpoints/"
        )
    return path


def staging_dir(run_dir: Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f".step-{step:07d}.tmp"


def final_dir(run_dir: Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step-{step:07d}"


def begin(run_dir: Path, step: int) -> Path:
    """Create a clean staging folder (main process)."""
    tmp = staging_dir(run_dir, step)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def commit(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write state.json last, fsync, rename staging -> final, prune to the last ``keep``."""
    tmp = staging_dir(run_dir, step)
    state = {"format_version": FORMAT_VERSION, **state}
    write_json(tmp / "state.json", state)
    for f in tmp.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    final = final_dir(run_dir, step)
    if final.exists():  # re-saving the same step (e.g. end right after a periodic save)
        _remove(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    prune(run_dir, keep)
    return final


def abort(run_dir: Path, step: int) -> None:
    """Remove a failed staging folder."""
    shutil.rmtree(staging_dir(run_dir, step), ignore_errors=True)


def prune(run_dir: Path, keep: int) -> None:
    refs = list_checkpoints(run_dir)
    for ref in refs[:-keep] if keep > 0 else []:
        _remove(ref.path)
    for p in checkpoint_dir(run_dir).glob(".step-*"):  # leftovers of killed saves and deletes
        shutil.rmtree(p, ignore_errors=True)


def _remove(folder: Path) -> None:
    """Delete a checkpoint so that a kill mid-delete never leaves a folder that still looks
    complete (state.json kept, weights gone): rename it to a hidden name first (atomic)."""
    trash = folder.with_name(f".{folder.name}.del")
    shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(folder, trash)
    except OSError:
        trash = folder
    shutil.rmtree(trash, ignore_errors=True)


def _write_errors() -> tuple[type[BaseException], ...]:
    """What a checkpoint writer raises when a write fails. On a full disk only our own JSON
    writes raise OSError: torch.save raises RuntimeError ("iostream error", "unexpected pos")
    and safetensors its SafetensorError (seen in the disk-full drill on a real tmpfs)."""
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover
        return (OSError, RuntimeError)
    return (OSError, RuntimeError, SafetensorError)


WRITE_ERRORS = _write_errors()


def disk_error(e: BaseException, path: Path) -> CheckpointWriteError:
    """A one-line error naming the path and the free space."""
    free = None
    try:
        free = shutil.disk_usage(path if path.exists() else path.parent).free
        free_s = f"{free / 2**20:.1f} MiB free"
    except OSError:
        free_s = "free space unknown"
    code = getattr(e, "errno", None)
    detail = (getattr(e, "strerror", None) or str(e) or type(e).__name__).strip().splitlines()[0][:200]
    # a writer that is not OSError carries no errno: a (nearly) empty filesystem tells instead
    full = code == errno.ENOSPC or "No space left" in str(e) or (free is not None and free < 2**20)
    what = "disk full" if full else detail
    return CheckpointWriteError(
        f"checkpoint write to {path} failed: {what} ({free_s}); "
        f"the previous checkpoint is intact; free space or set checkpoint.keep lower"
    )


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_after(run_dir: Path, step: int) -> list[int]:
    """Remove the run's checkpoints later than ``step`` (a resume from an older one abandons
    them: kept, they would be "latest" again). Returns their steps."""
    later = [ref for ref in list_checkpoints(run_dir) if ref.step > step]
    for ref in later:
        _remove(ref.path)
    return [ref.step for ref in later]
