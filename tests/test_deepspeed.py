"""The DeepSpeed backend: real engines, real processes (gloo on CPU), no mocks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from distlib import REPO, accelerate, has_deepspeed, max_diff, metrics, run, tiny_args, torchrun, worker

from ganscale.config import config_from_dict
from ganscale.errors import ConfigError
from ganscale.runtime.base import BatchPlan
from ganscale.runtime.deepspeed_config import ds_config
from ganscale.train.plan import d_norm_of

ZERO2_JSON = REPO / "launch" / "deepspeed" / "zero2.json"
needs_ds = pytest.mark.skipif(not has_deepspeed(), reason="deepspeed not installed")


# ----------------------------------------------------------------------------- config (no processes)
def test_zero3_is_refused_with_the_fix():
    from ganscale.errors import ConfigError

    with pytest.raises(ConfigError, match="deepspeed.zero_stage: 3 is not supported yet"):
        config_from_dict({"backend": "deepspeed", "deepspeed": {"zero_stage": 3}})


@pytest.mark.parametrize("stage", [0, 1, 2])
@pytest.mark.parametrize("penalty", ["gp", "r1", "dragan"])
def test_gradient_penalties_are_accepted_under_deepspeed(stage, penalty):
    """The config does not refuse them: they train under DeepSpeed (ZeRO-1/2 against the
    Accelerate backend in tests/test_deepspeed_penalties.py). configs/wgan-gp.yaml loads on it."""
    from ganscale.config import load_config

    adversarial = "wgan" if penalty == "gp" else "bce"
    cfg = config_from_dict(
        {
            "backend": "deepspeed",
            "deepspeed": {"zero_stage": stage},
            "loss": {"penalty": penalty, "adversarial": adversarial},
        }
    )
    assert cfg.loss.penalty == penalty and d_norm_of(cfg) == ("none" if penalty == "gp" else "batch")
    wgan_gp = load_config(
        REPO / "configs" / "wgan-gp.yaml", ["backend=deepspeed", f"deepspeed.zero_stage={stage}"]
    )
    assert wgan_gp.loss.penalty == "gp" and wgan_gp.backend == "deepspeed"


@pytest.mark.parametrize("stage", [1, 2])
def test_launch_json_files_are_what_the_backend_builds(stage):
    """launch/deepspeed/zeroN.json documents the built config; "auto" = from the ganscale config."""
    shipped = json.loads((REPO / "launch" / "deepspeed" / f"zero{stage}.json").read_text())
    cfg = config_from_dict(
        {
            "backend": "deepspeed",
            "deepspeed": {"zero_stage": stage},
            "train": {"mixed_precision": "bf16", "batch_size": 32, "grad_accum": 2},
        }
    )
    built = ds_config(cfg, BatchPlan.of(cfg, world_size=8), n_params=3_500_000)

    def check(ship: dict, got: dict, where: str) -> None:
        for k, v in ship.items():
            if k.startswith("//"):
                continue
            assert k in got, f"{where}{k} is in zero{stage}.json but not built"
            if isinstance(v, dict):
                check(v, got[k], f"{where}{k}.")
            elif v != "auto":
                assert got[k] == v, f"{where}{k}: file {v!r}, built {got[k]!r}"
        for k in got:
            assert k in ship, f"{where}{k} is built but missing from zero{stage}.json"

    check(shipped, built, "")
    assert built["train_batch_size"] == 32 * 2 * 8
    assert built["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    # ZeRO-1/2 buckets sized to the network (DeepSpeed's 5e8 default: ~2 GB of buffers per engine)
    assert built["zero_optimization"]["reduce_bucket_size"] == 3_500_032  # 3.5e6 up to a multiple of 1024
    assert built["zero_optimization"]["allgather_bucket_size"] == 3_500_032
    huge = ds_config(cfg, BatchPlan.of(cfg, world_size=8), n_params=10**9)
    assert huge["zero_optimization"]["reduce_bucket_size"] == 500_000_000


def test_user_deepspeed_json_merges_and_cannot_contradict(tmp_path):
    cfg = config_from_dict(
        {"backend": "deepspeed", "deepspeed": {"zero_stage": 2}, "train": {"max_steps": 1}}
    )
    f = tmp_path / "ds.json"
    f.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": "auto",
                "zero_optimization": {"stage": 2, "overlap_comm": True},
            }
        )
    )
    cfg.deepspeed.config = str(f)
    built = ds_config(cfg, BatchPlan.of(cfg, 1))
    assert built["zero_optimization"]["overlap_comm"] is True
    assert built["train_micro_batch_size_per_gpu"] == cfg.train.batch_size
    f.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(ConfigError, match="zero_optimization.stage"):
        ds_config(cfg, BatchPlan.of(cfg, 1))
    with pytest.raises(ConfigError, match="deepspeed.config: no such file"):
        config_from_dict({"backend": "deepspeed", "deepspeed": {"config": str(tmp_path / "nope.json")}})


# ----------------------------------------------------------------------------- engines, 2 processes
@needs_ds
@pytest.mark.distributed
def test_g_step_leaves_no_gradient_in_d_and_zero_matches_plain(tmp_path):
    """The real Trainer on two processes, grad_accum 2, fp32, BatchNorm in both nets, same seed
    and data: ZeRO-0/1/2 weights after 3 steps equal the Accelerate (DDP) backend's; after each
    step D holds no gradient anywhere (params, ZeRO partitions). Negative control: with the
    trainer patched to stop freezing D in the G phase, ZeRO-1 trains silently wrong and ZeRO-2
    refuses."""
    r = worker(2, "equivalence", tmp_path, "--stages", "0,1,2", "--steps", "3", "--accum", "2", "--negative")
    assert r["world_size"] == 2
    assert r["accelerate"]["d_grads_after_g"] == [0.0, 0.0, 0.0]
    for stage in (0, 1, 2):
        s = r[f"stage{stage}"]
        assert s["d_grads_after_g"] == [0.0, 0.0, 0.0], f"stage {stage}: D kept G-step gradients"
        assert s["diff"] < 1e-5, (
            f"stage {stage}: differs from the plain backend by {s['diff']}: {s['per_key']}"
        )
    assert r["stage1"]["unfrozen_diff"] > 1e-4, "negative control did not diverge: the test is blind"
    assert "Gradient computed twice" in r["stage2"]["unfrozen_error"]


@needs_ds
@pytest.mark.distributed
def test_deepspeed_resume_is_exact_and_elastic(tmp_path):
    """ZeRO-2 checkpoint of 2 processes: resumed on 2 it continues bit-exactly; resumed on 1
    process with grad_accum 2 (same global batch, same data slot by slot) it continues with
    the same weights (optimizer partitions merged)."""
    worker(2, "resume", tmp_path, "--stage", "2", "--steps", "2", "--save")
    assert max_diff(tmp_path / "continued-2.safetensors", tmp_path / "resumed-2.safetensors", False) == 0.0
    worker(1, "resume", tmp_path, "--stage", "2", "--steps", "2", "--accum", "2")
    assert max_diff(tmp_path / "loaded-2.safetensors", tmp_path / "loaded-1.safetensors", False) == 0.0
    assert max_diff(tmp_path / "continued-2.safetensors", tmp_path / "resumed-1.safetensors") < 1e-5


# ----------------------------------------------------------------------------- the real trainer
@needs_ds
@pytest.mark.distributed
@pytest.mark.slow
def test_train_zero2_matches_accelerate_resumes_and_samples_without_deepspeed(tmp_path, corpus_cache):
    """`ganscale train` on 2 processes: ZeRO-2 under torchrun vs Accelerate under
    `accelerate launch`, fp32: same checkpoints. The DeepSpeed run resumes (--resume) and its
    generator.safetensors samples with deepspeed made unimportable."""
    ds, plain = tmp_path / "ds", tmp_path / "plain"
    # The DeepSpeed backend keeps weights NCHW (it cannot flatten channels_last ones), so the
    # Accelerate run does too: other conv kernels round differently, and Adam turns sign flips
    # of near-zero gradients into lr-sized differences (5.7e-4 on another CPU in CI).
    same = ("train.channels_last=false",)
    run(
        torchrun(
            2,
            "-m",
            "ganscale",
            *tiny_args(ds, corpus_cache, "backend=deepspeed", f"deepspeed.config={ZERO2_JSON}", *same),
        )
    )
    run(accelerate(2, "-m", "ganscale", *tiny_args(plain, corpus_cache, *same)), ACCELERATE_USE_CPU="1")
    for name in ("G", "D", "G_ema"):
        a, b = ds / "checkpoints/step-0000006" / f"{name}.safetensors", plain / "checkpoints/step-0000006"
        assert max_diff(a, b / f"{name}.safetensors") < 1e-5, name
    ckpt = ds / "checkpoints/step-0000006"
    ran = json.loads((ckpt / "deepspeed.json").read_text())["ds_config"]  # zero2.json, "auto" filled in
    assert ran["zero_optimization"]["stage"] == 2 and ran["train_micro_batch_size_per_gpu"] == 8
    assert {"ds_G", "ds_D", "deepspeed.json", "G.safetensors", "state.json"} <= {
        p.name for p in ckpt.iterdir()
    }

    run(
        torchrun(
            2,
            "-m",
            "ganscale",
            *tiny_args(ds, corpus_cache, "backend=deepspeed", "train.max_steps=9"),
            "--resume",
            "latest",
        )
    )
    steps = [r["step"] for r in metrics(ds) if "event" not in r]
    assert steps == [2, 4, 6, 8, 9], steps
    assert (ds / "checkpoints/step-0000009/state.json").is_file()

    grid = tmp_path / "grid.png"
    block = (
        "import sys; sys.modules['deepspeed'] = None; from ganscale.cli import main; "
        f"main(['sample', {str(ds)!r}, '--all-conditions', '--n', '2', '--out', {str(grid)!r}])"
    )
    run([sys.executable, "-c", block])
    assert grid.stat().st_size > 0


@needs_ds
@pytest.mark.distributed
@pytest.mark.slow
def test_deepspeed_launcher_bf16_zero1(tmp_path, corpus_cache):
    """The `deepspeed` launcher (appends --local_rank) on 2 CPU processes, bf16 autocast with
    BatchNorm under ZeRO-1; the EMA export stays fp32."""
    out = tmp_path / "run"
    cmd = [
        Path(sys.executable).parent / "deepspeed",
        "--num_gpus",
        "2",
        "--master_port",
        str(_port()),
        "--module",
        "ganscale",
        *tiny_args(
            out, corpus_cache, "backend=deepspeed", "deepspeed.zero_stage=1", "train.mixed_precision=bf16"
        ),
    ]
    p = run(cmd)
    assert "--local_rank=1" in p.stdout + p.stderr  # the launcher did append it
    from safetensors.torch import load_file

    weights = load_file(str(out / "generator.safetensors"))
    assert {str(v.dtype) for v in weights.values() if v.is_floating_point()} == {"torch.float32"}
    rows = [r for r in metrics(out) if "event" not in r]
    assert rows[-1]["step"] == 6 and all(v == v for v in rows[-1].values() if isinstance(v, float))


def _port() -> int:
    from distlib import free_port

    return free_port()
