"""Drill: kill -9 of `ganscale train` at random points, many of them inside checkpoint writes.

One run folder is trained by a chain of real processes, each started with ``--resume latest``
and killed with SIGKILL at a chosen point: after a random delay (anywhere: imports, data
setup, a step, a save), while a checkpoint's staging folder is being written, or once its
state.json is written and only the rename is left. After every kill each checkpoint that
``list_checkpoints`` reports must load fully; the next process must resume from the newest
one; the last process trains to max_steps.
"""

from __future__ import annotations

import random
import re
import shutil
import time
from pathlib import Path

import pytest
from faultlib import Proc, percentile, record, staging, train_args, verify_checkpoint, verify_run

from ganscale.train.checkpoint import latest_checkpoint, list_checkpoints

pytestmark = [pytest.mark.faults, pytest.mark.slow]

OVERRIDES = (
    "checkpoint.every=1",
    "checkpoint.keep=2",
    "log.every=1",
    "log.sample_every=0",
)
# kill points: random delay after start, inside a staging folder, or just before the rename
MODES = ["random", "mid_write", "pre_rename"] * 4


def _kill_point(proc: Proc, run, mode: str, rng: random.Random) -> str:
    """Wait for ``mode``'s moment and SIGKILL; returns where the kill landed."""
    if mode == "random":
        time.sleep(rng.uniform(0.5, 10.0))
    elif mode == "mid_write":
        # a staging folder with at least one file in it, then 0-20 ms more
        proc.wait_for(lambda: any(any(s.iterdir()) for s in staging(run) if s.is_dir()), timeout=90)
        time.sleep(rng.uniform(0.0, 0.02))
    else:
        proc.wait_for(lambda: any((s / "state.json").exists() for s in staging(run)), timeout=90)
    if proc.p.poll() is not None:
        return "exited before kill"
    in_write = bool(staging(run))
    proc.kill9()
    proc.wait()
    return "inside a checkpoint write" if in_write else "outside a write"


def test_kill9_at_random_points_then_resume(tmp_path, corpus_cache):
    rng = random.Random(1234)
    run = tmp_path / "run"
    landed: dict[str, int] = {}
    resume_s: list[float] = []
    kills = 0
    for i, mode in enumerate(MODES):
        before = latest_checkpoint(run)
        # a step budget no cycle reaches: every cycle ends in its kill
        args = train_args(run, corpus_cache, *OVERRIDES, "train.max_steps=100000", resume=True)
        proc = Proc(args, tmp_path / f"cycle{i}.log")
        if before is not None:
            # resume continues from the newest complete checkpoint that the last kill left
            want = f"at step {before.step}"
            assert proc.wait_for(lambda p=proc, w=want: w in p.text(), timeout=120), proc.text()[-3000:]
            resume_s.append(time.monotonic() - proc.t0)
            assert f"resumed from {before.path}" in proc.text()
        where = _kill_point(proc, run, mode, rng)
        assert where != "exited before kill", proc.text()[-3000:]  # it cannot finish: it crashed
        kills += 1
        landed[where] = landed.get(where, 0) + 1
        # every checkpoint listed as complete loads fully; a torn one is never listed
        steps = verify_run(run)
        assert steps == sorted(steps) and len(steps) <= 2
        for s in staging(run):
            assert not re.match(r"^step-\d+$", s.name)
    # the last process resumes and trains to the end (a few steps past the last checkpoint)
    before = latest_checkpoint(run)
    end = (before.step if before else 0) + 4
    final = Proc(
        train_args(run, corpus_cache, *OVERRIDES, f"train.max_steps={end}", resume=True),
        tmp_path / "final.log",
    )
    assert final.wait(timeout=300) == 0, final.text()[-3000:]
    if before is not None:
        assert f"at step {before.step}" in final.text()
    refs = list_checkpoints(run)
    assert refs[-1].step == end and verify_checkpoint(refs[-1].path) == end
    assert not staging(run)  # leftovers of killed saves are pruned
    record(
        "kill -9 (random + mid-checkpoint)",
        runs=kills,
        ok=kills,
        outcome=f"latest checkpoint always loaded and resumed; {landed}",
        resume_to_restored_s_median=round(percentile(resume_s, 0.5), 1),
        resume_to_restored_s_max=round(max(resume_s, default=float("nan")), 1),
    )


def test_kill9_during_prune_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    """Simulate the kill inside prune's rmtree of an old checkpoint (stopping after its first
    file): what remains must not be listed as a complete checkpoint."""
    from ganscale.train import checkpoint as ckpt

    run = tmp_path / "run"
    for step in (1, 2, 3):
        ckpt.begin(run, step)
        (ckpt.staging_dir(run, step) / "G.safetensors").write_bytes(b"x")
        (ckpt.staging_dir(run, step) / "D.safetensors").write_bytes(b"x")
        if step < 3:
            ckpt.commit(run, step, {"step": step}, keep=2)
    real_rmtree = shutil.rmtree

    def dying_rmtree(path, *a, **k):  # deletes one file, then the process "dies"
        if not Path(path).exists():
            return real_rmtree(path, *a, **k)
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        if files:
            files[0].unlink()
        raise _Killed

    monkeypatch.setattr(shutil, "rmtree", dying_rmtree)
    with pytest.raises(_Killed):
        ckpt.commit(run, 3, {"step": 3}, keep=2)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    steps = [r.step for r in list_checkpoints(run)]
    assert steps[-1] == 3
    for ref in list_checkpoints(run):  # every listed one is whole
        assert {p.name for p in ref.path.iterdir()} >= {"G.safetensors", "D.safetensors", "state.json"}
    ckpt.prune(run, keep=2)  # the next prune removes the remains
    assert [r.step for r in list_checkpoints(run)] == [2, 3]
    assert not list((run / "checkpoints").glob(".*"))


class _Killed(BaseException):
    pass
