"""Drill: the disk fills up while a checkpoint is written.

A real full disk where the machine allows it: a small tmpfs mounted on RUN/checkpoints, sized
for two checkpoints, so the third save runs out of space inside the writer (safetensors /
torch.save). Where mounting is not permitted, ENOSPC is raised from the writer instead, in
process, at the same save. Either way: the previous checkpoint stays intact and loads, the
error names the path and the free space, and training stops (exit 2, one line) or continues
per checkpoint.on_disk_full.
"""

from __future__ import annotations

import errno
import subprocess
import warnings

import pytest
from faultlib import TINY, one_line_error, record, run_cli, staging, verify_run

from ganscale.config import load_config
from ganscale.train.checkpoint import CheckpointWriteError

pytestmark = pytest.mark.faults

OVERRIDES = ("train.max_steps=8", "checkpoint.every=2", "checkpoint.keep=2", "log.sample_every=0")
CKPT_MB = 5  # a tiny-config checkpoint is ~4.9 MB; the tmpfs holds two, not three


def _mount_tmpfs(folder, size_mb: float) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={int(size_mb * 1024)}k", "tmpfs", str(folder)],
        capture_output=True,
    )
    return r.returncode == 0


def _umount(folder) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def full_disk(tmp_path):
    """RUN/checkpoints on a tmpfs with room for two checkpoints (skip if mount is refused)."""
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    if not _mount_tmpfs(ckpts, 2.4 * CKPT_MB):
        pytest.skip("mount -t tmpfs not permitted here; test_enospc_in_the_writer_in_process covers it")
    yield run
    _umount(ckpts)


@pytest.mark.parametrize("policy", ["stop", "continue"])
def test_real_full_disk_keeps_previous_checkpoint(full_disk, corpus_cache, policy):
    run = full_disk
    sets = [f"data.cache_dir={corpus_cache}", *OVERRIDES, f"checkpoint.on_disk_full={policy}"]
    args = ["train", str(TINY), "--out", str(run)]
    for s in sets:
        args += ["--set", s]
    proc = run_cli(*args, timeout=300)
    if policy == "stop":
        line = one_line_error(proc)
        assert ".step-0000006.tmp" in line and "disk full" in line and "MiB free" in line
        outcome = "exit 2, one line naming the path + free space"
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        assert ".step-0000006.tmp" in proc.stderr and "continuing" in proc.stderr
        assert (run / "generator.safetensors").is_file()  # the run finished
        line = next(ln for ln in proc.stderr.splitlines() if ".step-0000006.tmp" in ln)
        outcome = "exit 0, warned, trained to the end"
    assert verify_run(run) == [2, 4]  # the previous checkpoints are intact and load
    assert not staging(run)
    record(f"disk full (tmpfs), on_disk_full={policy}", 1, 1, outcome, message=line.split(": ", 1)[-1][:120])


def test_enospc_in_the_writer_in_process(tmp_path, corpus_cache, monkeypatch):
    """The same fault without a mount: the 3rd checkpoint's weight writer raises ENOSPC."""
    from safetensors import torch as st

    from ganscale.train.trainer import train

    real = st.save_file
    calls = {"n": 0}

    def writer(tensors, filename, *a, **k):  # G, D, G_ema per save: the 7th call is the 3rd save
        calls["n"] += 1
        if calls["n"] == 7:
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real(tensors, filename, *a, **k)

    monkeypatch.setattr(st, "save_file", writer)
    cfg = load_config(TINY, [f"data.cache_dir={corpus_cache}", *OVERRIDES])
    with pytest.raises(CheckpointWriteError) as e:
        train(cfg, tmp_path / "run")
    msg = str(e.value)
    assert ".step-0000006.tmp" in msg and "disk full" in msg and "free" in msg and "\n" not in msg
    assert verify_run(tmp_path / "run") == [2, 4] and not staging(tmp_path / "run")
    over = [f"data.cache_dir={corpus_cache}", *OVERRIDES, "checkpoint.on_disk_full=continue"]
    cfg = load_config(TINY, over)
    calls["n"] = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(cfg, tmp_path / "run2")
    assert result.step == 8
    assert any(".step-0000006.tmp" in str(w.message) for w in caught)
    assert verify_run(tmp_path / "run2") == [4, 8]
    record("ENOSPC in writer (in-process)", 2, 2, "stop: one-line error; continue: warned, finished")


@pytest.mark.parametrize("policy", ["stop", "continue"])
def test_enospc_at_the_commit_follows_on_disk_full(tmp_path, corpus_cache, monkeypatch, policy):
    """The last stage of a save (state.json, the rename) fails: the same policy as the writers'
    failures (before, a commit failure always stopped, and on several ranks only rank 0 did)."""
    from ganscale.train import checkpoint as ckpt
    from ganscale.train.trainer import train

    real, saves = ckpt.commit, []

    def commit(run_dir, step, state, keep):
        saves.append(step)
        if len(saves) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(ckpt.staging_dir(run_dir, step)))
        return real(run_dir, step, state, keep)

    monkeypatch.setattr(ckpt, "commit", commit)
    cfg = load_config(
        TINY, [f"data.cache_dir={corpus_cache}", *OVERRIDES, f"checkpoint.on_disk_full={policy}"]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if policy == "stop":
            with pytest.raises(CheckpointWriteError, match=r"\.step-0000006\.tmp failed: disk full"):
                train(cfg, tmp_path / "run")
        else:
            assert train(cfg, tmp_path / "run").step == 8
            assert any(
                ".step-0000006.tmp" in str(w.message) and "continuing" in str(w.message) for w in caught
            )
    assert verify_run(tmp_path / "run") == ([2, 4] if policy == "stop" else [4, 8])
    assert not staging(tmp_path / "run")
