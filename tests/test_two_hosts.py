"""Two "machines": a 2-process job whose ranks live in two network namespaces joined by a veth
pair, rendezvous over a real (virtual) link to the other host's address, as on a cluster.

Each namespace sees only its own end of the pair (10.213.0.1/30 and 10.213.0.2/30) and a
loopback: no traffic leaves them, and they are removed at the end, failed or not. Each runs
``torchrun --nnodes 2 --node_rank R --master_addr 10.213.0.1`` (one process per machine);
gloo is pointed at the veth (``GLOO_SOCKET_IFNAME``), since a namespace's hostname resolves to
no address it has. Needs root and ``ip`` (iproute2): skipped otherwise.

The job is the real Trainer on the real runtimes (tests/dist_worker.py's ``build``): 3 steps
on the Accelerate backend, then 3 on DeepSpeed ZeRO-2. Each rank writes its weights; the test
checks the job trained (weights moved, finite losses), that both ranks see 2 processes, and
that both hold the same parameters afterwards.

This file is also the worker:

    torchrun --nnodes 2 --node_rank R --master_addr ADDR ... tests/test_two_hosts.py OUT
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ADDR = ("10.213.0.1", "10.213.0.2")
STEPS = 3


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


@pytest.fixture
def two_hosts():
    """Two namespaces joined by a veth pair; yields [(netns, ifname, address)] x 2."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and ip (iproute2) for network namespaces")
    tag = f"{os.getpid() % 100000}"
    hosts = [(f"ganscale-h{i}-{tag}", f"gsv{tag}{'ab'[i]}", ADDR[i]) for i in (0, 1)]
    try:
        for ns, _, _ in hosts:
            _ip("netns", "add", ns)
        _ip("link", "add", hosts[0][1], "type", "veth", "peer", "name", hosts[1][1])
        for ns, ifname, addr in hosts:
            _ip("link", "set", ifname, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", ifname)
            _ip("-n", ns, "link", "set", ifname, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        if shutil.which("ping"):
            ping = subprocess.run(
                ["ip", "netns", "exec", hosts[1][0], "ping", "-c", "1", "-W", "5", ADDR[0]],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert ping.returncode == 0, f"the veth link carries nothing: {ping.stdout}{ping.stderr}"
    except subprocess.CalledProcessError as e:
        _remove(hosts)
        pytest.skip(f"network namespaces unavailable here: {' '.join(e.cmd)}: {e.stderr.strip()}")
    except BaseException:
        _remove(hosts)
        raise
    try:
        yield hosts
    finally:
        _remove(hosts)


def _remove(hosts: list[tuple[str, str, str]]) -> None:
    """Kill what still runs inside the namespaces, then delete them (their veth ends go too)."""
    for ns, _, _ in hosts:
        pids = _ip("netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        _ip("netns", "del", ns, check=False)
    left = _ip("netns", "list", check=False).stdout
    assert not any(ns in left for ns, _, _ in hosts), f"namespaces left behind: {left}"


@pytest.mark.distributed
@pytest.mark.slow
def test_two_machines_over_a_veth_link_train_and_agree(tmp_path, two_hosts):
    from distlib import env, has_deepspeed, max_diff

    backends = "accelerate,deepspeed" if has_deepspeed() else "accelerate"
    port = "29531"
    procs = []
    try:
        for node, (ns, ifname, _) in enumerate(two_hosts):
            cmd = [
                "ip",
                "netns",
                "exec",
                ns,
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
                ADDR[0],
                "--master_port",
                port,
                str(Path(__file__)),
                str(tmp_path),
                backends,
            ]
            log = open(tmp_path / f"host{node}.log", "w")  # noqa: SIM115 - closed below
            e = env(GLOO_SOCKET_IFNAME=ifname)
            procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=e), log))
        rcs = []
        for p, _ in procs:
            try:
                rcs.append(p.wait(timeout=420))
            except subprocess.TimeoutExpired:
                rcs.append(None)
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    logs = "".join((tmp_path / f"host{i}.log").read_text()[-3000:] for i in (0, 1))
    assert rcs == [0, 0], f"exit codes {rcs}\n{logs}"

    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r, rep in enumerate(reports):
        assert rep["rank"] == r and rep["world_size"] == 2
        assert rep["master_addr"] == ADDR[0]
    for backend in backends.split(","):
        for rep in reports:
            losses = rep[backend]["g_loss"]
            assert len(losses) == STEPS and all(v == v and abs(v) < 1e6 for v in losses), losses
        first, last = (tmp_path / f"{backend}-rank0-{s}.safetensors" for s in ("start", "end"))
        assert max_diff(first, last) > 1e-4, f"{backend}: the weights did not move"
        agree = max_diff(last, tmp_path / f"{backend}-rank1-end.safetensors")
        assert agree == 0.0, f"{backend}: the ranks hold different parameters (max diff {agree})"


# ----------------------------------------------------------------------------- the worker
def _worker(out: Path, backends: list[str]) -> None:
    import dist_worker as dw
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    report: dict = {"master_addr": os.environ.get("MASTER_ADDR")}
    last_rt = None
    for backend in backends:
        trainer = dw.build(backend, 2, 4, 1, out / f"run-{backend}")
        rt = trainer.rt
        save_file(dw.weights(rt), str(out / f"{backend}-rank{rt.rank}-start.safetensors"))
        r: dict = {}
        dw.train_steps(trainer, STEPS, report=r)
        save_file(dw.weights(rt), str(out / f"{backend}-rank{rt.rank}-end.safetensors"))
        report[backend] = {"g_loss": r["g_loss"]}
        report["rank"], report["world_size"] = rt.rank, rt.world_size
        trainer.close()
        if backend == "deepspeed":
            rt.engines = {}
        else:
            last_rt = rt
        torch.distributed.barrier()
    (out / f"rank{report['rank']}.json").write_text(json.dumps(report))
    if last_rt is not None:
        last_rt.end()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), sys.argv[2].split(","))
