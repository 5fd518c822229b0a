"""Helpers for the fault drills (tests/test_faults_*.py): real `ganscale train` processes,
full checkpoint verification, and the table of drill numbers printed by ``pytest -m faults``.

Faults are injected from outside (signals, kill -9, a real full tmpfs) or into ganscale's own
objects (a forward hook on G); no test mocks Accelerate, W&B or WebDataset.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from ganscale.train.checkpoint import list_checkpoints, read_state

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"

# One row per drill: name -> {"runs", "ok", "outcome", numbers...}; printed at session end.
RESULTS: dict[str, dict] = {}


def record(drill: str, runs: int, ok: int, outcome: str, **numbers: float | str) -> None:
    RESULTS[drill] = {"runs": runs, "ok": ok, "outcome": outcome, **numbers}
    out = os.environ.get("GANSCALE_DRILL_RESULTS")  # optional: a JSON copy for docs/reliability.md
    if out:
        Path(out).write_text(json.dumps(RESULTS, indent=1))


class FuzzTally:
    """What a fuzz test's examples did, counted, so its summary can state it and fail on it.

    Each example runs inside ``with tally.example() as seen:`` and ends by counting its outcome
    (``seen["refused"] += 1``: a clear one-line refusal; ``seen["ok"] += 1``: accepted). An
    example that raises anything else, or fails an assertion, leaves without an outcome: that
    is a crash, and :meth:`summary` fails on it (the fuzz test itself has failed already)."""

    def __init__(self) -> None:
        self.started = 0
        self.outcomes: Counter[str] = Counter()

    @contextmanager
    def example(self) -> Iterator[Counter[str]]:
        self.started += 1
        yield self.outcomes

    @property
    def crashes(self) -> int:
        return self.started - sum(self.outcomes.values())

    def summary(self, drill: str, detail: str, at_least: int = 1) -> None:
        """Record the drill row and assert: the fuzz ran (``at_least`` examples) and nothing crashed.
        Skips when the fuzz tests were not selected in this session (``-k summary``)."""
        import pytest

        if self.started == 0:
            pytest.skip(f"{drill}: its fuzz tests did not run in this session")
        record(drill, self.started, self.started - self.crashes, f"{detail}: {self.crashes} crashes")
        assert self.crashes == 0, f"{drill}: {self.crashes} of {self.started} fuzzed inputs crashed"
        assert self.started >= at_least, f"{drill}: only {self.started} fuzzed inputs ran"


def table() -> list[str]:
    lines = [f"{'drill':<46} {'runs':>4} {'ok':>4}  outcome / numbers"]
    for name, r in RESULTS.items():
        nums = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("runs", "ok", "outcome"))
        nums = " ".join(nums.split())  # one line per drill
        extra = f" [{nums}]" if nums else ""
        lines.append(f"{name:<46} {r['runs']:>4} {r['ok']:>4}  {r['outcome']}{extra}")
    return lines


# --------------------------------------------------------------------------- processes


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"})
    e.update(extra)
    return e


def train_args(run: Path, cache: Path, *overrides: str, resume: bool = False) -> list[str]:
    args = [sys.executable, "-m", "ganscale", "train", str(TINY), "--out", str(run)]
    for o in (f"data.cache_dir={cache}", *overrides):
        args += ["--set", o]
    return args + (["--resume", "latest"] if resume else [])


@dataclass
class Proc:
    """A `ganscale train` subprocess whose stdout+stderr go to a log file."""

    args: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=env)

    def __post_init__(self) -> None:
        self.t0 = time.monotonic()
        self._f = open(self.log, "w")  # noqa: SIM115 - closed in wait()
        self.p = subprocess.Popen(self.args, stdout=self._f, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pred, timeout: float = 120.0, poll: float = 0.002) -> bool:
        """Poll ``pred()`` until true (True) or the process exits / time runs out (False)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred():
                return True
            if self.p.poll() is not None:
                return bool(pred())
            time.sleep(poll)
        return False

    def signal(self, sig: int) -> None:
        os.kill(self.p.pid, sig)

    def kill9(self) -> None:
        with _suppress_lookup():
            os.kill(self.p.pid, signal.SIGKILL)

    def wait(self, timeout: float = 180.0) -> int:
        try:
            rc = self.p.wait(timeout=timeout)
        finally:
            if self.p.poll() is None:
                self.kill9()
                self.p.wait()
            self._f.close()
        return rc


class _suppress_lookup:
    def __enter__(self):
        return self

    def __exit__(self, tp, val, tb):
        return tp is ProcessLookupError


def run_cli(*args: str, timeout: float = 180.0, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ganscale", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(**extra_env),
        cwd=REPO,
    )


def cli_ok(*args: object, timeout: float = 300.0) -> subprocess.CompletedProcess:
    """``python -m ganscale ARGS`` that must succeed (the stderr tail on failure)."""
    proc = run_cli(*map(str, args), timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The single ``error: ...`` line of a failed CLI run (asserts exit 2 and no traceback)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


# --------------------------------------------------------------------------- checkpoints


def verify_checkpoint(folder: Path) -> int:
    """Load every file of a checkpoint the way --resume does (safetensors, optimizer with
    weights_only=True, state.json) and check the tensors are finite; returns its step."""
    state = read_state(folder)
    for name in ("G", "D", "G_ema"):
        tensors = load_file(str(folder / f"{name}.safetensors"))
        assert tensors, f"{folder}/{name}.safetensors is empty"
        for k, v in tensors.items():
            if v.is_floating_point():
                assert torch.isfinite(v).all(), f"{folder}/{name}.safetensors:{k} not finite"
    for net in ("G", "D"):
        opt = torch.load(folder / f"optim_{net}.pt", weights_only=True)
        assert opt["state"], f"{folder}/optim_{net}.pt has no state"
    assert json.loads((folder / "generator.json").read_text())["format"] == "ganscale-generator"
    assert (folder / "config.yaml").is_file()
    assert state["step"] == int(folder.name.split("-")[1])
    return state["step"]


def verify_run(run: Path) -> list[int]:
    """Steps of the run's complete checkpoints, each fully loaded."""
    return [verify_checkpoint(ref.path) for ref in list_checkpoints(run)]


def staging(run: Path) -> list[Path]:
    root = run / "checkpoints"
    return sorted(root.glob(".step-*")) if root.is_dir() else []


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]
