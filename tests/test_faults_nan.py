"""Drill: NaN / inf in G's output or in a loss, under faults.nan_policy skip | rollback | stop.

The fault is injected into ganscale's own networks with forward hooks (no library is
mocked): at a chosen step G's output, or D's output during the G phase (so only G's loss),
becomes NaN or inf. Each policy must detect it at that step, log it (a Python warning, a
tracker alert and a metrics.jsonl event) and never train on through it.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from faultlib import TINY, record, verify_checkpoint, verify_run

from ganscale.config import load_config
from ganscale.errors import GanscaleError
from ganscale.outputs.tracking import read_metrics
from ganscale.runtime import build_runtime
from ganscale.train.checkpoint import latest_checkpoint, read_state
from ganscale.train.trainer import NonFiniteLoss, Trainer, plan_for

pytestmark = pytest.mark.faults

AT = 4  # 0-based step index of the fault: reported as step 5
BASE = ("train.max_steps=8", "checkpoint.every=3", "checkpoint.keep=3", "log.sample_every=0")


class _Runaway(Exception):
    """The fault kept firing: the policy loops instead of stopping."""


def _trainer(tmp_path, cache, *overrides):
    cfg = load_config(TINY, [f"data.cache_dir={cache}", *BASE, *overrides])
    rt = build_runtime(cfg)
    run = tmp_path / "run"
    run.mkdir(parents=True, exist_ok=True)
    return Trainer(plan_for(cfg, rt), run, rt), run


def _inject(trainer, where: str, value: float, once: bool = True, limit: int = 20):
    """Forward hook: from step AT, G's output (where='g') or D's output in the G phase
    (where='g_loss') becomes ``value``. Returns the firing counter."""
    fired = {"n": 0}
    G, D = trainer.rt.module("g"), trainer.rt.module("d")

    def hook(module, args, out):
        if trainer.state.step != AT and (once or trainer.state.step < AT):
            return None
        if where == "g_loss" and D.weight_requires_grad():
            return None
        if once and fired["n"]:
            return None
        fired["n"] += 1
        if fired["n"] > limit:
            raise _Runaway(f"fault fired {fired['n']} times")
        if isinstance(out, tuple):
            return (out[0] * 0 + value, *out[1:])
        return out * 0 + value

    D.weight_requires_grad = lambda: any(p.requires_grad for p in D.parameters())
    (G if where == "g" else D).register_forward_hook(hook)
    return fired


def _run(trainer):
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = trainer.run()
        return result, [str(w.message) for w in caught]
    finally:
        trainer.rt.end()


def _events(run, kind):
    return [r for r in read_metrics(run / "metrics.jsonl") if r.get("event") == kind]


@pytest.mark.parametrize(
    "where,value",
    [("g", math.nan), ("g", math.inf), ("g_loss", math.nan)],
    ids=["G-out-nan", "G-out-inf", "G-loss-nan"],
)
def test_skip_policy_drops_the_update_and_logs_it(tmp_path, corpus_cache, where, value):
    trainer, run = _trainer(tmp_path, corpus_cache, "faults.nan_policy=skip")
    fired = _inject(trainer, where, value)
    result, msgs = _run(trainer)
    assert fired["n"] == 1 and result.step == 8
    events = _events(run, "non_finite")
    net = "d" if where == "g" else "g"
    assert [(e["step"], e["net"]) for e in events] == [(AT + 1, net)]
    assert any(f"non-finite {net.upper()} loss at step {AT + 1}" in m and "skipped" in m for m in msgs)
    state = read_state(latest_checkpoint(run).path)
    assert state["skipped_steps"] == 1
    # no NaN carried on: every checkpoint (weights, BatchNorm statistics, EMA) is finite
    assert verify_run(run) == [3, 6, 8]
    record(f"NaN/inf skip ({where}, {value})", 1, 1, f"detected at step {AT + 1}, 1 update skipped, finite")


def test_skip_policy_stops_when_the_weights_themselves_are_nan(tmp_path, corpus_cache):
    """A NaN weight makes every later step non-finite: skipping would spin to max_steps."""
    trainer, run = _trainer(tmp_path, corpus_cache, "faults.nan_policy=skip", "train.max_steps=40")
    G = trainer.rt.module("g")

    def poison(module, args):
        if trainer.state.step == AT:
            with torch.no_grad():
                next(G.parameters()).fill_(math.nan)

    G.register_forward_pre_hook(poison)
    with pytest.raises(NonFiniteLoss, match="weights") as e:
        _run(trainer)
    assert "\n" not in str(e.value) and f"step {AT + 1}" in str(e.value)
    assert latest_checkpoint(run).step == 3 and verify_run(run) == [3]
    record("NaN weight under skip", 1, 1, "stopped with one-line error (skip cannot recover)")


def test_stop_policy_raises_one_line_error_at_that_step(tmp_path, corpus_cache):
    trainer, run = _trainer(tmp_path, corpus_cache, "faults.nan_policy=stop")
    _inject(trainer, "g", math.nan)
    with pytest.raises(NonFiniteLoss) as e:
        _run(trainer)
    assert isinstance(e.value, GanscaleError) and "\n" not in str(e.value)
    assert f"step {AT + 1}" in str(e.value) and "nan_policy" in str(e.value)
    assert [ev["step"] for ev in _events(run, "non_finite")] == [AT + 1]
    assert verify_run(run) == [3]  # the last good checkpoint is left for a resume
    record("NaN stop", 1, 1, f"error at step {AT + 1}, checkpoint 3 intact")


def test_rollback_reloads_last_good_checkpoint_and_lowers_lr(tmp_path, corpus_cache):
    trainer, run = _trainer(
        tmp_path, corpus_cache, "faults.nan_policy=rollback", "faults.rollback_lr_factor=0.5"
    )
    base_lr = trainer.rt.opt["g"].param_groups[0]["lr"]
    _inject(trainer, "g", math.nan)
    result, msgs = _run(trainer)
    assert result.step == 8
    assert [e["step"] for e in _events(run, "rollback")] == [3]
    assert any("rolled back to step 3" in m for m in msgs)
    final = latest_checkpoint(run).path
    state = read_state(final)
    assert state["rollbacks"] == 1 and state["lr_factor"] == 0.5
    opt = torch.load(final / "optim_G.pt", weights_only=True)
    assert opt["param_groups"][0]["lr"] == pytest.approx(base_lr * 0.5)
    assert verify_checkpoint(final) == 8
    record("NaN rollback (one-off)", 1, 1, "reloaded step 3, lr x0.5, finished finite")


def test_rollback_of_a_recurring_nan_lowers_lr_again_then_stops(tmp_path, corpus_cache):
    """A fault that comes back after every rollback must lower the lr each time (not reset it
    to the checkpoint's) and end in an error, not loop forever."""
    trainer, run = _trainer(
        tmp_path, corpus_cache, "faults.nan_policy=rollback", "faults.rollback_lr_factor=0.5"
    )
    base_lr = trainer.rt.opt["g"].param_groups[0]["lr"]
    fired = _inject(trainer, "g", math.nan, once=False, limit=20)
    lrs = []
    orig = trainer.rollback

    def spy(reason):
        orig(reason)
        lrs.append(trainer.rt.opt["g"].param_groups[0]["lr"])

    trainer.rollback = spy
    with pytest.raises(NonFiniteLoss, match="rolled back") as e:
        _run(trainer)
    assert "\n" not in str(e.value)
    assert fired["n"] <= 20
    assert lrs == pytest.approx([base_lr * 0.5**k for k in range(1, len(lrs) + 1)])
    assert verify_run(run) == [3]
    record("NaN rollback (recurring)", 1, 1, f"{len(lrs)} rollbacks with lr halved each time, then error")


def test_a_skipped_step_logs_a_row_with_every_key(tmp_path, corpus_cache):
    """The record of a skipped step has the same keys as every other step's (NaN where there is
    no value, skipped = 1): the all-reduce of several ranks lines records up by key."""
    trainer, run = _trainer(tmp_path, corpus_cache, "faults.nan_policy=skip", "log.every=1")
    _inject(trainer, "g", math.nan)
    _run(trainer)
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "loss/d" in r]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert len({frozenset(r) for r in rows}) == 1
    assert [r["skipped"] for r in rows] == [1.0 if r["step"] == AT + 1 else 0.0 for r in rows]
    assert rows[AT]["grad_norm/d"] == "nan" and rows[AT]["grad_norm/g"] != "nan"  # D's update dropped


def test_check_every_reads_the_flags_only_at_check_steps(tmp_path, corpus_cache):
    """faults.check_every=3: the NaN flags, the data's end and the stop signal are read and
    agreed once before the first step and after steps 3, 6 and the last (7): one decision per
    window, none in between."""
    trainer, run = _trainer(
        tmp_path, corpus_cache, "faults.check_every=3", "train.max_steps=7", "checkpoint.every=3"
    )
    reads = []
    decide = trainer.faults.decide

    def spy(step, have, stop):
        reads.append(step)
        return decide(step, have, stop)

    trainer.faults.decide = spy
    result, _ = _run(trainer)
    assert result.step == 7 and reads == [0, 3, 6, 7]


def test_a_nan_between_checks_is_caught_at_the_window_end(tmp_path, corpus_cache):
    """faults.check_every=3, nan_policy=stop: a NaN at step 5 is reported for steps 4-6, and
    the checkpoint of step 6 is never written (no checkpoint holds an unchecked step)."""
    trainer, run = _trainer(
        tmp_path, corpus_cache, "faults.check_every=3", "faults.nan_policy=stop", "checkpoint.every=3"
    )
    _inject(trainer, "g", math.nan)
    with pytest.raises(NonFiniteLoss, match="steps 4-6") as e:
        _run(trainer)
    assert "\n" not in str(e.value)
    assert [ev["step"] for ev in _events(run, "non_finite")] == [6]
    assert verify_run(run) == [3]
