"""Multi-process correctness on CPU: real processes (torchrun, accelerate launch), gloo."""

from __future__ import annotations

import json

import pytest
from distlib import accelerate, has_deepspeed, max_diff, metrics, run, tiny_args, torchrun, worker

pytestmark = pytest.mark.distributed

BACKENDS = [
    "accelerate",
    pytest.param(
        "deepspeed", marks=pytest.mark.skipif(not has_deepspeed(), reason="deepspeed not installed")
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_processes_batch_b_step_like_one_process_batch_2b(tmp_path, backend):
    """First step (D then G) of the real Trainer, 2 processes x batch 4 == 1 process x batch 8
    holding the same 8 samples and noise: gradients averaged right, data split right. No
    BatchNorm in these nets (per-rank BatchNorm statistics differ by design)."""
    common = ["--no-norm", "--steps", "1", "--backends", backend, "--stage", "2"]
    two_procs = worker(2, "first_steps", tmp_path, "--batch", "4", *common)
    assert two_procs["world_size"] == 2
    one_proc = worker(1, "first_steps", tmp_path, "--batch", "8", "--slots", "2", *common)
    assert one_proc["world_size"] == 1
    two, one = tmp_path / f"first-{backend}-2.safetensors", tmp_path / f"first-{backend}-1.safetensors"
    assert max_diff(two, one) < 1e-6
    assert two_procs[backend]["d_grads_after_g"] == one_proc[backend]["d_grads_after_g"] == [0.0]


def test_accumulation_reduces_once_per_step_and_leaves_no_gradient_in_d(tmp_path):
    """The real Trainer on 2 processes (DDP), grad_accum 2: one gradient all-reduce per network
    per step (the first micro-step runs under no_sync), and after the G phase D holds no
    gradient. Negative controls: the trainer patched to stop calling no_sync reduces on every
    micro-step; patched to stop freezing D in the G phase leaves G-step gradients in D."""
    common = ["--steps", "2", "--accum", "2", "--backends", "accelerate"]
    r = worker(2, "first_steps", tmp_path / "ok", *common)["accelerate"]
    assert r["reductions_d"] == [1, 1] and r["reductions_g"] == [1, 1], r
    assert r["d_grads_after_g"] == [0.0, 0.0], "D kept G-step gradients"
    broken = worker(2, "first_steps", tmp_path / "no_sync", *common, "--break", "no_sync")["accelerate"]
    assert broken["reductions_d"] == [2, 2], "negative control did not change: the count is blind"
    unfrozen = worker(2, "first_steps", tmp_path / "freeze", *common, "--break", "freeze")["accelerate"]
    assert min(unfrozen["d_grads_after_g"]) > 0, "negative control did not change: the check is blind"


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_rank_sees_different_data(tmp_path, corpus_cache, backend):
    """Under torchrun, the runtime's rank/world size reach the loader: disjoint samples."""
    worker(
        2,
        "data",
        tmp_path,
        "--cache",
        str(corpus_cache),
        "--batch",
        "8",
        "--steps",
        "3",
        "--backends",
        backend,
    )
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    assert len(r0["keys"]) == len(r1["keys"]) == 24
    assert not set(r0["keys"]) & set(r1["keys"]), "two ranks read the same samples"


def test_rank0_alone_writes_and_all_ranks_exit_0(tmp_path, corpus_cache):
    """`accelerate launch` x 2: one set of checkpoints, samples, metrics rows and one tracker
    run; both processes exit 0 (the launcher fails otherwise)."""
    out = tmp_path / "run"
    run(
        accelerate(2, "-m", "ganscale", *tiny_args(out, corpus_cache, "log.tracker=wandb")),
        ACCELERATE_USE_CPU="1",
        WANDB_DIR=str(tmp_path),
    )
    rows = [r for r in metrics(out) if "event" not in r]
    assert [r["step"] for r in rows] == [2, 4, 6], "metrics rows written twice or missing"
    assert rows[-1]["images_seen"] == 6 * 8 * 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000003", "step-0000006"]
    state = json.loads((out / "checkpoints/step-0000006/state.json").read_text())
    assert state["world_size"] == 2 and [d["rank"] for d in state["data"]] == [0, 1]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-0000003.png", "step-0000006.png"]
    runs = list(tmp_path.rglob("offline-run-*"))
    assert len(runs) == 1, f"tracker runs: {runs}"
    assert (out / "generator.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_elastic_resume_keeps_global_batch(tmp_path, corpus_cache, backend):
    """2 processes -> checkpoint at step 3 -> resume on 1 process; and 1 -> 2. With
    train.global_batch=16 the resumed run accumulates 2 micro-batches of 8 (or splits them over
    2 processes): images per step stay 16, no step is lost or repeated."""
    sets = [f"backend={backend}", "train.global_batch=16", "train.max_steps=3", "log.every=1"]
    for first, second in ((2, 1), (1, 2)):
        out = tmp_path / f"{first}to{second}"
        run(torchrun(first, "-m", "ganscale", *tiny_args(out, corpus_cache, *sets)))
        run(
            torchrun(
                second,
                "-m",
                "ganscale",
                *tiny_args(out, corpus_cache, *sets[:-2], "train.max_steps=6", "log.every=1"),
                "--resume",
                "latest",
            )
        )
        rows = [r for r in metrics(out) if "event" not in r]
        assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
        assert [r["images_seen"] for r in rows] == [16 * s for s in range(1, 7)]
        state = json.loads((out / "checkpoints/step-0000006/state.json").read_text())
        assert state["world_size"] == second
