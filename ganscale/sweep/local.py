"""Run sweep cells one after another: skip the finished, resume the unfinished, then evaluate.

Every training and evaluation is a child process (``python -m ganscale train|eval``) in its
own session, as on Slurm: a crashed cell cannot take the sweep's process with it, and a
data-loader worker that outlives its trainer (seen before) is reaped with its group.

A cell is finished when its latest complete checkpoint reached ``train.max_steps`` (or
``train.max_images``), or when the spec's ``minutes`` budget stopped it (RUN/sweep-cell.json
says so), and, when the spec asks for evaluation, when RUN/eval.json exists for the same n.

Signals: SIGTERM, SIGUSR1 and Ctrl-C reach the runner, which forwards SIGUSR1 to the running
child's group (the trainer checkpoints and exits; a launcher, started with USR1 ignored, lets
its trainers do so) and starts no further cell. The next run resumes that cell.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ganscale.config import load_config
from ganscale.errors import GanscaleError
from ganscale.run_layout import latest_checkpoint, read_state
from ganscale.sweep.spec import Cell, SweepSpec

CELL_FILE = "sweep-cell.json"
STOP_GRACE_S = 120.0
"""How long a trainer gets to checkpoint after SIGUSR1 before it is killed."""
State = Literal["done", "eval", "resume", "new"]
Outcome = Literal["skipped", "trained", "evaluated", "stopped", "failed"]


@dataclass(frozen=True)
class CellStatus:
    state: State
    """done: nothing to do; eval: trained, evaluation missing; resume/new: train."""
    step: int
    """Step of the latest checkpoint (0 without one)."""


def cell_status(spec: SweepSpec, cell: Cell) -> CellStatus:
    """What the cell still needs, read from its run folder."""
    run = spec.out / cell.folder
    ref = latest_checkpoint(run)
    if ref is None:
        return CellStatus("new", 0)
    tc = load_config(spec.base, cell.train_sets(spec.sets)).train
    state = read_state(ref.path)
    reached = (tc.max_steps > 0 and state["step"] >= tc.max_steps) or (
        tc.max_images > 0 and state["images_seen"] >= tc.max_images
    )
    info = read_cell_file(run)
    budget_spent = (
        spec.minutes is not None and info.get("stopped_by_budget") and info.get("minutes") == spec.minutes
    )
    if not (reached or budget_spent):
        return CellStatus("resume", ref.step)
    if spec.eval_n is not None and eval_n_of(run) != spec.eval_n:
        return CellStatus("eval", ref.step)
    return CellStatus("done", ref.step)


def eval_n_of(run: Path) -> int | None:
    """The n of RUN/eval.json, None when there is none (or it is unreadable)."""
    try:
        return int(json.loads((run / "eval.json").read_text())["n"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_cell_file(run: Path) -> dict[str, Any]:
    try:
        return json.loads((run / CELL_FILE).read_text())
    except (OSError, ValueError):
        return {}


class Forwarder:
    """While a child runs, SIGTERM/SIGUSR1/SIGINT to this process become SIGUSR1 to its group."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self.child: subprocess.Popen[bytes] | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        if self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.child.pid, signal.SIGUSR1)

    @contextlib.contextmanager
    def installed(self) -> Iterator[Forwarder]:
        old = {}
        for sig in self.SIGNALS:
            with contextlib.suppress(ValueError):  # off the main thread: no forwarding
                old[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


def _ignore_usr1() -> None:  # in the child, before exec: an ignored signal stays ignored
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def run_child(cmd: list[str], fwd: Forwarder, minutes: float | None = None) -> tuple[int, bool]:
    """Run ``cmd`` in its own session; (exit code, stopped by the time budget)."""
    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_ignore_usr1)
    fwd.child = proc
    budget = False
    try:
        try:
            proc.wait(timeout=minutes * 60 if minutes is not None else None)
        except subprocess.TimeoutExpired:
            budget = True
            print(f"[sweep] budget of {minutes:g} min reached: the trainer checkpoints and stops", flush=True)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGUSR1)
        end = time.monotonic() + STOP_GRACE_S
        while proc.poll() is None:  # a forwarded signal interrupts wait(): wait on
            try:
                proc.wait(timeout=max(end - time.monotonic(), 0.1) if budget else None)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        fwd.child = None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group (data-loader workers)
    return proc.returncode, budget


def ganscale_prefix(nproc: int = 1) -> list[str]:
    """How to start `ganscale`: this python, or `accelerate launch` for several processes."""
    if nproc <= 1:
        return [sys.executable, "-m", "ganscale"]
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(nproc), "--multi_gpu",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ganscale",
    ]  # fmt: skip


def train_command(spec: SweepSpec, cell: Cell, resume: bool, nproc: int = 1) -> list[str]:
    cmd = [*ganscale_prefix(nproc), "train", str(spec.base), "--out", str(spec.out / cell.folder)]
    for s in cell.train_sets(spec.sets):
        cmd += ["--set", s]
    # A cell without a checkpoint starts over: what an interrupted first attempt left (metrics
    # rows before its first checkpoint) belongs to no resumable run, and `train` refuses to mix.
    return [*cmd, "--resume", "latest"] if resume else [*cmd, "--overwrite"]


def run_cell(
    spec: SweepSpec, cell: Cell, fwd: Forwarder, nproc: int = 1, log: Callable[[str], None] = print
) -> Outcome:
    """Bring one cell to done: train (new or resumed), then evaluate if the spec asks."""
    run = spec.out / cell.folder
    status = cell_status(spec, cell)
    if status.state == "done":
        log(f"[sweep] {cell.folder}: done (step {status.step}), skipped")
        return "skipped"
    if status.state in ("new", "resume"):
        resume = status.state == "resume"
        cmd = train_command(spec, cell, resume, nproc)
        log(f"[sweep] {cell.folder}: " + (f"resume from step {status.step}" if resume else "train"))
        log("$ " + " ".join(cmd))
        t0 = time.perf_counter()
        code, budget = run_child(cmd, fwd, spec.minutes)
        seconds = time.perf_counter() - t0
        if code != 0 and not budget and fwd.received is None:
            log(f"[sweep] {cell.folder}: training failed with exit code {code}")
            return "failed"
        info = read_cell_file(run) | {
            "name": cell.name,
            "seed": cell.seed,
            "overrides": list(cell.overrides),
            "command": cmd,
            "minutes": spec.minutes,
            "stopped_by_budget": budget,
        }
        info["train_seconds"] = round(info.get("train_seconds", 0.0) * resume + seconds, 1)
        if run.is_dir():
            (run / CELL_FILE).write_text(json.dumps(info, indent=1) + "\n")
        if fwd.received is not None or cell_status(spec, cell).state in ("new", "resume"):
            log(f"[sweep] {cell.folder}: stopped before the end; the next run resumes it")
            return "stopped"
    if spec.eval_n is None:
        return "trained"
    cmd = [sys.executable, "-m", "ganscale", "eval", str(run), "--n", str(spec.eval_n)]
    if spec.eval_corpus is not None:
        cmd += ["--corpus", str(spec.eval_corpus)]
    log("$ " + " ".join(cmd))
    code, _ = run_child(cmd, fwd)
    if code != 0:
        log(f"[sweep] {cell.folder}: eval failed with exit code {code}")
        return "stopped" if fwd.received is not None else "failed"
    return "evaluated"


def run_local(spec: SweepSpec, cells: list[Cell], log: Callable[[str], None] = print) -> dict[str, int]:
    """Every cell in order; counts of each outcome. Raises after the loop if a cell failed."""
    counts: dict[str, int] = {}
    failed: list[str] = []
    fwd = Forwarder()
    with fwd.installed():
        for i, cell in enumerate(cells):
            if fwd.received is not None:
                log(f"[sweep] signal {fwd.received}: stopping before {cell.folder}")
                break
            log(f"[sweep] cell {i + 1}/{len(cells)}")
            outcome = run_cell(spec, cell, fwd, log=log)
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome == "failed":
                failed.append(cell.folder)
    log("[sweep] " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if failed:
        raise GanscaleError(f"sweep {spec.out}: {len(failed)} cell(s) failed: {', '.join(failed)}")
    return counts
