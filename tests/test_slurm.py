"""launch/slurm/train.sbatch on a real (one-node) Slurm; .ci/run starts it. Skipped without one.

Two tasks on this one node stand in for two machines of one CPU process each, so the
multi-node path (machine rank from SLURM_PROCID, count from SLURM_NTASKS, first host as main
address, a free port) is what runs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from distlib import REPO, env, metrics, need_slurm

pytestmark = [pytest.mark.slurm, pytest.mark.distributed]
SBATCH = REPO / "launch" / "slurm" / "train.sbatch"


@pytest.fixture(scope="module", autouse=True)
def _need_slurm():
    need_slurm()


def submit(folder: Path, cache: Path, *sets: str, tasks: tuple[str, ...] = ("--ntasks=2",)) -> str:
    args = [
        str(REPO / "configs" / "tiny.yaml"),
        "--out",
        str(folder / "run"),
        "--set",
        f"data.cache_dir={cache}",
    ]
    for s in sets:
        args += ["--set", s]
    p = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--nodes=1",
            *tasks,
            f"--output={folder}/job-%j.out",
            f"--chdir={REPO}",
            str(SBATCH),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env(GANSCALE_NPROC_PER_NODE="1"),
        timeout=30,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().split(";")[0]


def job(job_id: str) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=10
    ).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_for(job_id: str, states: set[str], timeout: float, log: Path | None = None) -> dict[str, str]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        info = job(job_id)
        if info.get("JobState") in states:
            return info
        time.sleep(1)
    subprocess.run(["scancel", job_id], timeout=10)
    text = "".join(p.read_text()[-4000:] for p in log.parent.glob("job-*.out")) if log else ""
    raise AssertionError(f"job {job_id} not in {states} after {timeout}s: {job(job_id)}\n{text}")


def job_log(folder: Path) -> str:
    return "".join(p.read_text() for p in folder.glob("job-*.out"))


def test_sbatch_two_tasks_trains_to_the_end(tmp_path, corpus_cache):
    job_id = submit(tmp_path, corpus_cache, tasks=("--ntasks=2", "--cpus-per-task=1"))
    info = wait_for(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}, 240, tmp_path / "x")
    log = job_log(tmp_path)
    assert info["JobState"] == "COMPLETED", log[-4000:]
    assert "2 machine(s)" in log and "machine 1/2" in log
    # srun does not take the job's --cpus-per-task by itself (Slurm >= 22.05): the script passes it
    assert "srun --kill-on-bad-exit=1 --cpus-per-task=1" in log and "1 process(es), 1 cpu(s)" in log
    run = tmp_path / "run"
    assert (run / "checkpoints" / "step-0000006" / "state.json").is_file()
    assert (run / "samples" / "step-0000006.png").is_file()
    assert (run / "generator.safetensors").is_file()
    rows = [r for r in metrics(run) if "event" not in r]
    assert rows[-1]["step"] == 6 and rows[-1]["images_seen"] == 6 * 8 * 2  # two processes


def test_more_than_one_task_per_node_is_refused_before_anything_starts(tmp_path, corpus_cache):
    """Each task launches one process per GPU of its machine: two tasks per node would double
    the world size and share the GPUs (a hang until the collective timeout). One clear line."""
    job_id = submit(tmp_path, corpus_cache, tasks=("--ntasks-per-node=2",))
    info = wait_for(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}, 60, tmp_path / "x")
    log = job_log(tmp_path)
    assert info["JobState"] == "FAILED" and info["ExitCode"].startswith("2:"), log[-2000:]
    assert "error: --ntasks-per-node=2: this script runs ONE task per machine" in log
    assert "--ntasks-per-node=1" in log.split("error:", 1)[1].splitlines()[0]
    assert not (tmp_path / "run").exists() and "machine 0/" not in log


def test_preemption_checkpoints_requeues_and_resumes(tmp_path, corpus_cache):
    """USR1 mid-run (scancel --batch --signal=USR1): the trainers checkpoint and exit, the job
    requeues itself, the requeued run (SLURM_RESTART_COUNT=1) resumes from that checkpoint and
    finishes; every step is logged exactly once."""
    max_steps = 60
    job_id = submit(
        tmp_path,
        corpus_cache,
        f"train.max_steps={max_steps}",
        "checkpoint.every=0",
        "log.every=1",
        "log.sample_every=0",
    )
    run = tmp_path / "run"
    end = time.monotonic() + 180
    while time.monotonic() < end:
        if (run / "metrics.jsonl").is_file() and len(metrics(run)) >= 8:
            break
        assert job(job_id).get("JobState") in {"PENDING", "RUNNING"}, job_log(tmp_path)[-4000:]
        time.sleep(0.5)
    else:
        raise AssertionError(f"no training progress: {job_log(tmp_path)[-4000:]}")
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True, timeout=10)

    # Requeued: pending again with one restart (Slurm holds it ~120 s; start it now).
    info = wait_for(job_id, {"PENDING"}, 120, tmp_path / "x")
    assert info["Restarts"] == "1"
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    assert len(ckpts) == 1, ckpts
    stop_step = int(ckpts[0].name.split("-")[1])
    assert 8 <= stop_step < max_steps  # the signal rides in every step's decision (faults.check_every 1)
    # Slurm holds a requeued job ~120 s so that the killed run's credential is stale before it
    # starts again; a start within the second of the requeue is refused ("Job credential
    # revoked": the job then ends FAILED with no output). Skip the hold, but not that second.
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=10)

    info = wait_for(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}, 240, tmp_path / "x")
    log = job_log(tmp_path)
    assert info["JobState"] == "COMPLETED", f"{info.get('Reason')} {info.get('ExitCode')}\n{log[-4000:]}"
    assert f"job {job_id} restart 1" in log and "--resume latest" in log
    assert "requeueing" in log
    rows = [r for r in metrics(run) if "event" not in r]
    steps = [r["step"] for r in rows]
    assert steps == list(range(1, max_steps + 1)), f"lost or repeated steps around {stop_step}: {steps}"
    assert rows[-1]["images_seen"] == max_steps * 8 * 2
    assert (run / "checkpoints" / f"step-{max_steps:07d}" / "state.json").is_file()


def test_a_killed_rank_fails_the_job_and_a_requeue_resumes(tmp_path, corpus_cache):
    """kill -9 of rank 1 mid-run: the other rank does not hang, the job ends FAILED (within the
    collective timeout + slack), its newest checkpoint is intact, and `scontrol requeue` runs
    it again with --resume latest to the end."""
    from faultlib import verify_checkpoint

    max_steps, timeout_s = 200, 20
    job_id = submit(
        tmp_path,
        corpus_cache,
        f"train.max_steps={max_steps}",
        "checkpoint.every=5",
        "log.every=1",
        "log.sample_every=0",
        f"faults.collective_timeout_s={timeout_s}",
    )
    run = tmp_path / "run"
    end = time.monotonic() + 180
    while time.monotonic() < end:
        ckpts = sorted((run / "checkpoints").glob("step-*")) if (run / "checkpoints").is_dir() else []
        if ckpts and (run / "metrics.jsonl").is_file() and len(metrics(run)) >= 7:
            break
        assert job(job_id).get("JobState") in {"PENDING", "RUNNING"}, job_log(tmp_path)[-4000:]
        time.sleep(0.2)
    else:
        raise AssertionError(f"no checkpoint: {job_log(tmp_path)[-4000:]}")
    victim = _rank_process(job_id, rank=1)
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    info = wait_for(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}, timeout_s + 60, run)
    failed_s = time.monotonic() - t0
    log = job_log(tmp_path)
    assert info["JobState"] == "FAILED", f"{info.get('JobState')} {info.get('ExitCode')}\n{log[-4000:]}"
    assert "trainers exited with" in log and "scontrol requeue" in log  # the script says how to resume
    last = sorted((run / "checkpoints").glob("step-*"))[-1]
    stop_step = verify_checkpoint(last)
    assert stop_step < max_steps

    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=10)
    wait_for(job_id, {"PENDING"}, 60, run)
    time.sleep(2)  # a start within the second of the requeue is refused (see the preemption test)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=10)
    info = wait_for(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}, 300, run)
    log = job_log(tmp_path)
    assert info["JobState"] == "COMPLETED", f"{info.get('Reason')} {info.get('ExitCode')}\n{log[-4000:]}"
    assert f"job {job_id} restart 1" in log and f"resumed from {last} at step {stop_step}" in log
    rows = [r for r in metrics(run) if "event" not in r]
    assert rows[-1]["step"] == max_steps
    assert (run / "checkpoints" / f"step-{max_steps:07d}" / "state.json").is_file()
    print(f"kill -9 of rank 1 -> job FAILED after {failed_s:.1f} s (collective timeout {timeout_s} s)")


def _rank_process(job_id: str, rank: int) -> int:
    """The pid of the training process of ``rank`` in Slurm job ``job_id`` (this one node)."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if "ganscale" not in cmd or "train" not in cmd or "accelerate" in cmd:
                continue
            e = p.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if e.get("SLURM_JOB_ID") == job_id and e.get("RANK") == str(rank):
            return p.pid
    raise AssertionError(f"no rank {rank} process of job {job_id}")
