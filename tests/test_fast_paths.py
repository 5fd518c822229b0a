"""Every fast-path switch keeps training correct: same loss trajectory within tolerance.

Each run builds a real Trainer on the tiny config with the same seed (same initial weights,
same noise) and the same in-memory batches, takes a few real steps (D phase + G phase) and
compares the losses with the plain fp32 run.
"""

import pytest
import torch
from conftest import REPO

from ganscale.bench import Bench, BenchOptions
from ganscale.config import load_config

TINY = str(REPO / "configs/tiny.yaml")
STEPS = 4


def _trajectory(tiny_overrides, extra):
    cfg = load_config(TINY, [*tiny_overrides, "optim.impl=foreach", *extra])
    bench = Bench(cfg, BenchOptions())
    try:
        rows = []
        for _ in range(STEPS):
            rec = bench.ganscale_step()
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
