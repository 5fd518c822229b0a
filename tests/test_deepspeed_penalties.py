"""Gradient penalties (GP, R1, DRAGAN) under DeepSpeed ZeRO-1/2: real engines, 2 processes.

The penalty differentiates D's output with respect to its input (``torch.autograd.grad`` with
``create_graph``) before the whole D loss goes through the engine's backward. Through the
engine's forward that inner pass set off DeepSpeed's backward epilogue (``IndexError`` in
``reduce_ipg_grads``); the penalty now runs on the plain D (see ``losses._input_grad``) and its
gradient reaches D's parameters once, in the engine's backward.

Compared with the Accelerate (DDP) backend on the same seed and data (fp32, grad_accum 2 so
the accumulation boundary is crossed, channels_last off on both sides as in
tests/test_deepspeed.py): D's gradient norm at every step and all weights after 3 steps. A
negative control, the same Accelerate run with the penalty counted twice (twice its weight),
shows that the comparison would see a penalty gradient reduced twice (or dropped).

The worker also reads the timeout of the process groups (faults.collective_timeout_s): the
world group the Accelerate runtime made and DeepSpeed's own data-parallel clone of it.

This file is also the worker (run under torchrun):

    torchrun --nproc_per_node 2 tests/test_deepspeed_penalties.py OUT STAGE
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from distlib import has_deepspeed, run, torchrun

PENALTIES = ("gp", "r1", "dragan")
ADVERSARIAL = {"gp": "wgan", "r1": "bce", "dragan": "bce"}  # WGAN-GP; R1 and DRAGAN with BCE
# R1 of a fresh D is ~1e-6 (its input gradient is tiny): a large weight makes the term shape
# D's gradient measurably in 3 steps; GP and DRAGAN (~1 at init) use the usual 10.
WEIGHT = {"gp": 10.0, "r1": 1e4, "dragan": 10.0}
STEPS, BATCH, ACCUM = 3, 4, 2

needs_ds = pytest.mark.skipif(not has_deepspeed(), reason="deepspeed not installed")


def test_penalty_input_pass_runs_on_the_plain_network():
    """The penalty's forward bypasses a wrapper (one child ``module``, no parameters of its
    own: DDP, a DeepSpeed engine) but never takes a part of a network that merely has a
    child called ``module``."""
    from torch import nn

    from ganscale.train.losses import gradient_penalty, plain_module

    class D(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.full((3, 4, 4), 0.25))

        def forward(self, x, labels=None):
            return (x * self.w).flatten(1).sum(1), []

    class Wrapper(nn.Module):  # the shape of DDP / DeepSpeedEngine
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            raise AssertionError("the penalty's input-gradient pass went through the wrapper")

    class HasModuleChild(nn.Module):  # a network, not a wrapper: it has a parameter of its own
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(2, 2)
            self.scale = nn.Parameter(torch.ones(()))

    d = D()
    assert plain_module(Wrapper(d)) is d and plain_module(d) is d
    net = HasModuleChild()
    assert plain_module(net) is net
    x = torch.randn(4, 3, 4, 4)
    pen = gradient_penalty("r1", Wrapper(d), x, None, None)
    pen.backward()
    assert d.w.grad is not None and d.w.grad.abs().sum() > 0  # and it still trains D


@needs_ds
@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_penalties_under_zero_train_like_accelerate(tmp_path, stage):
    run(torchrun(2, Path(__file__), tmp_path, str(stage)), timeout=420)
    report = json.loads((tmp_path / "rank0.json").read_text())
    assert report["world_size"] == 2
    for group, seconds in report["timeout_s"].items():  # faults.collective_timeout_s, not 1800
        assert abs(seconds - 600) < 1e-3, f"{group} process group waits {seconds} s"
    for pen in PENALTIES:
        r = report[pen]
        ref, ds = r["accelerate"], r["deepspeed"]
        assert all(p > 0 for p in ds["penalty"]), f"{pen}: no penalty computed: {ds['penalty']}"
        for a, b in zip(ref["penalty"], ds["penalty"], strict=True):
            assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (
                f"{pen}: penalty {ds['penalty']} vs {ref['penalty']}"
            )
        # the penalty's gradient reaches D once: D's reduced gradient norm is the DDP one
        for a, b in zip(ref["d_norm"], ds["d_norm"], strict=True):
            assert abs(a - b) <= 1e-4 * abs(a), (
                f"{pen}, ZeRO-{stage}: D grad norm {ds['d_norm']} vs {ref['d_norm']}"
            )
        assert ds["d_grads_after_g"] == [0.0] * STEPS, f"{pen}: D kept gradients after the step"
        assert r["diff"] < 1e-5, f"{pen}, ZeRO-{stage}: weights differ from Accelerate by {r['diff']}"
        # negative control: the penalty counted twice moves D's gradient norm and the weights
        twice = r["twice"]["d_norm"]
        moved = max(abs(a - b) / abs(a) for a, b in zip(ref["d_norm"], twice, strict=True))
        assert moved > 1e-3, f"{pen}: a doubled penalty moves D's grad norm by only {moved}: blind test"
        assert r["twice_diff"] > 1e-4, f"{pen}: a doubled penalty moves the weights by {r['twice_diff']}"


# ----------------------------------------------------------------------------- the worker
def _worker(out: Path, stage: int) -> None:
    import dist_worker as dw
    import torch

    from ganscale.config import config_from_dict

    torch.set_num_threads(1)
    base = dw.make_cfg

    def with_penalty(pen: str, weight: float):
        def make(backend: str, stage: int, batch: int, accum: int, precision: str = "no"):
            d = base(backend, stage, batch, accum, precision).to_dict()
            d["loss"].update(penalty=pen, adversarial=ADVERSARIAL[pen], penalty_weight=weight)
            d["model"]["d_norm"] = "none"  # WGAN-GP refuses BatchNorm in D; the same for all three
            return config_from_dict(d)

        return make

    def train(backend: str, pen: str, weight: float, name: str):
        dw.make_cfg = with_penalty(pen, weight)
        try:
            trainer = dw.build(backend, stage, BATCH, ACCUM, out / name)
        finally:
            dw.make_cfg = base
        r: dict = {"penalty": [], "d_norm": [], "d_grads_after_g": []}
        for _ in range(STEPS):
            record = trainer.step()
            r["penalty"].append(float(record["loss/penalty"]))
            r["d_norm"].append(float(record["grad_norm/d"]))
            r["d_grads_after_g"].append(dw.d_gradient_left(trainer.rt))
        w = dw.weights(trainer.rt)
        trainer.close()
        return trainer, r, w

    report: dict = {}
    plain_rt = None
    for pen in PENALTIES:
        plain, ref, ref_w = train("accelerate", pen, WEIGHT[pen], f"{pen}-plain")
        plain_rt = plain.rt
        _, twice, twice_w = train("accelerate", pen, 2 * WEIGHT[pen], f"{pen}-twice")
        ds, got, ds_w = train("deepspeed", pen, WEIGHT[pen], f"{pen}-zero{stage}")
        report[pen] = {
            "accelerate": ref,
            "twice": twice,
            "deepspeed": got,
            "diff": dw.max_diff(ref_w, ds_w),
            "twice_diff": dw.max_diff(ref_w, twice_w),
        }
        ds.rt.engines = {}
        del ds
        gc.collect()
        torch.distributed.barrier()
    report["world_size"] = torch.distributed.get_world_size()
    # faults.collective_timeout_s (600 s here, the default) on the world group, which the
    # Accelerate runtime made, and on DeepSpeed's data-parallel clone of it
    from deepspeed.utils import groups

    def timeout_s(group) -> float:
        return group._get_backend(torch.device("cpu")).options._timeout.total_seconds()

    report["timeout_s"] = {
        "world": timeout_s(torch.distributed.distributed_c10d._get_default_group()),
        "deepspeed_dp": timeout_s(groups._get_data_parallel_group()),
    }
    (out / f"rank{torch.distributed.get_rank()}.json").write_text(json.dumps(report))
    plain_rt.end()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), int(sys.argv[2]))
    sys.exit(0 if os.environ.get("RANK") is not None else 1)
