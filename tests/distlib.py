"""Helpers for tests that start real processes: torchrun, accelerate launch, deepspeed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORKER = REPO / "tests" / "dist_worker.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e.update(
        {
            "PATH": f"{BIN}{os.pathsep}{e.get('PATH', '')}",
            # these tests run N CPU ranks (gloo) on any machine: one GPU cannot hold two ranks,
            # so CUDA is hidden from them (the gpu-marked tests are where the GPU is tested)
            "DS_ACCELERATOR": "cpu",
            "CUDA_VISIBLE_DEVICES": "",
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU"):
        e.pop(k, None)
    e.update(extra)
    return e


def run(cmd: list[str], timeout: float = 240, cwd: Path = REPO, **extra: str) -> subprocess.CompletedProcess:
    """Run and fail with the tail of the output when the exit code is not 0. On a timeout the
    whole process group goes (a launcher killed alone leaves its workers hanging)."""
    args = [str(c) for c in cmd]
    with subprocess.Popen(
        args,
        cwd=cwd,
        env=env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(
                f"timed out after {timeout}s: {' '.join(args)}\n{(out + err)[-6000:]}"
            ) from None
    p = subprocess.CompletedProcess(args, proc.returncode, out, err)
    if p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}: {' '.join(args)}\n{(out + err)[-6000:]}")
    return p


class RankGroup:
    """``nproc`` processes started as the ranks of one gloo group, with the variables torchrun
    sets but without torchrun: each rank's own exit code, log file and pid (to signal one)."""

    def __init__(self, nproc: int, args: list[str | Path], logs: Path, **extra: str) -> None:
        port = str(free_port())
        logs.mkdir(parents=True, exist_ok=True)
        self.args, self.logs = [str(a) for a in args], [logs / f"rank{r}.log" for r in range(nproc)]
        self.procs: list[subprocess.Popen] = []
        for r in range(nproc):
            group = {"RANK": str(r), "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(r)}
            group |= {"LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
            with open(self.logs[r], "w") as f:
                self.procs.append(
                    subprocess.Popen(
                        self.args,
                        cwd=REPO,
                        env=env(**(group if nproc > 1 else {}), **extra),
                        stdout=f,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )

    def text(self, rank: int) -> str:
        return self.logs[rank].read_text(errors="replace")

    def wait(self, timeout: float = 240) -> list[tuple[int, str]]:
        """(exit code, log) per rank. Past ``timeout`` every rank is killed and this raises:
        the hang is the failure."""
        deadline = time.monotonic() + timeout
        try:
            for p in self.procs:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            texts = []
            for r, p in enumerate(self.procs):
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                texts.append(f"--- rank {r} ---\n{self.text(r)[-3000:]}")
            cmd = " ".join(self.args)
            raise AssertionError(f"hung: not done after {timeout}s: {cmd}\n" + "\n".join(texts)) from None
        return [(p.returncode, self.text(r)) for r, p in enumerate(self.procs)]


def ranks(
    nproc: int, args: list[str | Path], logs: Path, timeout: float = 240, **extra: str
) -> list[tuple[int, str]]:
    """Run ``args`` as ``nproc`` ranks (:class:`RankGroup`); (exit code, log) per rank."""
    return RankGroup(nproc, args, logs, **extra).wait(timeout)


def torchrun(nproc: int, *args: str | Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(free_port()),
        *map(str, args),
    ]


def accelerate(nproc: int, *args: str | Path) -> list[str]:
    """`accelerate launch` with nproc CPU processes (run with ACCELERATE_USE_CPU=1)."""
    multi = ["--multi_gpu"] if nproc > 1 else []
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *multi,
        "--num_processes",
        str(nproc),
        "--num_machines",
        "1",
        "--main_process_port",
        str(free_port()),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        *map(str, args),
    ]


def worker(nproc: int, mode: str, out: Path, *args: str) -> dict:
    """Run tests/dist_worker.py under torchrun; rank 0's report."""
    run(torchrun(nproc, WORKER, mode, out, *args))
    return json.loads((out / "rank0.json").read_text())


def tiny_args(out: Path, cache: Path, *sets: str) -> list[str]:
    args = [
        "train",
        str(REPO / "configs" / "tiny.yaml"),
        "--out",
        str(out),
        "--set",
        f"data.cache_dir={cache}",
    ]
    for s in sets:
        args += ["--set", s]
    return args


def max_diff(a: Path, b: Path, params_only: bool = True) -> float:
    from safetensors.torch import load_file

    x, y = load_file(str(a)), load_file(str(b))
    assert set(x) == set(y)
    keys = [k for k in x if not params_only or not any(s in k for s in ("running_", "num_batches"))]
    return max(float((x[k].float() - y[k].float()).abs().max()) for k in keys)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def has_deepspeed() -> bool:
    """DeepSpeed importable? Only a missing package means "skip": any other import failure is
    raised, and under CI (CI=true, where the dev extra installs it) a missing one fails too."""
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        return False
    return True


CUDA = torch.cuda.is_available()


def need_slurm() -> None:
    """Skip without a running Slurm cluster; under CI=true (where .ci/run starts one) fail."""
    import shutil

    import pytest

    up = False
    if shutil.which("sbatch") and shutil.which("scontrol"):
        try:
            p = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
            up = "UP" in p.stdout
        except (OSError, subprocess.TimeoutExpired):
            up = False
    if up:
        return
    if os.environ.get("CI") == "true":  # CI starts the cluster: its absence is a failure there
        pytest.fail("no Slurm cluster up under CI=true (.ci/run starts one: ../shared/slurm/up.sh)")
    pytest.skip("no Slurm cluster up (.ci/run starts one: ../shared/slurm/up.sh)")
