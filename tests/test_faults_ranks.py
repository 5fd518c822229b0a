"""Drills on two real processes (gloo): a fault on ONE rank, and every rank acts alike.

Each drill runs the real ``ganscale train`` CLI as two ranks of one process group
(``distlib.RankGroup``: each rank's own exit code and log), with the fault injected on one rank
into ganscale's own objects (``tests/dist_worker.py cli``: a forward hook on G, a cut data
stream, a full disk at one commit). A hang is a failure (every rank is killed at the timeout).
The same drill on one process gives the exit code and the action both ranks must match.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time

import pytest
from distlib import WORKER, RankGroup, metrics, ranks, worker
from faultlib import TINY, record, verify_run

from ganscale.train.checkpoint import latest_checkpoint, read_state

pytestmark = [pytest.mark.faults, pytest.mark.distributed]

AT = 4  # 0-based step of the fault: reported as step 5
BASE = ("train.max_steps=8", "checkpoint.every=3", "checkpoint.keep=3", "log.sample_every=0", "log.every=1")
TIMEOUT = 180.0  # generous on 2 shared cores; a drill takes ~10 s
EXIT = {"skip": 0, "rollback": 0, "stop": 2}  # as on one process


def _args(run, cache, fault: list[str], *sets: str) -> list:
    args = [sys.executable, WORKER, "cli", *fault, "--", "train", TINY, "--out", run]
    for s in (f"data.cache_dir={cache}", *BASE, *sets):
        args += ["--set", s]
    return args


def _actions(log: str) -> list[str]:
    """What the rank did about a fault: its warning / error lines, without the source path."""
    found = re.findall(r"(?:UserWarning: |error: )(.*(?:non-finite|data ended|checkpoint write).*)", log)
    return [line.strip() for line in found]


def _loss_rows(run):
    return [r for r in metrics(run) if "loss/d" in r]


@pytest.mark.parametrize("policy", ["skip", "rollback", "stop"])
def test_nan_on_one_rank_every_rank_takes_the_same_action(tmp_path, corpus_cache, policy):
    sets = (f"faults.nan_policy={policy}", "faults.rollback_lr_factor=0.5")
    ((rc1, log1),) = ranks(
        1, _args(tmp_path / "one", corpus_cache, ["--nan", f"0:{AT}"], *sets), tmp_path / "l1", TIMEOUT
    )
    t0 = time.monotonic()
    two = ranks(
        2, _args(tmp_path / "two", corpus_cache, ["--nan", f"1:{AT}"], *sets), tmp_path / "l2", TIMEOUT
    )
    seconds = time.monotonic() - t0
    (rc_a, log_a), (rc_b, log_b) = two
    assert "[drill] rank 1" in log_b and "[drill]" not in log_a  # the fault was on rank 1 only
    # exit codes as on one process; the same action, at the same step, on both ranks
    assert rc_a == rc_b == rc1 == EXIT[policy], (rc_a, rc_b, rc1, log_a[-2000:], log_b[-2000:])
    assert "Traceback" not in log_a + log_b
    acts_a, acts_b, acts_1 = _actions(log_a), _actions(log_b), _actions(log1)
    assert len(acts_a) == 1 and acts_a == acts_b, (acts_a, acts_b)
    assert f"non-finite D loss at step {AT + 1} on rank 1;" in acts_a[0]
    assert acts_1 == [acts_a[0].replace(" on rank 1", "")]
    run = tmp_path / "two"
    events = [(r["step"], r["event"]) for r in metrics(run) if "event" in r]
    rows = _loss_rows(run)
    assert len({frozenset(r) for r in rows}) == 1, "a metrics row with other keys"
    if policy == "skip":
        assert events == [(AT + 1, "non_finite")]
        assert [r["step"] for r in rows] == list(range(1, 9))
        assert [r["skipped"] for r in rows] == [1.0 if s == AT + 1 else 0.0 for s in range(1, 9)]
        assert read_state(latest_checkpoint(run).path)["skipped_steps"] == 1
        assert verify_run(run) == [3, 6, 8]  # every checkpoint finite on both ranks' weights
        outcome = f"both ranks skipped step {AT + 1}, exit 0, checkpoints finite"
    elif policy == "rollback":
        assert events == [(AT + 1, "non_finite"), (3, "rollback")]
        assert [r["step"] for r in rows] == list(range(1, 9)), "a replayed step logged twice"
        state = read_state(latest_checkpoint(run).path)
        assert state["rollbacks"] == 1 and state["lr_factor"] == 0.5 and state["world_size"] == 2
        assert verify_run(run) == [3, 6, 8]
        outcome = f"both ranks rolled back to step 3 at step {AT + 1} (lr x0.5), exit 0"
    else:
        assert events == [(AT + 1, "non_finite")]
        assert verify_run(run) == [3]
        assert acts_a[0].startswith(f"non-finite D loss at step {AT + 1} on rank 1; stopped")
        outcome = f"both ranks stopped at step {AT + 1}, exit 2 (one line each), checkpoint 3 intact"
    record(f"2 ranks: NaN on rank 1, {policy}", 1, 1, outcome, two_rank_run_s=round(seconds, 1))


def test_data_ending_on_one_rank_stops_every_rank_at_that_step(tmp_path, corpus_cache):
    """Rank 1's stream ends after 5 batches: both ranks stop before step 6's update, exit 2."""
    two = ranks(2, _args(tmp_path / "run", corpus_cache, ["--data-end", "1:5"]), tmp_path / "l", TIMEOUT)
    (rc_a, log_a), (rc_b, log_b) = two
    assert rc_a == rc_b == 2, (log_a[-2000:], log_b[-2000:])
    assert (
        _actions(log_a)
        == _actions(log_b)
        == ["the data ended on rank 1 at step 6: the data stream ended; every rank stopped there"]
    )
    assert verify_run(tmp_path / "run") == [3]
    record("2 ranks: data ends on rank 1", 1, 1, "both stopped at step 6 with one line, exit 2")


@pytest.mark.parametrize("policy", ["stop", "continue"])
def test_disk_full_on_one_rank_takes_every_rank_down_one_path(tmp_path, corpus_cache, policy):
    """Rank 0's commit of its 2nd checkpoint (step 6) meets ENOSPC; rank 1 wrote nothing wrong."""
    sets = (f"checkpoint.on_disk_full={policy}",)
    two = ranks(2, _args(tmp_path / "run", corpus_cache, ["--enospc", "0:2"], *sets), tmp_path / "l", TIMEOUT)
    (rc_a, log_a), (rc_b, log_b) = two
    assert rc_a == rc_b == (2 if policy == "stop" else 0), (log_a[-2000:], log_b[-2000:])
    acts = _actions(log_a)
    assert len(acts) == 1 and acts == _actions(log_b) and ".step-0000006.tmp" in acts[0]
    assert verify_run(tmp_path / "run") == ([3] if policy == "stop" else [3, 8])
    outcome = "both exit 2 (one line)" if policy == "stop" else "both warned and finished"
    record(f"2 ranks: disk full on rank 0, on_disk_full={policy}", 1, 1, outcome)


def test_sigterm_to_one_rank_checkpoints_and_stops_every_rank(tmp_path, corpus_cache):
    run = tmp_path / "run"
    sets = ("train.max_steps=100000", "checkpoint.every=0")
    group = RankGroup(2, _args(run, corpus_cache, [], *sets), tmp_path / "l")
    end = time.monotonic() + TIMEOUT
    while time.monotonic() < end and not (
        (run / "metrics.jsonl").is_file() and '"loss/d"' in (run / "metrics.jsonl").read_text()
    ):
        assert all(p.poll() is None for p in group.procs), group.text(0)[-2000:] + group.text(1)[-2000:]
        time.sleep(0.05)
    t0 = time.monotonic()
    group.procs[1].send_signal(signal.SIGTERM)  # rank 1 only
    (rc_a, log_a), (rc_b, log_b) = group.wait(TIMEOUT)
    seconds = time.monotonic() - t0
    assert rc_a == rc_b == 0, (log_a[-2000:], log_b[-2000:])
    last = max(r["step"] for r in _loss_rows(run))
    ref = latest_checkpoint(run)
    assert ref.step == last  # agreed in the step's one decision (faults.check_every=1: every step)
    assert verify_run(run) == [last] and read_state(ref.path)["world_size"] == 2
    record("2 ranks: SIGTERM to rank 1 only", 1, 1, f"both checkpointed step {last}, exit 0",
           signal_to_exit_s=round(seconds, 1))  # fmt: skip


def test_training_eval_gives_the_same_numbers_on_two_ranks_as_on_one(tmp_path, corpus_cache):
    """The trainer's eval hook (eval.every > 0) on 2 real processes: each rank generates its
    share, the features are gathered over gloo; the numbers equal the one-process ones."""
    from ganscale.config import load_config
    from ganscale.train.trainer import train

    run = tmp_path / "run"
    train(load_config(TINY, [f"data.cache_dir={corpus_cache}", "train.max_steps=3"]), run)
    one = worker(1, "eval", tmp_path / "one", "--source-run", str(run), "--eval-n", "64")
    worker(2, "eval", tmp_path / "two", "--source-run", str(run), "--eval-n", "64")
    r0, r1 = (json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (one["world_size"], r0["world_size"], r0["step"]) == (1, 2, 3)
    m1, m2 = one["metrics"], r0["metrics"]
    assert r1["metrics"] == m2  # every rank returns the same numbers
    keys = set(m1) - {"eval/seconds"}
    assert {"eval/fid_classifier", "eval/acc_joint"} <= keys and keys == set(m2) - {"eval/seconds"}
    for k in sorted(keys):
        assert m2[k] == pytest.approx(m1[k], rel=1e-5, abs=1e-6), k
    record("2 ranks: training-time eval", 1, 1, f"{len(keys)} metrics equal to 1 process (rel 1e-5)")
