"""ganscale.runtime.env: the one module that reads the process environment."""

from __future__ import annotations

import os

import pytest

from ganscale.errors import GanscaleError
from ganscale.runtime import env

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_MIXED_PRECISION")


@pytest.fixture
def bare(monkeypatch):
    """No launcher variables, as under a plain `ganscale train`."""
    for name in (*LAUNCH_VARS, "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_launch_env_without_and_with_a_launcher(bare):
    got = env.launch_env()
    assert (got.rank, got.world_size, got.local_rank, got.launched) == (None, None, 0, False)
    assert not got.accelerate_use_deepspeed and got.accelerate_mixed_precision == "no"
    for name, value in zip(LAUNCH_VARS, ("3", "4", "1", "TRUE", "bf16"), strict=True):
        bare.setenv(name, value)
    got = env.launch_env()
    assert (got.rank, got.world_size, got.local_rank, got.launched) == (3, 4, 1, True)
    assert got.accelerate_use_deepspeed and got.accelerate_mixed_precision == "bf16"
    bare.setenv("RANK", "zero")
    with pytest.raises(GanscaleError, match="RANK='zero': expected an integer"):
        env.launch_env()


def test_set_local_rank_keeps_an_exported_value(bare):
    env.set_local_rank("2")
    assert env.launch_env().local_rank == 2
    env.set_local_rank(5)  # the launcher exported LOCAL_RANK too: that one wins
    assert env.launch_env().local_rank == 2


def test_single_process_group_only_without_a_launcher(bare):
    env.export_single_process_group()
    got = env.launch_env()
    assert (got.rank, got.world_size, got.local_rank) == (0, 1, 0)
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and int(os.environ["MASTER_PORT"]) > 0
    bare.setenv("RANK", "1")
    bare.setenv("WORLD_SIZE", "2")
    bare.setenv("MASTER_PORT", "29511")
    env.export_single_process_group()
    assert (env.launch_env().rank, os.environ["WORLD_SIZE"], os.environ["MASTER_PORT"]) == (1, "2", "29511")


def test_ds_accelerator_default_only_without_cuda(monkeypatch):
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    env.default_ds_accelerator(cuda_available=True)
    assert "DS_ACCELERATOR" not in os.environ
    env.default_ds_accelerator(cuda_available=False)
    assert os.environ["DS_ACCELERATOR"] == "cpu"
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    env.default_ds_accelerator(cuda_available=False)
    assert os.environ["DS_ACCELERATOR"] == "cuda"


def test_wandb_mode_decision(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert env.wandb_mode() == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert env.wandb_mode() == "online"
    (tmp_path / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert env.wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # an explicit mode wins over a key
    assert env.wandb_mode() == "disabled"


def test_inception_and_peak_tflops_variables(monkeypatch):
    monkeypatch.delenv(env.INCEPTION_ENV, raising=False)
    monkeypatch.delenv(env.PEAK_TFLOPS_ENV, raising=False)
    assert env.inception_weights() is None and env.peak_tflops_override() is None
    monkeypatch.setenv(env.INCEPTION_ENV, "")
    assert env.inception_weights() is None
    monkeypatch.setenv(env.INCEPTION_ENV, "~/inception.pt")
    assert env.inception_weights() == "~/inception.pt"
    monkeypatch.setenv(env.PEAK_TFLOPS_ENV, "989.5")
    assert env.peak_tflops_override() == 989.5
    for bad in ("fast", "0", "-3", "nan"):
        monkeypatch.setenv(env.PEAK_TFLOPS_ENV, bad)
        with pytest.raises(GanscaleError, match=f"{env.PEAK_TFLOPS_ENV}=.*positive number"):
            env.peak_tflops_override()
