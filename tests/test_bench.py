"""`ganscale bench` on the tiny config: it runs, prints valid JSON, profiles, counts FLOPs."""

import json

import pytest
import torch
import typer
from conftest import REPO
from typer.testing import CliRunner

from ganscale.bench.plain_loop import PlainLoop
from ganscale.bench.step_bench import BenchOptions, count_flops, register, run_bench
from ganscale.config import load_config

TINY = str(REPO / "configs/tiny.yaml")


def _app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)  # a group, so the command is called by its name as in `ganscale bench`
    register(app)
    return app


def _bench(args, tiny_overrides):
    sets = [a for o in tiny_overrides for a in ("--set", o)]
    app = _app()
    result = CliRunner().invoke(app, ["bench", TINY, *args, *sets])
    assert result.exit_code == 0, result.output
    return result.stdout, json.loads(result.stdout.strip().splitlines()[-1])


def test_bench_prints_json_with_baseline(tiny_overrides):
    out, row = _bench(["--steps", "2", "--warmup", "1", "--repeats", "2", "--baseline"], tiny_overrides)
    for key in (
        "images_per_s",
        "ms_per_step",
        "data_wait_fraction",
        "peak_mem_mb",
        "baseline_images_per_s",
        "ratio",
        "flops_per_image",
        "achieved_tflops",
    ):
        assert key in row, key
    assert row["images_per_s"] > 0 and row["baseline_images_per_s"] > 0
    assert row["ratio"] == pytest.approx(row["images_per_s"] / row["baseline_images_per_s"], rel=0.01)
    assert row["data"].startswith("memory") and row["steps"] == 2
    assert row["mfu"] is None  # CPU: no peak to compare with
    assert "ratio" in out.splitlines()[-2]  # human-readable lines come before the JSON


def test_bench_real_loader_and_profile(tmp_path, tiny_overrides):
    trace = tmp_path / "trace.json"
    out, row = _bench(
        [
            "--steps",
            "1",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--data",
            "shards",
            "--no-flops",
            "--profile",
            "--profile-out",
            str(trace),
        ],
        tiny_overrides,
    )
    assert row["data"].startswith("loader") and 0 <= row["data_wait_fraction"] <= 1
    assert "flops_per_image" not in row and "ratio" not in row
    assert "events" in json.loads(trace.read_text()) or "traceEvents" in json.loads(trace.read_text())
    assert "Self CPU" in out and row["profile_trace"] == str(trace)


def test_flops_match_the_analytic_count(tiny_overrides):
    """FlopCounterMode on a G + D forward agrees with counting the convolutions by hand."""
    cfg = load_config(TINY, [*tiny_overrides, "model.conditional=false"])
    loop = PlainLoop(cfg, [], torch.device("cpu"))
    batch, c, z = 4, cfg.model.g_channels, cfg.model.z_dim
    x = torch.randn(batch, z)
    with torch.no_grad():
        flops = count_flops(lambda: loop.D(loop.G(x)))
    # MACs = in x out x k x k x positions (input positions for a transposed conv, output for a
    # conv). 16 px: G 1 -> 4 -> 8 -> 16 with widths 2c, c, 3; D 16 -> 8 -> 4 with c, 2c; linear head.
    g = z * 2 * c * 16 * 1 + 2 * c * c * 16 * 16 + c * 3 * 16 * 64
    d = 3 * c * 16 * 64 + c * 2 * c * 16 * 16 + 2 * c * 4 * 4
    assert flops == 2 * batch * (g + d)


def test_bench_rejects_bad_options(tiny_overrides):
    cfg = load_config(TINY, tiny_overrides)
    with pytest.raises(ValueError):
        run_bench(cfg, BenchOptions(steps=0))
