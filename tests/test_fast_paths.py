"""Every fast-path switch keeps training correct: same loss trajectory within tolerance.

Each run builds a real Trainer on the tiny config with the same seed (same initial weights,
same noise) and the same in-memory batches, takes a few real steps (D phase + G phase) and
compares the losses with the plain run (fp32, contiguous, foreach Adam, no compile).
"""

import pytest
import torch
from conftest import REPO

from ganscale.bench.step_bench import Bench, BenchOptions
from ganscale.config import load_config
from ganscale.errors import ConfigError
from ganscale.runtime import build_runtime
from ganscale.train.checkpoint import latest_checkpoint
from ganscale.train.trainer import NonFiniteLoss, Trainer, plan_for

TINY = str(REPO / "configs/tiny.yaml")
STEPS = 4


def _trajectory(tiny_overrides, extra):
    plain = ["optim.impl=foreach", "train.channels_last=false", "train.mixed_precision=no", "log.every=1"]
    cfg = load_config(TINY, [*tiny_overrides, *plain, *extra])
    bench = Bench(cfg, BenchOptions())
    try:
        rows = []
        for _ in range(STEPS):
            rec = bench.trainer.step()
            rows.append([float(rec["loss/d"]), float(rec["loss/g"]), float(rec["grad_norm/d"])])
        return torch.tensor(rows)
    finally:
        bench.close()


@pytest.fixture(scope="module")
def reference(corpus_cache):
    return _trajectory([f"data.cache_dir={corpus_cache}"], [])


@pytest.mark.parametrize(
    "switch,rtol",
    [
        (["train.channels_last=true"], 1e-4),
        (["optim.impl=fused"], 1e-4),
        (["optim.impl=plain"], 1e-4),
        (["train.mixed_precision=bf16"], 5e-2),
        (["train.mixed_precision=bf16", "train.channels_last=true"], 5e-2),
    ],
    ids=lambda v: "+".join(v) if isinstance(v, list) else None,
)
def test_switch_keeps_the_loss_trajectory(reference, tiny_overrides, switch, rtol):
    got = _trajectory(tiny_overrides, switch)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, reference, rtol=rtol, atol=rtol)


@pytest.mark.slow
def test_compile_keeps_the_loss_trajectory(reference, tiny_overrides):
    got = _trajectory(tiny_overrides, ["train.compile=true"])
    torch.testing.assert_close(got, reference, rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_fast_paths_keep_the_loss_trajectory(tiny_overrides):
    ref = _trajectory(tiny_overrides, ["optim.impl=fused"])
    got = _trajectory(
        tiny_overrides,
        ["optim.impl=fused", "train.mixed_precision=bf16", "train.channels_last=true", "train.compile=true"],
    )
    torch.testing.assert_close(got, ref, rtol=5e-2, atol=5e-2)


# --------------------------------------------------------------------------- faults.check_every


def _nan_trainer(tmp_path, tiny_overrides, at, *overrides):
    cfg = load_config(
        TINY,
        [
            *tiny_overrides,
            "train.max_steps=6",
            "checkpoint.every=3",
            "log.sample_every=0",
            "faults.check_every=3",
            *overrides,
        ],
    )
    rt = build_runtime(cfg)
    (tmp_path / "run").mkdir()
    trainer = Trainer(plan_for(cfg, rt), tmp_path / "run", rt)
    fired = []

    def hook(module, args, out):  # G's output becomes NaN once, at step index `at`
        if trainer.state.step == at and not fired:
            fired.append(at)
            return out * float("nan")
        return None

    rt.module("g").register_forward_hook(hook)
    return trainer


def test_check_every_still_stops_on_nan(tmp_path, tiny_overrides):
    trainer = _nan_trainer(tmp_path, tiny_overrides, 1, "faults.nan_policy=stop")
    try:
        with pytest.raises(NonFiniteLoss, match="steps 1-3"):
            trainer.run()
    finally:
        trainer.rt.end()
    assert latest_checkpoint(tmp_path / "run") is None  # the NaN step was never checkpointed


def test_check_every_rolls_back_past_the_nan(tmp_path, tiny_overrides):
    trainer = _nan_trainer(tmp_path, tiny_overrides, 4, "faults.nan_policy=rollback")
    try:
        with pytest.warns(UserWarning, match="rolled back to step 3"):
            result = trainer.run()
    finally:
        trainer.rt.end()
    assert result.step == 6 and trainer.state.rollbacks == 1
    assert all(torch.isfinite(p).all() for p in trainer.rt.module("g").parameters())


@pytest.mark.parametrize("policy,reads", [("stop", 3), ("rollback", 3), ("skip", 6)])
def test_check_every_1_reads_the_flag_once_per_step(tmp_path, tiny_overrides, monkeypatch, policy, reads):
    """faults.check_every 1 (issue 21, item 7): under stop and rollback the step's D and G flags
    are read together in the one decision after the step, one host read per step (there were
    two); skip must read each update's flag before it is applied. A D fault is still reported as
    D's, at its step."""
    from ganscale.train.faults import Faults

    counted = {"reads": 0, "inside": 0}
    tolist = torch.Tensor.tolist

    def counting_tolist(self):  # a host read of the fault flags
        counted["reads"] += counted["inside"] > 0
        return tolist(self)

    def inside(method):
        def run(self, *args, **kwargs):
            counted["inside"] += 1
            try:
                return method(self, *args, **kwargs)
            finally:
                counted["inside"] -= 1

        return run

    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    monkeypatch.setattr(Faults, "decide", inside(Faults.decide))
    monkeypatch.setattr(Faults, "update_ok", inside(Faults.update_ok))
    base = [*tiny_overrides, "checkpoint.every=3", f"faults.nan_policy={policy}"]
    cfg = load_config(TINY, [*base, "train.max_steps=3"])
    rt = build_runtime(cfg)
    (tmp_path / "run").mkdir()
    Trainer(plan_for(cfg, rt), tmp_path / "run", rt).run()
    assert counted["reads"] == reads
    if policy == "stop":  # G's output NaN: D's loss is the non-finite one, and it is named
        cfg = load_config(TINY, [*base, "train.max_steps=1"])
        rt = build_runtime(cfg)
        trainer = Trainer(plan_for(cfg, rt), tmp_path / "run2", rt)
        rt.module("g").register_forward_hook(lambda m, a, out: out * float("nan"))
        with pytest.raises(NonFiniteLoss, match="non-finite D loss at step 1"):
            trainer.run()
        rt.end()


@pytest.mark.parametrize("overrides", [["faults.nan_policy=skip"], ["checkpoint.every=3"]])
def test_check_every_refuses_unsafe_settings(tiny_overrides, overrides):
    with pytest.raises(ConfigError, match="check_every"):
        load_config(TINY, [*tiny_overrides, "faults.check_every=2", "checkpoint.every=2", *overrides])


def test_gradient_norms_only_on_logged_steps_and_the_same_trajectory(tiny_overrides):
    """The norms (a pass over every gradient) are computed on the steps a metrics row reads;
    skipping them elsewhere changes nothing else (every step still updates both networks)."""
    plain = ["optim.impl=foreach", "train.channels_last=false", "train.mixed_precision=no"]
    runs = {}
    for every in (1, 3):
        cfg = load_config(TINY, [*tiny_overrides, *plain, f"log.every={every}", "train.max_steps=6"])
        bench = Bench(cfg, BenchOptions())
        try:
            records = [bench.trainer.step() for _ in range(6)]
            weights = [p.detach().clone() for p in bench.trainer.rt.module("g").parameters()]
        finally:
            bench.close()
        runs[every] = (records, weights)
    every_step, sparse = runs[1][0], runs[3][0]
    assert [("grad_norm/d" in r, "grad_norm/g" in r) for r in sparse] == [(s % 3 == 2,) * 2 for s in range(6)]
    assert all("grad_norm/d" in r and float(r["grad_norm/g"]) > 0 for r in every_step)
    for s in (2, 5):  # where both measured, the same norm
        assert float(sparse[s]["grad_norm/d"]) == pytest.approx(float(every_step[s]["grad_norm/d"]), rel=1e-5)
    losses = {k: torch.tensor([float(r["loss/g"]) for r in runs[k][0]]) for k in runs}
    torch.testing.assert_close(losses[3], losses[1])
    for a, b in zip(runs[1][1], runs[3][1], strict=True):
        torch.testing.assert_close(a, b)
