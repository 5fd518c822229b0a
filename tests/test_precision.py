"""Mixed precision on the paths that failed at step 1 (issue 21, item 1), on the CPU.

fp16 autocast really runs fp16 convolutions on the CPU with this torch (2.13), and
``torch.amp.GradScaler("cpu")`` is the real scaler, so the mechanism of the CUDA failure shows
here: the gradient penalties differentiated D's fp16 output times a loss scale of 65,536 (NaN
at step 1), and a step skipped for a non-finite loss never lowered that scale.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import REPO
from distlib import has_deepspeed

from ganscale.config import ModelConfig, config_from_dict, load_config
from ganscale.errors import ConfigError
from ganscale.models import build_discriminator
from ganscale.runtime import build_runtime
from ganscale.train.losses import gradient_penalty
from ganscale.train.plan import plan_for
from ganscale.train.trainer import Trainer

TINY = REPO / "configs" / "tiny.yaml"
PENALTIES = ["gp", "r1", "dragan"]


def _d(norm: str = "batch") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_discriminator(ModelConfig(image_size=16, d_channels=8), [], norm=norm)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("kind", PENALTIES)
def test_penalty_is_float32_whatever_the_autocast(kind: str, dtype: torch.dtype) -> None:
    """The penalty inside a bf16/fp16 autocast equals the float32 one: its input gradient is
    computed with autocast off (under fp16 a 16-bit pass is off by 1e-3 or more, or inf)."""
    D = _d("none" if kind == "gp" else "batch")
    g = torch.Generator().manual_seed(1)
    real = torch.rand(8, 3, 16, 16, generator=g) * 2 - 1
    fake = (torch.rand(8, 3, 16, 16, generator=g) * 2 - 1).to(dtype)  # G's output under autocast
    base = gradient_penalty(kind, D, real, fake.float(), None, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=dtype):
        got = gradient_penalty(kind, D, real, fake, None, generator=torch.Generator().manual_seed(2))
    assert got.dtype == torch.float32 and torch.isfinite(got)
    torch.testing.assert_close(got, base, rtol=1e-6, atol=1e-7)


OWN_PROCESS = "GANSCALE_TEST_OWN_PROCESS"


def _ran_in_own_process(request) -> bool:
    """Run this test again in a fresh pytest process, and say whether that was done (the caller
    then returns). A DeepSpeed runtime built in-process leaves its one-process group up (see
    DeepSpeedRuntime.end): later tests in this process would inherit it."""
    if os.environ.get(OWN_PROCESS) == "1":
        return False
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid]
    r = subprocess.run(
        args, cwd=REPO, env={**os.environ, OWN_PROCESS: "1"}, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-2000:])
    return True


def _trainer(tmp_path, cache, *overrides: str) -> Trainer:
    cfg = load_config(
        TINY,
        [
            f"data.cache_dir={cache}",
            "model.conditional=false",
            "train.mixed_precision=fp16",
            "checkpoint.every=0",
            "log.sample_every=0",
            *overrides,
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "fp16 autocast on CPU is slow": what is tested here
        rt = build_runtime(cfg)
        return Trainer(plan_for(cfg, rt), tmp_path / "run", rt)


@pytest.mark.parametrize("kind", PENALTIES)
def test_fp16_penalty_trains_with_the_real_trainer(tmp_path, corpus_cache, kind: str) -> None:
    """fp16 + a gradient penalty under faults.nan_policy=stop: finite losses from step 1 (it
    stopped there with a non-finite D loss before: the penalty's pass overflowed fp16)."""
    adversarial = "wgan" if kind == "gp" else "bce"
    trainer = _trainer(tmp_path, corpus_cache, f"loss.penalty={kind}", f"loss.adversarial={adversarial}")
    try:
        assert trainer.rt.loss_scale("d") == 65536.0  # the real scaler, at its default start
        for _ in range(3):
            record = trainer.step()
            assert float(record["skipped"]) == 0.0
            assert math.isfinite(float(record["loss/penalty"])) and math.isfinite(float(record["loss/d"]))
    finally:
        trainer.close()
        trainer.rt.end()


BACKENDS = [
    pytest.param((), id="accelerate"),
    pytest.param(  # fp16 under DeepSpeed: stage 0 (ZeRO-1/2 refused, test below)
        ("backend=deepspeed", "deepspeed.zero_stage=0"),
        id="deepspeed-zero0",
        marks=pytest.mark.skipif(not has_deepspeed(), reason="deepspeed not installed"),
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_skipped_step_lowers_the_fp16_loss_scale(request, tmp_path, corpus_cache, backend) -> None:
    """faults.nan_policy=skip drops D's update at the faulty step and halves D's loss scale
    (GradScaler's backoff_factor), as an overflowing step does; it stayed before, so a scale
    too large for fp16 made every later step non-finite."""
    if backend and _ran_in_own_process(request):
        return
    trainer = _trainer(tmp_path, corpus_cache, "faults.nan_policy=skip", *backend)
    rt = trainer.rt
    G = rt.module("g")

    def nan_output(module, args, out):  # G's output in step 1's D phase only
        if trainer.state.step == 1 and not nan_output.fired:
            nan_output.fired = True
            return out * math.nan
        return None

    nan_output.fired = False
    G.register_forward_hook(nan_output)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.step()
            before = rt.loss_scale("d")
            record = trainer.step()
        assert nan_output.fired and float(record["skipped"]) == 1.0
        assert rt.loss_scale("d") == before * 0.5
        assert trainer.state.skipped_steps == 1
    finally:
        trainer.close()
        rt.end()


@pytest.mark.parametrize("stage", [1, 2])
def test_fp16_under_zero_1_2_is_refused_in_one_line(stage: int) -> None:
    """Each rank's GradScaler would see only its own gradient partition: ranks could disagree
    on skipping a step and on the loss scale (issue 21, item 5). Refused before any side effect."""
    with pytest.raises(ConfigError) as e:
        config_from_dict(
            {"backend": "deepspeed", "deepspeed": {"zero_stage": stage}, "train": {"mixed_precision": "fp16"}}
        )
    msg = str(e.value)
    assert "\n" not in msg and "train.mixed_precision" in msg and f"ZeRO-{stage}" in msg
    assert "bf16" in msg and "zero_stage=0" in msg
    for ok in ({"zero_stage": stage, "mp": "bf16"}, {"zero_stage": 0, "mp": "fp16"}):
        config_from_dict(
            {
                "backend": "deepspeed",
                "deepspeed": {"zero_stage": ok["zero_stage"]},
                "train": {"mixed_precision": ok["mp"]},
            }
        )


def test_cuda_settings_come_from_the_config(monkeypatch) -> None:
    """train.cudnn_benchmark, train.matmul_precision and train.deterministic reach torch on
    CUDA, and nothing changes on the CPU (the flags are process-wide: restored afterwards)."""
    from ganscale.runtime.base import configure_cuda

    saved = (
        torch.backends.cudnn.benchmark,
        torch.get_float32_matmul_precision(),
        torch.backends.cudnn.allow_tf32,
    )
    try:
        torch.backends.cudnn.benchmark = False
        torch.set_float32_matmul_precision("highest")
        configure_cuda(config_from_dict({}), torch.device("cpu"))
        assert torch.backends.cudnn.benchmark is False and torch.get_float32_matmul_precision() == "highest"
        configure_cuda(config_from_dict({}), torch.device("cuda", 0))  # the defaults: autotune, TF32
        assert torch.backends.cudnn.benchmark is True and torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.allow_tf32 is True
        exact = config_from_dict({"train": {"cudnn_benchmark": False, "matmul_precision": "highest"}})
        configure_cuda(exact, torch.device("cuda", 0))
        assert torch.backends.cudnn.benchmark is False and torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.cudnn.allow_tf32 is False
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
        configure_cuda(config_from_dict({"train": {"deterministic": True}}), torch.device("cuda", 0))
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark is False
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = saved[0]
        torch.set_float32_matmul_precision(saved[1])
        torch.backends.cudnn.allow_tf32 = saved[2]


def test_compile_under_deepspeed_is_refused_in_one_line() -> None:
    """It was silently not applied (a warning at setup, issue 21, item 7)."""
    with pytest.raises(ConfigError) as e:
        config_from_dict({"backend": "deepspeed", "train": {"compile": True}})
    assert (
        "\n" not in str(e.value) and "train.compile" in str(e.value) and "backend=accelerate" in str(e.value)
    )
    assert config_from_dict({"backend": "accelerate", "train": {"compile": True}}).train.compile


@pytest.mark.skipif(not has_deepspeed(), reason="deepspeed not installed")
def test_zero2_engines_get_buckets_sized_to_their_network(request, tmp_path, corpus_cache) -> None:
    if _ran_in_own_process(request):
        return
    cfg = load_config(
        TINY,
        [
            f"data.cache_dir={corpus_cache}",
            "backend=deepspeed",
            "deepspeed.zero_stage=2",
            "checkpoint.every=0",
        ],
    )
    rt = build_runtime(cfg)
    trainer = Trainer(plan_for(cfg, rt), tmp_path / "run", rt)
    try:
        for net in ("g", "d"):
            n = sum(p.numel() for p in rt.module(net).parameters())
            assert n <= rt.engines[net].zero_reduce_bucket_size() < n + 1024
        trainer.step()
    finally:
        trainer.close()
        rt.end()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_suite_trains_on_the_gpu_deterministically(tmp_path, corpus_cache) -> None:
    """On a CUDA machine nothing forces the CPU (tests/conftest.py), and the tests' tiny config
    turns deterministic kernels on, which the bit-exact resume tests rely on there."""
    assert os.environ.get("DS_ACCELERATOR") != "cpu"
    cfg = load_config(TINY, [f"data.cache_dir={corpus_cache}", "checkpoint.every=0", "log.sample_every=0"])
    rt = build_runtime(cfg)
    trainer = Trainer(plan_for(cfg, rt), tmp_path / "run", rt)
    try:
        assert rt.device.type == "cuda" and cfg.train.deterministic
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        record = trainer.step()
        assert math.isfinite(float(record["loss/d"])) and record["loss/d_class"].device.type == "cuda"
    finally:
        trainer.close()
        rt.end()
