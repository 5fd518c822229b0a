"""Drill: the tracker fails (W&B unreachable, W&B misconfigured, TensorBoard unwritable): one
warning, tracking off, training goes on and finishes; metrics.jsonl is complete."""

from __future__ import annotations

import time
import warnings

import pytest
from faultlib import TINY, record, run_cli

from ganscale.config import load_config
from ganscale.outputs.tracking import NullTracker, WandbTracker, build_tracker, read_metrics
from ganscale.train.trainer import train

pytestmark = pytest.mark.faults


def _steps(run):
    return [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss/d" in r]


def test_wandb_unreachable_warns_and_training_goes_on(tmp_path, corpus_cache):
    """A real W&B client, online, against a closed port with a bogus key."""
    run = tmp_path / "run"
    t = time.monotonic()
    proc = run_cli(
        "train",
        str(TINY),
        "--out",
        str(run),
        "--set",
        f"data.cache_dir={corpus_cache}",
        "--set",
        "log.tracker=wandb",
        timeout=300,
        WANDB_MODE="online",
        WANDB_BASE_URL="http://127.0.0.1:9",
        WANDB_API_KEY="x" * 40,
        WANDB_INIT_TIMEOUT="10",
        WANDB_SILENT="false",
    )
    took = time.monotonic() - t
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wandb failed" in proc.stderr and "tracking is off" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _steps(run) == [2, 4, 6] and (run / "generator.safetensors").is_file()
    record(
        "W&B unreachable (online, closed port)",
        1,
        1,
        "warned once, trained to the end",
        run_s_with_WANDB_INIT_TIMEOUT_10=round(took, 1),
    )


@pytest.mark.parametrize("fault", ["wandb-bad-mode", "tensorboard-unwritable"])
def test_misconfigured_tracker_warns_and_training_goes_on(tmp_path, corpus_cache, monkeypatch, fault):
    run = tmp_path / "run"
    if fault == "wandb-bad-mode":
        monkeypatch.setenv("WANDB_MODE", "sometimes")
        tracker = "wandb"
    else:
        run.mkdir()
        (run / "tensorboard").write_text("a file where the log folder should be")
        tracker = "tensorboard"
    cfg = load_config(TINY, [f"data.cache_dir={corpus_cache}", f"log.tracker={tracker}"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(cfg, run)
    msgs = [str(w.message) for w in caught if "tracking is off" in str(w.message)]
    assert result.step == 6 and _steps(run) == [2, 4, 6]
    assert len(msgs) == 1, [str(w.message) for w in caught]
    record(f"tracker misconfigured ({fault})", 1, 1, "one warning, trained to the end", warning=msgs[0][:80])


def test_wandb_mode_is_a_parameter_the_tracker_does_not_read_the_environment(tmp_path, monkeypatch):
    """The mode is decided by ganscale.runtime.env and passed in; a bad one still only warns."""
    from ganscale.runtime import env

    monkeypatch.delenv("WANDB_MODE", raising=False)  # wandb.init reads (and validates) it too
    monkeypatch.setattr(env, "wandb_mode", lambda: pytest.fail("the tracker asked the environment"))
    ok = build_tracker("wandb", tmp_path / "a", "p", "n", {}, is_main=True, wandb_mode="disabled")
    assert isinstance(ok, WandbTracker) and not ok.broken
    ok.log({"x": 1.0}, step=1)
    ok.finish()
    other_rank = build_tracker("wandb", tmp_path, "p", "n", {}, is_main=False, wandb_mode="disabled")
    assert isinstance(other_rank, NullTracker)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bad = build_tracker("wandb", tmp_path / "b", "p", "n", {}, is_main=True, wandb_mode="sometimes")
        bad.log({"x": 1.0}, step=1)
    msgs = [str(w.message) for w in caught if "tracking is off" in str(w.message)]
    assert isinstance(bad, WandbTracker) and bad.broken and len(msgs) == 1, msgs
