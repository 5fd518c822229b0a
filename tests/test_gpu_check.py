"""benchmarks/gpu_check.sh --dry-run: the device check's every step at tiny sizes on this
machine, so the script cannot rot before a GPU runs it (issue 21). Its last line is the JSON
summary the GPU run prints."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_dry_run_runs_every_step_and_ends_with_one_json_summary(tmp_path):
    env = dict(os.environ, GANSCALE_PYTHON=sys.executable, WANDB_MODE="offline")
    p = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "check")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary == json.loads((tmp_path / "check" / "summary.json").read_text())
    steps = summary["steps"]
    expected = (
        ["tests"]
        + [f"train:{c}:{m}" for c in ("dcgan", "acgan", "wgan-gp") for m in ("bf16", "fp16")]
        + [
            "bench:fp32",
            "bench:bf16+channels_last",
            "bench:bf16+channels_last+compile",
            "loader",
            "deepspeed",
        ]
    )
    assert list(steps) == expected
    bad = {k: v for k, v in steps.items() if v["status"] != "ok" and k != "deepspeed"}
    assert not bad, bad
    assert summary["ok"] is True and summary["dry_run"] is True
    # the dry run skips DeepSpeed (a minute of start-up here); the device runs it when installed
    assert steps["deepspeed"]["status"] == "skipped" and steps["deepspeed"]["reason"]
    assert steps["tests"]["failed"] == 0 and steps["tests"]["passed"] + steps["tests"]["skipped"] >= 3
    for c in ("dcgan", "acgan", "wgan-gp"):
        for m in ("bf16", "fp16"):
            row = steps[f"train:{c}:{m}"]
            assert row["step"] == 1 and row["non_finite_events"] == 0 and math.isfinite(row["loss_d"])
    for v in ("fp32", "bf16+channels_last", "bf16+channels_last+compile"):
        row = steps[f"bench:{v}"]
        assert row["images_per_s"] > 0 and row["baseline_images_per_s"] > 0 and row["ratio"] > 0
        assert row["peak_mem_mb"] > 0 and "mfu" in row
    assert steps["loader"]["workers"] == 2 and 0 <= steps["loader"]["data_wait_fraction"] <= 1
    assert steps["loader"]["loader_images_per_s"] > 0
