"""Drill: kill -9 of `ganscale train` at random points, many of them inside checkpoint writes.

One run folder is trained by a chain of real processes, each started with ``--resume latest``
and killed with SIGKILL at a chosen point: after a random delay (anywhere: imports, data
setup, a step, a save), while a checkpoint's staging folder is being written, or once its
state.json is written and only the rename is left. After every kill each checkpoint that
``list_checkpoints`` reports must load fully; the next process must resume from the newest
one; the last process trains to max_steps.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from distlib import env as dist_env
from distlib import free_port, has_deepspeed, torchrun
from faultlib import Proc, percentile, record, staging, train_args, verify_checkpoint, verify_run
from safetensors.torch import load_file

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
        # keep=2, plus one when the kill fell between a commit's rename and its prune (the next
        # commit prunes every older one)
        assert steps == sorted(steps) and len(steps) <= 3
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


# --------------------------------------------------------------------------- one rank of two
# Two "machines" on this host: one torchrun agent per rank (--nnodes 2), so no launcher sees
# both ranks, and the survivor must notice the loss itself, as on a real cluster. A rank that
# dies (kill -9) closes its sockets and gloo fails the survivor's next collective at once; a
# rank that freezes (SIGSTOP: a hung host, a lost network) closes nothing, and only the
# collective timeout (faults.collective_timeout_s) ends the survivor, which torch's default
# would leave waiting for 30 min.
TIMEOUT_S = 20  # above any wait of one rank for the other here (checkpoint writes, startup skew)
SLACK_S = 60  # the survivor's exception, teardown and exit on a loaded machine
_RANK_DRILL = (  # a run that only ends by the drill
    f"faults.collective_timeout_s={TIMEOUT_S}",
    "train.max_steps=100000",
    "checkpoint.every=2",
    "checkpoint.keep=2",
    "log.every=1",
    "log.sample_every=0",
)


def _two_machines(run: Path, cache: Path, backend: str, logs: Path) -> list[Proc]:
    port = str(free_port())
    procs = []
    for node in (0, 1):
        args = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--node_rank",
            str(node),
            "--nproc_per_node",
            "1",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            port,
            *train_args(run, cache, *_RANK_DRILL, f"backend={backend}")[1:],
        ]
        procs.append(Proc(args, logs / f"node{node}.log", env=dist_env()))
    return procs


def _kill_tree(proc: Proc) -> None:
    """SIGKILL a launcher and everything under it (a stopped worker too), then reap it."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        for p in [*psutil.Process(proc.p.pid).children(recursive=True), psutil.Process(proc.p.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
    proc.wait(timeout=60)


def _worker_of(agent: Proc) -> int:
    """The training process torchrun started (its one child running ganscale)."""
    import psutil

    end = time.monotonic() + 60
    while time.monotonic() < end:
        for child in psutil.Process(agent.p.pid).children():
            if "ganscale" in " ".join(child.cmdline()):
                return child.pid
        time.sleep(0.2)
    raise AssertionError(f"no training process under torchrun {agent.p.pid}: {agent.text()[-2000:]}")


def _intact(folder: Path) -> int:
    """Load a checkpoint of either backend the way --resume reads it; returns its step."""
    from ganscale.train.checkpoint import read_state

    if not (folder / "deepspeed.json").is_file():
        return verify_checkpoint(folder)
    for name in ("G", "D", "G_ema"):
        for k, v in load_file(str(folder / f"{name}.safetensors")).items():
            assert not v.is_floating_point() or torch.isfinite(v).all(), f"{folder}/{name}:{k}"
    for engine in ("ds_G", "ds_D"):
        assert any((folder / engine).rglob("*.pt")), f"{folder}/{engine} has no DeepSpeed files"
    return read_state(folder)["step"]


@pytest.mark.distributed
@pytest.mark.parametrize(
    ("backend", "sig"),
    [("accelerate", signal.SIGKILL), ("deepspeed", signal.SIGSTOP)],
    ids=["accelerate-kill9", "deepspeed-frozen"],
)
def test_one_rank_lost_the_other_exits_and_resume_finishes(tmp_path, corpus_cache, backend, sig):
    """Mid-run, rank 1 is killed (-9) or frozen (SIGSTOP): rank 0 exits non-zero within the
    collective timeout (+ slack), the newest checkpoint loads, and --resume on 2 processes
    trains on from it to the end."""
    if backend == "deepspeed" and not has_deepspeed():
        pytest.skip("deepspeed not installed")
    run = tmp_path / "run"
    nodes = _two_machines(run, corpus_cache, backend, tmp_path)
    worker = None
    try:
        # mid-run: a checkpoint written and training past it
        assert nodes[0].wait_for(
            lambda: (c := latest_checkpoint(run)) is not None and c.step >= 2 and _steps(run) > c.step,
            timeout=240,
        ), nodes[0].text()[-3000:] + nodes[1].text()[-3000:]
        worker = _worker_of(nodes[1])
        t0 = time.monotonic()
        os.kill(worker, sig)
        rc = nodes[0].wait(timeout=TIMEOUT_S + SLACK_S)
        survivor_s = time.monotonic() - t0
    finally:
        if worker is not None and sig == signal.SIGSTOP:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGCONT)
        for node in nodes:
            _kill_tree(node)
    log = nodes[0].text()
    assert rc != 0, log[-3000:]
    if sig == signal.SIGSTOP:  # the configured timeout is what ended it, not gloo's 30 min
        assert f"Timed out waiting {TIMEOUT_S * 1000}ms" in log, log[-3000:]
    last = latest_checkpoint(run)
    assert last is not None and _intact(last.path) == last.step

    end = last.step + 3
    resume = Proc(
        torchrun(2, "-m", "ganscale", *train_args(run, corpus_cache, *_RANK_DRILL, f"backend={backend}")[3:])
        + ["--set", f"train.max_steps={end}", "--resume", "latest"],
        tmp_path / "resume.log",
        env=dist_env(),
    )
    assert resume.wait(timeout=300) == 0, resume.text()[-3000:]
    assert f"resumed from {last.path} at step {last.step}" in resume.text()
    final = latest_checkpoint(run)
    assert final is not None and final.step == end and _intact(final.path) == end
    record(
        f"one rank of 2 lost ({backend}, {signal.Signals(sig).name})",
        runs=1,
        ok=1,
        outcome=f"survivor exit {rc}; checkpoint step {last.step} intact; resumed to {end}",
        collective_timeout_s=TIMEOUT_S,
        survivor_exit_s=round(survivor_s, 1),
    )


def _steps(run: Path) -> int:
    """The last step logged to metrics.jsonl (0 before the first)."""
    import json

    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line being written
            steps.append(json.loads(line).get("step", 0))
    return max(steps, default=0)


@pytest.mark.parametrize("bad", [0, -5, 0.5, float("inf"), float("nan")])
def test_collective_timeout_is_validated(bad):
    from ganscale.config import config_from_dict
    from ganscale.errors import ConfigError
    from ganscale.runtime.base import collective_timeout

    with pytest.raises(ConfigError, match="faults.collective_timeout_s"):
        config_from_dict({"faults": {"collective_timeout_s": bad}})
    cfg = config_from_dict({"faults": {"collective_timeout_s": 7}})
    assert collective_timeout(cfg).total_seconds() == 7.0
    assert collective_timeout(config_from_dict({})).total_seconds() == 600.0  # the default
