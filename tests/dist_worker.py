"""Worker for the multi-process runtime tests (run under torchrun; not collected by pytest).

It drives :class:`ganscale.runtime.base.Runtime` objects with the trainer's calling pattern (a D
phase of ``grad_accum`` backward calls then one step; a G phase through ``rt.module("d")``
with D frozen) on tiny networks with BatchNorm, and writes what the test compares to
``OUT/rank{r}.json`` and ``OUT/*.safetensors``.

    torchrun --nproc_per_node 2 tests/dist_worker.py equivalence OUT --stage 2 --steps 3
    torchrun --nproc_per_node 2 tests/dist_worker.py resume OUT --stage 2 --save
    torchrun --nproc_per_node 2 tests/dist_worker.py first_steps OUT --batch 4 --no-norm
    torchrun --nproc_per_node 1 tests/dist_worker.py first_steps OUT --batch 8 --slots 2 --no-norm
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ganscale.config import config_from_dict  # noqa: E402

Z = 8


NORM = [True]  # BatchNorm in the tiny nets (off for batch-size equivalence: BN statistics aside)


def _bn(c: int) -> nn.Module:
    return nn.BatchNorm2d(c) if NORM[0] else nn.Identity()


class TinyG(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(Z, 16 * 4 * 4, bias=False)  # no bias before BN: its gradient is ~0,
        # and Adam turns ~0 (rounding noise) into full-size steps that no tolerance survives
        self.bn = _bn(16)
        self.up = nn.ConvTranspose2d(16, 3, 4, 2, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(-1, 16, 4, 4)
        return torch.tanh(self.up(F.relu(self.bn(x))))


class TinyD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 4, 2, 1, bias=False)
        self.bn = _bn(16)
        self.fc = nn.Linear(16 * 4 * 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.leaky_relu(self.bn(self.conv(x)), 0.2).flatten(1)).squeeze(1)


def make_cfg(backend: str, stage: int, batch: int, accum: int, precision: str = "no") -> object:
    return config_from_dict(
        {
            "backend": backend,
            "deepspeed": {"zero_stage": stage},
            "train": {
                "batch_size": batch,
                "grad_accum": accum,
                "max_steps": 10,
                "mixed_precision": precision,
                # DeepSpeed keeps weights NCHW; compare like with like (see test_deepspeed.py)
                "channels_last": False,
            },
            "optim": {"g_lr": 1e-3, "d_lr": 1e-3},
        }
    )


# Data and noise depend on (step, slot), slot = rank * grad_accum + micro: 2 processes x 1
# micro-batch and 1 process x 2 micro-batches see the same global batch, slot by slot.
# With --slots K a micro-batch is K slots of batch/K samples (1 process x 2B = 2 slots of B).
SLOTS = [1]


def real_batch(step: int, slot: int, batch: int) -> torch.Tensor:
    k = SLOTS[0]
    parts = []
    for j in range(k):
        g = torch.Generator().manual_seed(1000 * step + slot * k + j)
        parts.append(torch.rand(batch // k, 3, 8, 8, generator=g) * 2 - 1)
    return torch.cat(parts)


def noise(step: int, phase: int, slot: int, batch: int) -> torch.Tensor:
    k = SLOTS[0]
    parts = []
    for j in range(k):
        g = torch.Generator().manual_seed(7_000_000 + 1000 * step + 100 * phase + slot * k + j)
        parts.append(torch.randn(batch // k, Z, generator=g))
    return torch.cat(parts)


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits.float(), target))


def train_steps(rt, steps: int, first: int = 0, freeze_d: bool = True, report: dict | None = None) -> None:
    """The trainer's two phases, on the Runtime interface only."""
    accum, batch = rt.cfg.train.grad_accum, rt.cfg.train.batch_size
    for step in range(first, first + steps):
        for micro in range(accum):
            real = real_batch(step, rt.rank * accum + micro, batch).to(rt.device)
            z = noise(step, 1, rt.rank * accum + micro, batch).to(rt.device)
            with rt.no_sync("d", enabled=micro < accum - 1), rt.autocast():
                with torch.no_grad():
                    fake = rt.G(z)
                loss = bce(rt.D(real), 1.0) + bce(rt.D(fake), 0.0)
                rt.backward(loss / accum, "d")
        rt.step("d")
        D = rt.module("d")
        if freeze_d:
            D.requires_grad_(False)
        try:
            for micro in range(accum):
                z = noise(step, 0, rt.rank * accum + micro, batch).to(rt.device)
                with rt.no_sync("g", enabled=micro < accum - 1), rt.autocast():
                    loss = bce(D(rt.G(z)), 1.0)
                    rt.backward(loss / accum, "g")
        finally:
            D.requires_grad_(True)
        if report is not None:
            report.setdefault("d_grads_after_g", []).append(d_gradient_left(rt))
        norm = rt.step("g")
        if report is not None:
            report.setdefault("g_norm", []).append(float(norm))
            report.setdefault("g_loss", []).append(float(loss.detach()))


def d_gradient_left(rt) -> float:
    """Sum of |grad| D holds anywhere after the G phase: parameters and, under ZeRO, the
    engine's reduced partitions and bucket buffers."""
    total = 0.0
    for p in rt.module("d").parameters():
        if p.grad is not None:
            total += float(p.grad.abs().sum())
    engine = getattr(rt, "engines", {}).get("d")
    if engine is not None:
        opt = engine.optimizer
        for attr in ("averaged_gradients",):
            for t in (getattr(opt, attr, None) or {}).values():
                for x in t if isinstance(t, list) else [t]:
                    if x is not None:
                        total += float(x.abs().sum())
        for p in engine.module.parameters():
            acc = getattr(p, "grad_accum", None)
            if acc is not None:
                total += float(acc.abs().sum())
    return total


def build(backend: str, stage: int, batch: int, accum: int, precision: str = "no"):
    from ganscale.runtime.accelerate_backend import AccelerateRuntime
    from ganscale.runtime.deepspeed_backend import DeepSpeedRuntime

    cfg = make_cfg(backend, stage, batch, accum, precision)
    rt = DeepSpeedRuntime(cfg) if backend == "deepspeed" else AccelerateRuntime(cfg)
    torch.manual_seed(0)
    rt.setup(TinyG(), TinyD())
    return rt


def weights(rt) -> dict[str, torch.Tensor]:
    out = {}
    for net in ("g", "d"):
        for k, v in rt.module(net).state_dict().items():
            out[f"{net}.{k}"] = v.detach().float().cpu().contiguous().clone()
    return out


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], params_only: bool = True) -> float:
    keys = [k for k in a if not params_only or "running" not in k and "num_batches" not in k]
    return max(float((a[k] - b[k]).abs().max()) for k in keys)


def equivalence(args: argparse.Namespace) -> dict:
    """ZeRO stages vs the Accelerate (DDP) backend: same seed, fp32, same data."""
    report: dict = {}
    plain = build("accelerate", 0, args.batch, args.accum)
    train_steps(plain, args.steps)
    ref = weights(plain)
    for stage in args.stages:
        ds = build("deepspeed", stage, args.batch, args.accum)
        r: dict = {}
        train_steps(ds, args.steps, report=r)
        w = weights(ds)
        r["diff"] = max_diff(ref, w)
        r["per_key"] = {k: float((ref[k] - w[k]).abs().max()) for k in ref}
        ds.engines = {}
        if args.negative and stage > 0:
            # Negative control: the same run without freezing D in the G step.
            unfrozen = build("deepspeed", stage, args.batch, args.accum)
            try:
                train_steps(unfrozen, args.steps, freeze_d=False)
                r["unfrozen_diff"] = max_diff(ref, weights(unfrozen))
            except Exception as e:  # noqa: BLE001 - the error is the result (stage 2)
                r["unfrozen_error"] = f"{type(e).__name__}: {e}"
            unfrozen.engines = {}
        report[f"stage{stage}"] = r
        torch.distributed.barrier()
    report["world_size"] = plain.world_size
    plain.end()
    return report


def first_steps(args: argparse.Namespace) -> dict:
    """`steps` steps on each backend; weights to OUT/first-{backend}-{world}.safetensors."""
    from safetensors.torch import save_file

    report: dict = {}
    for backend in args.backends:
        rt = build(backend, args.stage, args.batch, args.accum)
        train_steps(rt, args.steps)
        if rt.is_main:
            save_file(weights(rt), str(Path(args.out) / f"first-{backend}-{rt.world_size}.safetensors"))
        report["world_size"] = rt.world_size
        rt.barrier()
        if backend == "deepspeed":
            rt.engines = {}
    return report


def data(args: argparse.Namespace) -> dict:
    """The trainer's data path (runtime rank/world size -> build_loader): sample keys seen."""
    from ganscale.config import DataConfig
    from ganscale.data.loader import build_loader
    from ganscale.runtime.accelerate_backend import AccelerateRuntime
    from ganscale.runtime.deepspeed_backend import DeepSpeedRuntime

    cfg = make_cfg(args.backends[0], args.stage, args.batch, 1)
    rt = DeepSpeedRuntime(cfg) if args.backends[0] == "deepspeed" else AccelerateRuntime(cfg)
    dc = DataConfig(cache_dir=args.cache, synthetic_n=64, shuffle_buffer=16, pin_memory=False)
    stream = build_loader(
        dc, image_size=16, batch_size=args.batch, seed=0, rank=rt.rank, world_size=rt.world_size
    )
    keys, it = [], stream.iter_with_keys()
    for _ in range(args.steps):
        _, _, ks = next(it)
        keys += list(ks)
    del it
    report = {"rank": rt.rank, "world_size": rt.world_size, "keys": keys}
    rt.end()
    return report


def resume(args: argparse.Namespace) -> dict:
    """Save after `steps`, continue `steps` more; a fresh runtime loads and continues the
    same `steps`: the two must agree exactly. Run on N processes with --save, or on M
    processes to load a checkpoint written on N (elastic)."""
    from ganscale.runtime.deepspeed_backend import DeepSpeedRuntime

    folder = Path(args.out) / "ckpt"
    report: dict = {}
    rt = build("deepspeed", args.stage, args.batch, args.accum, args.precision)
    if args.save:
        train_steps(rt, args.steps)
        if rt.is_main:
            folder.mkdir(parents=True, exist_ok=True)
        rt.barrier()
        rt.save_training_state(folder)
        rt.barrier()
        train_steps(rt, args.steps, first=args.steps)
        final = weights(rt)
        if rt.is_main:
            from safetensors.torch import save_file

            save_file(final, str(Path(args.out) / f"continued-{rt.world_size}.safetensors"))
    rt.end()
    del rt
    gc.collect()
    rt2 = build("deepspeed", args.stage, args.batch, args.accum, args.precision)
    assert isinstance(rt2, DeepSpeedRuntime)
    rt2.load_training_state(folder)
    loaded = weights(rt2)
    train_steps(rt2, args.steps, first=args.steps)
    final2 = weights(rt2)
    if rt2.is_main:
        from safetensors.torch import save_file

        save_file(loaded, str(Path(args.out) / f"loaded-{rt2.world_size}.safetensors"))
        save_file(final2, str(Path(args.out) / f"resumed-{rt2.world_size}.safetensors"))
    report["world_size"] = rt2.world_size
    rt2.end()
    return report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["equivalence", "resume", "first_steps", "data"])
    ap.add_argument("--cache", default="")
    ap.add_argument("out")
    ap.add_argument("--stage", type=int, default=2)
    ap.add_argument("--stages", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--precision", default="no")
    ap.add_argument("--negative", action="store_true")
    ap.add_argument("--save", action="store_true")
    ap.add_argument("--slots", type=int, default=1)
    ap.add_argument("--no-norm", action="store_true")
    ap.add_argument("--backends", type=lambda v: v.split(","), default=["accelerate"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    SLOTS[0] = args.slots
    NORM[0] = not args.no_norm
    Path(args.out).mkdir(parents=True, exist_ok=True)
    modes = {"equivalence": equivalence, "resume": resume, "first_steps": first_steps, "data": data}
    report = modes[args.mode](args)
    rank = int(os.environ.get("RANK", "0"))
    (Path(args.out) / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
