"""Drill: SIGTERM / SIGUSR1 (preemption) -> a checkpoint and a clean exit in bounded time;
a second signal during that save does not corrupt it."""

from __future__ import annotations

import json
import signal
import time

import pytest
from faultlib import Proc, record, staging, train_args, verify_checkpoint, verify_run

from ganscale.train.checkpoint import latest_checkpoint

pytestmark = pytest.mark.faults

# checkpoint.every=0: the only save is the one the signal asks for
OVERRIDES = ("train.max_steps=100000", "checkpoint.every=0", "log.every=1", "log.sample_every=0")
EXIT_BOUND_S = 60.0  # generous: 2 shared cores; the measured times are reported


def _training(run) -> bool:
    m = run / "metrics.jsonl"
    return m.is_file() and any('"loss/d"' in line for line in m.read_text().splitlines())


def _last_step(run) -> int:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return max(r["step"] for r in rows if "loss/d" in r)


def _signal_run(tmp_path, cache, name, signals, *extra):
    run = tmp_path / name
    proc = Proc(train_args(run, cache, *OVERRIDES, *extra), tmp_path / f"{name}.log")
    assert proc.wait_for(lambda: _training(run), timeout=180), proc.text()[-3000:]
    t_sig = time.monotonic()
    proc.signal(signals[0])
    second_inside = None
    if len(signals) > 1:  # the second signal while the checkpoint is being written
        proc.wait_for(lambda: bool(staging(run)), timeout=60)
        second_inside = bool(staging(run))
        for sig in signals[1:]:
            proc.signal(sig)
    rc = proc.wait(timeout=180)
    exit_s = time.monotonic() - t_sig
    return run, proc, rc, exit_s, second_inside


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signal_checkpoints_and_exits_cleanly(tmp_path, corpus_cache, sig):
    run, proc, rc, exit_s, _ = _signal_run(tmp_path, corpus_cache, "run", [sig])
    assert rc == 0, proc.text()[-3000:]
    assert "Traceback" not in proc.text()
    ref = latest_checkpoint(run)
    assert ref is not None and verify_checkpoint(ref.path) == _last_step(run)
    assert exit_s < EXIT_BOUND_S
    record(
        f"{sig.name} -> checkpoint + exit",
        1,
        1,
        f"exit 0, checkpoint at step {ref.step} loads",
        signal_to_exit_s=round(exit_s, 1),
    )


def test_second_signal_during_save_does_not_corrupt_it(tmp_path, corpus_cache):
    run, proc, rc, exit_s, inside = _signal_run(
        tmp_path, corpus_cache, "run", [signal.SIGTERM, signal.SIGTERM, signal.SIGUSR1]
    )
    assert rc == 0, proc.text()[-3000:]
    steps = verify_run(run)
    assert steps and steps[-1] == _last_step(run)
    assert not staging(run)
    # and the run resumes from it
    again = Proc(
        train_args(run, corpus_cache, *OVERRIDES[1:], f"train.max_steps={steps[-1] + 2}", resume=True),
        tmp_path / "resume.log",
    )
    assert again.wait(timeout=180) == 0, again.text()[-3000:]
    assert f"at step {steps[-1]}" in again.text()
    assert verify_checkpoint(latest_checkpoint(run).path) == steps[-1] + 2
    record(
        "2nd+3rd signal during the save",
        1,
        1,
        f"exit 0, checkpoint intact, resumed (2nd signal inside the write: {inside})",
        signal_to_exit_s=round(exit_s, 1),
    )


def test_sigterm_to_the_whole_process_group_with_loader_workers(tmp_path, corpus_cache):
    """Slurm's scancel and `kill -TERM -PGID` signal every process, DataLoader workers too."""
    import os

    run = tmp_path / "run"
    proc = Proc(train_args(run, corpus_cache, *OVERRIDES, "data.num_workers=2"), tmp_path / "pg.log")
    assert proc.wait_for(lambda: _training(run), timeout=180), proc.text()[-3000:]
    # The child shares pytest's process group, so signal it and its workers by pid (what a
    # group signal would reach).
    kids = _children(proc.p.pid)
    t = time.monotonic()
    for pid in [proc.p.pid, *kids]:
        os.kill(pid, signal.SIGTERM)
    rc = proc.wait(timeout=180)
    exit_s = time.monotonic() - t
    ok = rc == 0 and latest_checkpoint(run) is not None
    last = proc.text().strip().splitlines()[-1:]
    record(
        "SIGTERM to trainer + loader workers",
        1,
        int(ok),
        "exit 0 + checkpoint" if ok else f"exit {rc}, no checkpoint: {last}",
        signal_to_exit_s=round(exit_s, 1),
        workers_signalled=len(kids),
    )
    assert rc == 0, proc.text()[-3000:]
    assert verify_checkpoint(latest_checkpoint(run).path) == _last_step(run)


def _children(pid: int) -> list[int]:
    from pathlib import Path

    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(p.name))
    return out
