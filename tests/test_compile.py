"""train.compile with a gradient penalty (issue 21, item 3): the penalty's double backward
must run on the plain D, never through ``torch.compile`` (AOTAutograd has no double backward)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import REPO
from torch import nn

from ganscale.augment.ada import NoAugment
from ganscale.config import ModelConfig, load_config
from ganscale.models import build_discriminator
from ganscale.runtime import build_runtime
from ganscale.train.losses import plain_module
from ganscale.train.plan import plan_for
from ganscale.train.trainer import Trainer


class _Wrapper(nn.Module):  # the shape of DDP / a DeepSpeed engine
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def test_plain_module_unwraps_compiled_and_wrapped_networks() -> None:
    D = build_discriminator(ModelConfig(image_size=16, d_channels=8), [], norm="batch")
    compiled = torch.compile(D)  # lazy: nothing is compiled until it is called
    assert plain_module(compiled) is D
    assert plain_module(torch.compile(_Wrapper(D))) is D  # compile(DDP(D)), as Accelerate + compile
    assert plain_module(_Wrapper(torch.compile(D))) is D
    assert NoAugment().discriminator(compiled, plain=D) is D


@pytest.mark.slow
def test_compile_with_r1_and_no_augmentation_trains(tmp_path, corpus_cache) -> None:
    """The real Trainer, train.compile true, loss.penalty r1, augment.kind none: it raised
    "torch.compile with aot_autograd does not currently support double backward" at step 1."""
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [
            f"data.cache_dir={corpus_cache}",
            "model.conditional=false",
            "train.compile=true",
            "loss.penalty=r1",
            "augment.kind=none",
            "checkpoint.every=0",
            "log.sample_every=0",
        ],
    )
    rt = build_runtime(cfg)
    trainer = Trainer(plan_for(cfg, rt), tmp_path / "run", rt)
    try:
        assert hasattr(rt.D, "_orig_mod")  # really compiled
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(2):
                record = trainer.step()
                assert math.isfinite(float(record["loss/penalty"])) and float(record["skipped"]) == 0.0
    finally:
        trainer.close()
        rt.end()
