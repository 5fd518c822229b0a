"""Stabilisers in the training step: ADA's p, LeCam, the lazy gradient penalty, the shared-fake
step, and exact resume with each of them on."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from conftest import REPO
from distlib import run, tiny_args, torchrun
from safetensors.torch import load_file

from ganscale.augment.ada import AdaController
from ganscale.config import ConfigError, load_config
from ganscale.errors import GanscaleError
from ganscale.outputs.tracking import read_metrics
from ganscale.runtime import build_runtime
from ganscale.runtime.base import Runtime
from ganscale.train import losses
from ganscale.train.plan import shares_fake
from ganscale.train.trainer import Trainer, plan_for, train

TINY = REPO / "configs/tiny.yaml"


def _cfg(corpus_cache, *sets: str):
    return load_config(TINY, [f"data.cache_dir={corpus_cache}", "log.sample_every=0", *sets])


def _train(tmp_path, corpus_cache, *sets: str, name: str = "run", resume: str | None = None):
    cfg = _cfg(corpus_cache, *sets)
    return train(cfg, tmp_path / name, resume=resume), tmp_path / name


def _rows(run_dir):
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss/d" in r]


# --------------------------------------------------------------------------- ADA's controller


def _controller(interval: int = 2, kimg: float = 0.1, per_step: int = 10) -> AdaController:
    rt = Runtime()  # world_size 1: all_reduce_mean is the identity
    return AdaController(0.6, interval, kimg, per_step, torch.device("cpu"), rt.all_reduce_mean)


def test_ada_p_rises_while_d_is_sure_of_every_real_and_falls_otherwise():
    ada = _controller()  # step size: 10 images x 2 steps / 100 images = 0.2 per adjustment
    confident = torch.full((10,), 3.0)
    for step in range(6):
        ada.observe(confident)
        ada.end_step(step)
    assert float(ada.rt) == 1.0 and float(ada.p) == pytest.approx(0.6)
    for step in range(6, 20):  # r_t = 0.2 < 0.6: p falls back to 0 and stays there
        ada.observe(torch.tensor([1.0] * 6 + [-1.0] * 4))
        ada.end_step(step)
        if step == 9:
            assert float(ada.p) == pytest.approx(0.2)
    assert float(ada.rt) == pytest.approx(0.2) and float(ada.p) == 0.0


def test_ada_adjusts_only_every_interval_and_ignores_non_finite_logits():
    ada = _controller(interval=4)
    for step in range(3):
        ada.observe(torch.ones(10))
        ada.end_step(step)
        assert float(ada.p) == 0.0  # not yet
    ada.observe(torch.tensor([math.nan] * 5 + [1.0] * 5))
    ada.end_step(3)
    assert float(ada.rt) == 1.0 and float(ada.p) == pytest.approx(0.4)
    for step in range(4, 8):  # a whole interval of NaN: p stays, nothing becomes NaN
        ada.observe(torch.full((10,), math.nan))
        ada.end_step(step)
    assert float(ada.p) == pytest.approx(0.4) and math.isfinite(float(ada.rt))


def test_ada_state_round_trips_mid_interval():
    """Saved halfway through an interval, the pending sign statistics come back too."""
    a, b = _controller(interval=4), _controller(interval=4)
    for step in range(6):  # one adjustment (p = 0.4), then 2 steps of the next interval
        a.observe(torch.ones(10))
        a.end_step(step)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for step in range(6, 8):
        for c in (a, b):
            c.observe(-torch.ones(10))
            c.end_step(step)
    # the interval's r_t is (20 - 20) / 40 = 0 only with the 2 steps from before the restore
    assert float(a.rt) == float(b.rt) == 0.0 and float(a.p) == float(b.p) == 0.0


def test_ada_r_t_is_all_reduced_over_two_real_processes(tmp_path):
    """Two gloo ranks see different D outputs; both must compute the global r_t and one p."""
    script = tmp_path / "ada_ranks.py"
    script.write_text(
        "import json, sys, torch, torch.distributed as dist\n"
        "from ganscale.augment.ada import AdaController\n"
        "from ganscale.runtime.base import Runtime\n"
        "dist.init_process_group('gloo')\n"
        "rt = Runtime(); rt.rank, rt.world_size = dist.get_rank(), dist.get_world_size()\n"
        "ada = AdaController(0.6, 1, 0.1, 10, torch.device('cpu'), rt.all_reduce_mean)\n"
        "# rank 0: 10 confident logits; rank 1: 6 positive, 14 negative -> global 16/30 positive\n"
        "logits = torch.ones(10) if rt.rank == 0 else torch.tensor([1.0] * 6 + [-1.0] * 14)\n"
        "ada.observe(logits); ada.end_step(0)\n"
        "out = {'rt': float(ada.rt), 'p': float(ada.p)}\n"
        "open(sys.argv[1] + f'/rank{rt.rank}.json', 'w').write(json.dumps(out))\n"
        "dist.destroy_process_group()\n"
    )
    run(torchrun(2, script, tmp_path), timeout=120)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1
    assert r0["rt"] == pytest.approx((10 + 6 - 14) / 30)  # 0.067 < 0.6: alone, rank 0 would say 1.0
    assert r0["p"] == 0.0


def test_ada_in_a_real_run_follows_its_heuristic_and_is_logged(tmp_path, corpus_cache):
    """32 images, 40 steps: every logged row lands right after an adjustment (log.every =
    ada_interval), so p moves by exactly one step, in the direction of sign(r_t - target)."""
    _, run_dir = _train(
        tmp_path,
        corpus_cache,
        "data.synthetic_n=32",
        "data.shuffle_buffer=16",
        "model.conditional=false",
        "train.max_steps=40",
        "checkpoint.every=0",
        "log.every=4",
        "augment.kind=ada",
        "augment.ada_interval=4",
        "augment.ada_kimg=1",
    )
    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == list(range(4, 41, 4))
    size = 8 * 4 / 1000
    p_prev = 0.0
    for r in rows:
        assert -1 <= r["augment/rt"] <= 1
        expected = min(1.0, max(0.0, p_prev + math.copysign(size, r["augment/rt"] - 0.6)))
        assert r["augment/p"] == pytest.approx(expected, abs=1e-5)
        p_prev = r["augment/p"]
    assert rows[-1]["augment/p"] > 0, "D is sure of 32 memorised images: p must have risen"


# --------------------------------------------------------------------------- LeCam


def test_lecam_penalty_hand_computed_and_its_ema():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.0])
    got = losses.lecam_penalty(real, fake, torch.tensor(2.0), torch.tensor(-1.0))
    assert float(got) == pytest.approx(((1 + 1) ** 2 + (3 + 1) ** 2) / 2 + ((-2 - 2) ** 2 + (0 - 2) ** 2) / 2)
    ema = losses.LeCamEMA(0.9, torch.device("cpu"))
    ema.update(real, fake)  # the first update sets the EMAs
    assert (float(ema.real), float(ema.fake)) == (2.0, -1.0)
    ema.update(torch.tensor([12.0]), torch.tensor([math.nan]))  # a NaN batch leaves a_F alone
    assert float(ema.real) == pytest.approx(0.9 * 2 + 0.1 * 12) and float(ema.fake) == -1.0
    again = losses.LeCamEMA(0.9, torch.device("cpu"))
    again.load_state_dict(json.loads(json.dumps(ema.state_dict())))
    assert (float(again.real), float(again.fake), again.updates) == (float(ema.real), -1.0, 2)


def test_lecam_and_lazy_penalty_terms_appear_exactly_where_they_should(tmp_path, corpus_cache):
    _, run_dir = _train(
        tmp_path,
        corpus_cache,
        "train.max_steps=7",
        "log.every=1",
        "loss.penalty=r1",
        "loss.penalty_every=3",
        "loss.lecam_weight=0.3",
    )
    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 8))
    # the penalty on D updates 0, 3, 6: the rows of steps 1, 4, 7
    assert [r["step"] for r in rows if "loss/penalty" in r] == [1, 4, 7]
    assert all("loss/lecam" in r and r["loss/lecam"] >= 0 for r in rows)
    _, off = _train(tmp_path, corpus_cache, "train.max_steps=2", "log.every=1", name="off")
    assert not any("loss/lecam" in r or "loss/penalty" in r for r in _rows(off))


def _first_steps(corpus_cache, run_dir, steps: int, *sets: str):
    cfg = _cfg(corpus_cache, "train.mixed_precision=no", *sets)
    rt = build_runtime(cfg)
    trainer = Trainer(plan_for(cfg, rt), run_dir, rt)
    try:
        records = [trainer.step() for _ in range(steps)]
        weights = {k: v.clone() for k, v in rt.module("d").state_dict().items()}
        return records, weights
    finally:
        trainer.close()
        rt.end()


def test_lazy_penalty_weight_is_multiplied_by_its_interval(corpus_cache, tmp_path):
    """At D update 0, penalty_every=3 with weight w trains exactly like penalty_every=1 with 3w;
    at update 1 the lazy run has no penalty at all."""
    r1 = "loss.penalty=r1"
    lazy, d_lazy = _first_steps(
        corpus_cache, tmp_path / "a", 1, r1, "loss.penalty_every=3", "loss.penalty_weight=2"
    )
    every, d_every = _first_steps(corpus_cache, tmp_path / "b", 1, r1, "loss.penalty_weight=6")
    assert float(lazy[0]["loss/d"]) == float(every[0]["loss/d"])
    assert all(torch.equal(d_lazy[k], d_every[k]) for k in d_lazy)
    two, _ = _first_steps(corpus_cache, tmp_path / "c", 2, r1, "loss.penalty_every=3")
    assert "loss/penalty" in two[0] and "loss/penalty" not in two[1]


# --------------------------------------------------------------------------- shared fake


def test_shared_fake_equals_a_second_forward_of_the_same_z(corpus_cache, tmp_path, monkeypatch):
    """One shared G forward trains G and D as the fresh-fake step would with the G phase's
    noise set to the D phase's; only G's BatchNorm statistics see one update instead of two."""
    from ganscale.train.noise import NoiseSource

    steps = 2
    sets = ("model.conditional=false", "train.ema_decay=0")
    shared = _trained_g(corpus_cache, tmp_path / "a", steps, *sets, "train.shared_fake=true")
    # the reference: the fresh-fake step, its G phase drawing the D phase's z
    draw = NoiseSource.draw
    with monkeypatch.context() as m:
        m.setattr(
            NoiseSource, "draw", lambda self, step, b, net, micro, critic=0: draw(self, step, b, "d", micro)
        )
        fresh_same_z = _trained_g(corpus_cache, tmp_path / "b", steps, *sets, "train.shared_fake=false")
    fresh = _trained_g(corpus_cache, tmp_path / "c", steps, *sets, "train.shared_fake=false")
    params = [k for k in shared if not k.startswith("buf:")]
    for k in params:
        torch.testing.assert_close(shared[k], fresh_same_z[k], rtol=1e-5, atol=1e-6)
    assert any((shared[k] - fresh[k]).abs().max() > 1e-4 for k in params)  # the fresh z differs
    counts = [k for k in shared if k.endswith("num_batches_tracked")]
    assert counts and all(int(shared[k]) == steps and int(fresh[k]) == 2 * steps for k in counts)


def _trained_g(corpus_cache, run_dir, steps: int, *sets: str) -> dict[str, torch.Tensor]:
    cfg = _cfg(corpus_cache, "train.mixed_precision=no", "train.channels_last=false", *sets)
    rt = build_runtime(cfg)
    trainer = Trainer(plan_for(cfg, rt), run_dir, rt)
    try:
        for _ in range(steps):
            trainer.step()
        G, D = rt.module("g"), rt.module("d")
        out = {f"g:{k}": v.clone() for k, v in G.named_parameters()}
        out |= {f"d:{k}": v.clone() for k, v in D.named_parameters()}
        out |= {f"buf:{k}": v.clone() for k, v in G.named_buffers()}
        return out
    finally:
        trainer.close()
        rt.end()


@pytest.mark.parametrize("extra", [["train.n_critic=2"], ["train.grad_accum=2"]], ids=lambda e: e[0])
def test_shared_fake_true_is_refused_where_the_algorithm_needs_fresh_fakes(extra):
    with pytest.raises(ConfigError, match="train.shared_fake") as e:
        load_config(TINY, ["train.shared_fake=true", *extra])
    assert "\n" not in str(e.value)
    auto = load_config(TINY, ["train.shared_fake=auto", *extra])
    assert shares_fake(auto, auto.grad_accum_for(1)) is False
    assert shares_fake(load_config(TINY, ["train.shared_fake=auto"]), 1) is True
    assert shares_fake(load_config(TINY), 1) is False  # off by default


def test_shared_fake_true_with_derived_accumulation_is_refused():
    cfg = load_config(TINY, ["train.shared_fake=true", "train.global_batch=16"])
    with pytest.raises(GanscaleError, match="train.shared_fake"):
        shares_fake(cfg, cfg.grad_accum_for(1))


def test_shared_fake_skip_redraws_a_fresh_fake_for_g(tmp_path, corpus_cache):
    """G's output NaN once under faults.nan_policy=skip: D's update is dropped, and G's is not
    (it draws a fresh fake instead of the shared NaN one), as in the fresh-fake step."""
    cfg = _cfg(corpus_cache, "train.shared_fake=true", "faults.nan_policy=skip", "train.max_steps=4")
    rt = build_runtime(cfg)
    trainer = Trainer(plan_for(cfg, rt), tmp_path / "run", rt)
    fired = []

    def hook(module, args, out):
        if trainer.state.step == 2 and not fired:
            fired.append(1)
            return out * math.nan
        return None

    rt.module("g").register_forward_hook(hook)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.run()
    finally:
        rt.end()
    events = [r for r in read_metrics(tmp_path / "run/metrics.jsonl") if r.get("event") == "non_finite"]
    assert [(e["step"], e["net"]) for e in events] == [(3, "d")]
    g = load_file(str(tmp_path / "run/checkpoints/step-0000004/G.safetensors"))
    assert all(torch.isfinite(v).all() for v in g.values())


# --------------------------------------------------------------------------- exact resume

RESUME_VARIANTS = {
    # ADA mid-interval at the checkpoint (adjustments after steps 2, 4, 6; saved at 3), LeCam,
    # lazy R1 through the augmentation, one G forward per step
    "ada+lecam+lazy-r1+shared": [
        "augment.kind=ada",
        "augment.ada_kimg=0.05",
        "augment.ada_interval=2",
        "loss.lecam_weight=0.3",
        "loss.penalty=r1",
        "loss.penalty_every=2",
        "train.shared_fake=true",
    ],
    # every DiffAugment transform, R1 through it, two critic updates (fresh fakes). (gp and
    # dragan draw their mixing weights from the global RNG, which checkpoints do not hold: their
    # resume is not exact with or without augmentation)
    "diffaugment+r1+n_critic": [
        "augment.kind=diffaugment",
        "model.conditional=false",
        "loss.adversarial=hinge",
        "loss.penalty=r1",
        "train.n_critic=2",
        "train.shared_fake=auto",
    ],
    # per-micro-batch augmentation under accumulation
    "ada+accum": ["augment.kind=ada", "augment.ada_kimg=0.05", "train.grad_accum=2"],
}


@pytest.mark.parametrize("variant", list(RESUME_VARIANTS))
def test_resume_is_exact_with_stabilisers(tmp_path, corpus_cache, variant):
    over = [*RESUME_VARIANTS[variant], "train.max_steps=6", "checkpoint.every=3", "log.every=1"]
    _train(tmp_path, corpus_cache, *over, name="straight")
    _train(tmp_path, corpus_cache, *over, "train.max_steps=3", name="split")
    result, _ = _train(tmp_path, corpus_cache, *over, name="split", resume="latest")
    assert result.step == 6
    for f in ("G.safetensors", "D.safetensors", "G_ema.safetensors"):
        a = load_file(str(tmp_path / "straight/checkpoints/step-0000006" / f))
        b = load_file(str(tmp_path / "split/checkpoints/step-0000006" / f))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{variant}: {f}:{k} differs after resume"
    states = [
        json.loads((tmp_path / r / "checkpoints/step-0000006/state.json").read_text())
        for r in ("straight", "split")
    ]
    assert states[0]["per_rank"] == states[1]["per_rank"]
    rows = [
        {k: v for k, v in r.items() if k.startswith(("loss/", "augment/"))}
        for r in _rows(tmp_path / "straight")
    ]
    resumed = [
        {k: v for k, v in r.items() if k.startswith(("loss/", "augment/"))} for r in _rows(tmp_path / "split")
    ]
    assert rows == resumed


@pytest.mark.distributed
def test_two_process_resume_is_exact_with_ada_and_lecam(tmp_path, corpus_cache):
    """2 ranks (torchrun, gloo, DDP, one shared G forward per step): ADA's per-rank statistics and
    LeCam's per-rank EMAs are saved per rank at step 3 (mid-interval) and restored, so the
    resumed run ends bit-identical."""
    sets = [
        "augment.kind=ada",
        "augment.ada_kimg=0.05",
        "augment.ada_interval=2",
        "loss.lecam_weight=0.3",
        "train.shared_fake=true",
    ]
    straight, split = tmp_path / "straight", tmp_path / "split"
    run(torchrun(2, "-m", "ganscale", *tiny_args(straight, corpus_cache, *sets)))
    run(torchrun(2, "-m", "ganscale", *tiny_args(split, corpus_cache, *sets, "train.max_steps=3")))
    run(torchrun(2, "-m", "ganscale", *tiny_args(split, corpus_cache, *sets), "--resume", "latest"))
    state = json.loads((split / "checkpoints/step-0000003/state.json").read_text())
    ranks = state["per_rank"]
    assert len(ranks) == 2 and ranks[0]["lecam"] != ranks[1]["lecam"]  # each rank's own batches
    assert ranks[0]["augment"]["ada"]["p"] == ranks[1]["augment"]["ada"]["p"]  # one p (all-reduced r_t)
    for f in ("G.safetensors", "D.safetensors"):
        a = load_file(str(straight / "checkpoints/step-0000006" / f))
        b = load_file(str(split / "checkpoints/step-0000006" / f))
        assert all(torch.equal(a[k], b[k]) for k in a), f"{f} differs after a 2-process resume"
