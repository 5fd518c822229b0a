"""Metrics to ``RUN/metrics.jsonl`` and to an experiment tracker (W&B, TensorBoard or none).

Only the main process gets a real tracker; other ranks get :class:`NullTracker`, so the
loop never asks ``if rank == 0``. A tracker failure (no network, bad key, full disk) warns
once and turns the tracker off: it never stops training. W&B's mode is decided from the
environment by :func:`ganscale.runtime.env.wandb_mode` (offline unless an API key is
configured, so nothing needs an account) and passed in; this module reads no environment.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np


class Tracker:
    """Null object: every method is a no-op."""

    run_path: Path | None = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_image(self, key: str, image: np.ndarray, step: int, caption: str = "") -> None:
        pass

    def alert(self, title: str, text: str) -> None:
        pass

    def finish(self) -> None:
        pass


NullTracker = Tracker


class _Guarded(Tracker):
    """Runs tracker calls, and on the first failure warns once and stops calling."""

    name = "tracker"

    def __init__(self) -> None:
        self.broken = False

    def _guard(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self.broken:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a tracker must never stop training
            self.broken = True
            first = (str(e).strip().splitlines() or [""])[0][:300]  # e.g. pydantic's multi-line errors
            warnings.warn(
                f"{self.name} failed ({type(e).__name__}: {first}); tracking is off for the rest "
                f"of this run, metrics.jsonl continues",
                stacklevel=3,
            )


class WandbTracker(_Guarded):
    name = "wandb"

    def __init__(self, run_dir: Path, project: str, name: str, config: dict[str, Any], mode: str) -> None:
        """``mode``: W&B's ``online``, ``offline`` or ``disabled`` (see module docstring)."""
        super().__init__()
        self.run = None
        self._guard(self._init, run_dir, project, name, config, mode)

    def _init(self, run_dir: Path, project: str, name: str, config: dict[str, Any], mode: str) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=project,
            name=name,
            dir=str(run_dir),
            config=config,
            mode=mode,
            resume="allow",
            id=_stable_run_id(run_dir),
            settings=wandb.Settings(silent=True),
        )
        self.run_path = Path(self.run.dir).parent if self.run is not None else None

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self._guard(self.run.log, metrics, step=step)

    def log_image(self, key: str, image: np.ndarray, step: int, caption: str = "") -> None:
        if self.run is not None:
            self._guard(lambda: self.run.log({key: self.wandb.Image(image, caption=caption)}, step=step))

    def alert(self, title: str, text: str) -> None:
        if self.run is not None:
            self._guard(lambda: self.run.summary.update({f"warning/{title}": text}))

    def finish(self) -> None:
        if self.run is not None:
            self._guard(self.run.finish)


class TensorBoardTracker(_Guarded):
    name = "tensorboard"

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.writer = None
        self._guard(self._init, run_dir)

    def _init(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.run_path = run_dir / "tensorboard"

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.writer is not None:
            self._guard(lambda: [self.writer.add_scalar(k, v, step) for k, v in metrics.items()])

    def log_image(self, key: str, image: np.ndarray, step: int, caption: str = "") -> None:
        if self.writer is not None:
            self._guard(self.writer.add_image, key, image, step, dataformats="HWC")

    def alert(self, title: str, text: str) -> None:
        if self.writer is not None:
            self._guard(self.writer.add_text, f"warning/{title}", text)

    def finish(self) -> None:
        if self.writer is not None:
            self._guard(self.writer.close)


def _stable_run_id(run_dir: Path) -> str:
    """One W&B run per run folder, so a resumed run continues the same W&B run."""
    import hashlib

    return hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]


def build_tracker(
    kind: str,
    run_dir: Path,
    project: str,
    name: str,
    config: dict[str, Any],
    is_main: bool,
    wandb_mode: str,
) -> Tracker:
    """The tracker ``log.tracker`` names on the main process, :class:`NullTracker` elsewhere.

    ``wandb_mode``: from :func:`ganscale.runtime.env.wandb_mode`, decided by the caller.
    """
    if not is_main or kind == "none":
        return NullTracker()
    if kind == "wandb":
        return WandbTracker(run_dir, project, name, config, wandb_mode)
    return TensorBoardTracker(run_dir)


class MetricsFile:
    """Appends one JSON object per log step to ``RUN/metrics.jsonl`` (main process only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._f = open(path, "a") if path is not None else None  # noqa: SIM115 - held open for the run

    def write(self, record: dict[str, Any]) -> None:
        if self._f is None:
            return
        clean = {
            k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in record.items()
        }
        self._f.write(json.dumps(clean) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (a torn last line from a kill is ignored)."""
    out = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
