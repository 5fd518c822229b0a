"""Worker for the multi-process tests (run under torchrun; not collected by pytest).

It drives the real :class:`ganscale.train.trainer.Trainer` (``Trainer.step()``: D phase, G phase,
NaN check, EMA, counters) on a tiny DCGAN config, with in-memory data and noise keyed by
(step, slot), slot = rank * grad_accum + micro: 2 processes x 1 micro-batch and 1 process x 2
micro-batches see the same global batch, slot by slot. It writes what the test compares to
``OUT/rank{r}.json`` and ``OUT/*.safetensors``.

    torchrun --nproc_per_node 2 tests/dist_worker.py equivalence OUT --stages 0,1,2 --steps 3
    torchrun --nproc_per_node 2 tests/dist_worker.py resume OUT --stage 2 --save
    torchrun --nproc_per_node 2 tests/dist_worker.py first_steps OUT --batch 4 --no-norm
    torchrun --nproc_per_node 1 tests/dist_worker.py first_steps OUT --batch 8 --slots 2 --no-norm

Two more modes run ganscale's own code paths end to end:

    torchrun --nproc_per_node 2 tests/dist_worker.py eval OUT --source-run RUN --eval-n 64
    python tests/dist_worker.py cli --nan 1:4 -- train configs/tiny.yaml --out RUN ...

``eval``: the real Trainer resumes RUN's latest checkpoint and runs its training-time
evaluation hook once (every rank); each rank's metrics go to ``OUT/rank{r}.json``. ``cli``: the
real ``ganscale`` CLI (exit code and one-line errors included), with a fault injected on one
rank into ganscale's own objects: ``--nan RANK:STEP`` (G's output becomes NaN once, at the
0-based step), ``--data-end RANK:BATCHES`` (that rank's data ends after so many batches),
``--enospc RANK:SAVE`` (that rank's commit of its SAVE-th checkpoint meets a full disk).
Start it as the ranks of a group with ``distlib.ranks``.

``--break no_sync`` / ``--break freeze`` are negative controls: they patch the trainer's run
so that it no longer suspends the gradient all-reduce during accumulation micro-steps, or no
longer freezes D in the G phase; the tests assert that the result then changes.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ganscale.config import Config, config_from_dict  # noqa: E402

Z = 8
SIZE = 16
NORM = [True]  # BatchNorm in G and D (off for batch-size equivalence: BN statistics aside)
SLOTS = [1]  # with --slots K a micro-batch is K slots of batch/K samples (1 process x 2B = 2 slots of B)
BREAK: list[str] = []  # negative controls: "no_sync", "freeze"


def make_cfg(backend: str, stage: int, batch: int, accum: int, precision: str = "no") -> Config:
    return config_from_dict(
        {
            "backend": backend,
            "deepspeed": {"zero_stage": stage},
            "model": {
                "arch": "dcgan",
                "conditional": False,
                "image_size": SIZE,
                "z_dim": Z,
                "g_channels": 4,
                "d_channels": 4,
                "d_norm": "batch" if NORM[0] else "none",
            },
            "train": {
                "batch_size": batch,
                "grad_accum": accum,
                "max_steps": 10,
                "mixed_precision": precision,
                # DeepSpeed keeps weights NCHW; compare like with like (see test_deepspeed.py)
                "channels_last": False,
            },
            "optim": {"g_lr": 1e-3, "d_lr": 1e-3},
            "log": {"tracker": "none", "progress": False, "sample_every": 0, "every": 1},
            "checkpoint": {"every": 0},
            "eval": {"every": 0},
        }
    )


def real_batch(step: int, slot: int, batch: int) -> torch.Tensor:
    k = SLOTS[0]
    parts = []
    for j in range(k):
        g = torch.Generator().manual_seed(1000 * step + slot * k + j)
        parts.append(torch.rand(batch // k, 3, SIZE, SIZE, generator=g) * 2 - 1)
    return torch.cat(parts)


def slot_noise(step: int, phase: int, slot: int, batch: int) -> torch.Tensor:
    k = SLOTS[0]
    parts = []
    for j in range(k):
        g = torch.Generator().manual_seed(7_000_000 + 1000 * step + 100 * phase + slot * k + j)
        parts.append(torch.randn(batch // k, Z, generator=g))
    return torch.cat(parts)


class SlotData:
    """The trainer's data: for each step, ``grad_accum`` micro-batches of slots rank*accum+micro.
    Its position (saved with checkpoints) is the next step to read."""

    info = SimpleNamespace(attributes={})

    def __init__(self, rank: int, accum: int, batch: int) -> None:
        self.rank, self.accum, self.batch = rank, accum, batch
        self.start, self.consumed = 0, 0

    def __iter__(self):
        self.consumed = 0
        step = self.start
        while True:
            for micro in range(self.accum):
                self.consumed += 1
                real = real_batch(step, self.rank * self.accum + micro, self.batch)
                yield real, torch.zeros(self.batch, 0, dtype=torch.int64)
            step += 1

    def stats(self) -> dict[str, int]:
        return {}

    def state_dict(self) -> dict:
        return {"rank": self.rank, "step": self.start + self.consumed // self.accum}

    def load_state_dict(self, state: dict) -> None:
        self.start, self.consumed = state["step"], 0


class SlotNoise:
    """The trainer's noise source, keyed by (step, phase, slot) like :class:`SlotData`."""

    def __init__(self, rank: int, accum: int, device: torch.device) -> None:
        self.rank, self.accum, self.device = rank, accum, device

    def draw(self, step: int, batch: int, net: str, micro: int, critic: int = 0):
        phase = 1 if net == "d" else 0
        return slot_noise(step, phase, self.rank * self.accum + micro, batch).to(self.device), None

    def generator(self, step: int, phase: int, critic: int = 0, micro: int = 0) -> torch.Generator:
        """Other draws of the step (the penalty's mixing), keyed by the slot like the noise."""
        slot = self.rank * self.accum + micro
        return torch.Generator(device=self.device).manual_seed(
            ((step * 16 + int(phase)) * 64 + critic) * 4096 + slot
        )


def _without_batchnorm(build):
    def wrapped(*args, **kwargs) -> nn.Module:
        module = build(*args, **kwargs)
        for parent in list(module.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.BatchNorm2d):
                    setattr(parent, name, nn.Identity())
        return module

    return wrapped


def build(backend: str, stage: int, batch: int, accum: int, out: Path, precision: str = "no", resume=None):
    """A real Trainer on a real runtime, fed by SlotData/SlotNoise (and broken when asked)."""
    import ganscale.models
    from ganscale.outputs.tracking import MetricsFile, NullTracker
    from ganscale.runtime.accelerate_backend import AccelerateRuntime
    from ganscale.runtime.deepspeed_backend import DeepSpeedRuntime
    from ganscale.train.trainer import Trainer, plan_for

    cfg = make_cfg(backend, stage, batch, accum, precision)
    rt = DeepSpeedRuntime(cfg) if backend == "deepspeed" else AccelerateRuntime(cfg)
    builder = ganscale.models.build_generator
    if not NORM[0]:  # the DCGAN generator always has BatchNorm: take it out (D: d_norm none)
        ganscale.models.build_generator = _without_batchnorm(builder)
    try:
        data = SlotData(rt.rank, rt.plan.grad_accum, rt.plan.batch_size)
        trainer = Trainer(
            plan_for(cfg, rt, data),
            out,
            rt,
            resume=resume,
            data=data,
            tracker=NullTracker(),
            metrics=MetricsFile(None),
        )
    finally:
        ganscale.models.build_generator = builder
    trainer.noise = SlotNoise(rt.rank, rt.plan.grad_accum, rt.device)
    if "no_sync" in BREAK:  # the trainer no longer suspends the all-reduce of micro-steps
        rt.no_sync = lambda net, enabled: contextlib.nullcontext()
    if "freeze" in BREAK:  # the trainer no longer freezes D in the G phase
        D = rt.module("d")
        D.requires_grad_ = lambda requires_grad=True: D
        trainer._d_params = []  # the trainer toggles D's parameters one by one (train.shared_fake)
    return trainer


def count_reductions(trainer) -> dict[str, list[int]] | None:
    """Gradient all-reduce rounds of DDP per network (None when not under DDP)."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    counts: dict[str, list[int]] = {}
    for net, model in (("g", trainer.rt.G), ("d", trainer.rt.D)):
        if not isinstance(model, nn.parallel.DistributedDataParallel):
            return None
        box = counts.setdefault(net, [0])

        def hook(state, bucket, box=box):
            if bucket.is_last():
                box[0] += 1
            return allreduce_hook(None, bucket)

        model.register_comm_hook(None, hook)
    return counts


def train_steps(trainer, steps: int, report: dict | None = None) -> None:
    """``steps`` real training steps; per step, what D holds and what was reduced."""
    counts = count_reductions(trainer) if report is not None else None
    for _ in range(steps):
        before = {k: v[0] for k, v in counts.items()} if counts else {}
        record = trainer.step()
        if report is None:
            continue
        report.setdefault("d_grads_after_g", []).append(d_gradient_left(trainer.rt))
        report.setdefault("g_norm", []).append(float(record["grad_norm/g"]))
        report.setdefault("g_loss", []).append(float(record["loss/g"]))
        if counts:
            for net, box in counts.items():
                report.setdefault(f"reductions_{net}", []).append(box[0] - before[net])


def d_gradient_left(rt) -> float:
    """Sum of |grad| D holds anywhere after a step (after the G phase): parameters and, under
    ZeRO, the engine's reduced partitions and bucket buffers."""
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


def weights(rt) -> dict[str, torch.Tensor]:
    out = {}
    for net in ("g", "d"):
        for k, v in rt.module(net).state_dict().items():
            out[f"{net}.{k}"] = v.detach().float().cpu().contiguous().clone()
    return out


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], params_only: bool = True) -> float:
    keys = [k for k in a if not params_only or "running" not in k and "num_batches" not in k]
    return max(float((a[k] - b[k]).abs().max()) for k in keys)


def _release(trainer) -> None:
    trainer.close()
    trainer.rt.engines = {}


def equivalence(args: argparse.Namespace) -> dict:
    """ZeRO stages vs the Accelerate (DDP) backend: same seed, fp32, same data."""
    out = Path(args.out)
    report: dict = {}
    plain = build("accelerate", 0, args.batch, args.accum, out / "plain")
    r: dict = {}
    train_steps(plain, args.steps, report=r)
    report["accelerate"] = r
    ref = weights(plain.rt)
    plain.close()
    for stage in args.stages:
        ds = build("deepspeed", stage, args.batch, args.accum, out / f"stage{stage}")
        r = {}
        train_steps(ds, args.steps, report=r)
        w = weights(ds.rt)
        r["diff"] = max_diff(ref, w)
        r["per_key"] = {k: float((ref[k] - w[k]).abs().max()) for k in ref}
        _release(ds)
        if args.negative and stage > 0:
            # Negative control: the same run with the trainer no longer freezing D in the G phase.
            BREAK.append("freeze")
            unfrozen = build("deepspeed", stage, args.batch, args.accum, out / f"unfrozen{stage}")
            BREAK.remove("freeze")
            try:
                train_steps(unfrozen, args.steps)
                r["unfrozen_diff"] = max_diff(ref, weights(unfrozen.rt))
            except Exception as e:  # noqa: BLE001 - the error is the result (stage 2)
                r["unfrozen_error"] = f"{type(e).__name__}: {e}"
            _release(unfrozen)
        report[f"stage{stage}"] = r
        torch.distributed.barrier()
    report["world_size"] = plain.rt.world_size
    plain.rt.end()
    return report


def first_steps(args: argparse.Namespace) -> dict:
    """`steps` steps on each backend; weights to OUT/first-{backend}-{world}.safetensors."""
    from safetensors.torch import save_file

    report: dict = {}
    for backend in args.backends:
        trainer = build(backend, args.stage, args.batch, args.accum, Path(args.out) / f"run-{backend}")
        rt = trainer.rt
        r: dict = {}
        train_steps(trainer, args.steps, report=r)
        report[backend] = r
        if rt.is_main:
            save_file(weights(rt), str(Path(args.out) / f"first-{backend}-{rt.world_size}.safetensors"))
        report["world_size"] = rt.world_size
        rt.barrier()
        _release(trainer)
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
        dc, image_size=16, batch_size=rt.plan.batch_size, seed=0, rank=rt.rank, world_size=rt.world_size
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
    """Checkpoint (the trainer's own protocol) after `steps`, continue `steps` more; a fresh
    trainer resumes from that checkpoint and continues the same `steps`: the two must agree
    exactly. Run on N processes with --save, or on M processes to load a checkpoint written on
    N (elastic)."""
    from safetensors.torch import save_file

    from ganscale.runtime.deepspeed_backend import DeepSpeedRuntime

    out = Path(args.out)
    run_dir = out / "run"
    folder = run_dir / "checkpoints" / f"step-{args.steps:07d}"
    report: dict = {}
    if args.save:
        trainer = build("deepspeed", args.stage, args.batch, args.accum, run_dir, args.precision)
        train_steps(trainer, args.steps)
        trainer.save()
        train_steps(trainer, args.steps)
        if trainer.rt.is_main:
            save_file(weights(trainer.rt), str(out / f"continued-{trainer.rt.world_size}.safetensors"))
        trainer.close()
        trainer.rt.end()
        del trainer
        gc.collect()
    resumed = build("deepspeed", args.stage, args.batch, args.accum, run_dir, args.precision, str(folder))
    rt2 = resumed.rt
    assert isinstance(rt2, DeepSpeedRuntime) and resumed.state.step == args.steps
    loaded = weights(rt2)
    train_steps(resumed, args.steps)
    final2 = weights(rt2)
    if rt2.is_main:
        save_file(loaded, str(out / f"loaded-{rt2.world_size}.safetensors"))
        save_file(final2, str(out / f"resumed-{rt2.world_size}.safetensors"))
    report["world_size"] = rt2.world_size
    resumed.close()
    rt2.end()
    return report


def evaluate(args: argparse.Namespace) -> dict:
    """The training-time evaluation hook of a real Trainer resumed from RUN's latest checkpoint."""
    from ganscale.config import load_config
    from ganscale.outputs.tracking import MetricsFile, NullTracker
    from ganscale.runtime import build_runtime
    from ganscale.train.checkpoint import latest_checkpoint
    from ganscale.train.trainer import Trainer, plan_for

    run = Path(args.source_run)
    ref = latest_checkpoint(run)
    cfg = load_config(run / "config.yaml", ["eval.every=1", f"eval.n={args.eval_n}", "log.tracker=none"])
    rt = build_runtime(cfg)
    out = Path(args.out) / "run"
    trainer = Trainer(
        plan_for(cfg, rt), out, rt, resume=str(ref.path), tracker=NullTracker(), metrics=MetricsFile(None)
    )
    metrics = trainer.eval_hook.after_step(trainer.state.step, final=True)
    report = {"rank": rt.rank, "world_size": rt.world_size, "step": trainer.state.step, "metrics": metrics}
    trainer.close()
    rt.end()
    return report


def _target(spec: str | None) -> tuple[int, int] | None:
    if spec is None:
        return None
    rank, value = spec.split(":")
    return int(rank), int(value)


def cli(argv: list[str]) -> None:
    """The ganscale CLI with one rank-targeted fault (see the module docstring)."""
    import errno
    import itertools

    from ganscale.cli import main as ganscale_main
    from ganscale.runtime.env import launch_env
    from ganscale.train import checkpoint as ckpt
    from ganscale.train import trainer as trainer_module

    split = argv.index("--")
    ap = argparse.ArgumentParser(prog="dist_worker.py cli")
    ap.add_argument("--nan", type=_target)
    ap.add_argument("--data-end", type=_target)
    ap.add_argument("--enospc", type=_target)
    opts = ap.parse_args(argv[:split])
    rank = launch_env().rank or 0
    init = trainer_module.Trainer.__init__

    def patched(self, *a, **k) -> None:
        init(self, *a, **k)
        if opts.nan and opts.nan[0] == rank:
            at, fired = opts.nan[1], []

            def hook(module, inputs, out):
                if self.state.step == at and not fired:
                    fired.append(at)
                    print(f"[drill] rank {rank}: G output -> NaN at step index {at}", file=sys.stderr)
                    return out * float("nan")
                return None

            self.rt.module("g").register_forward_hook(hook)
        if opts.data_end and opts.data_end[0] == rank:
            self.batches.source = itertools.islice(self.batches.source, opts.data_end[1])

    trainer_module.Trainer.__init__ = patched
    if opts.enospc and opts.enospc[0] == rank:
        commit, saves = ckpt.commit, []

        def full_disk(run_dir, step, state, keep):
            saves.append(step)
            if len(saves) == opts.enospc[1]:
                raise OSError(errno.ENOSPC, "No space left on device", str(ckpt.staging_dir(run_dir, step)))
            return commit(run_dir, step, state, keep)

        ckpt.commit = full_disk
    torch.set_num_threads(1)
    ganscale_main(argv[split + 1 :])


def main() -> None:
    if sys.argv[1:2] == ["cli"]:
        cli(sys.argv[2:])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["equivalence", "resume", "first_steps", "data", "eval"])
    ap.add_argument("--source-run", default="")
    ap.add_argument("--eval-n", type=int, default=64)
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
    ap.add_argument("--break", dest="breaks", action="append", default=[], choices=["no_sync", "freeze"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    SLOTS[0] = args.slots
    NORM[0] = not args.no_norm
    BREAK[:] = args.breaks
    Path(args.out).mkdir(parents=True, exist_ok=True)
    modes = {"equivalence": equivalence, "resume": resume, "first_steps": first_steps, "data": data}
    modes["eval"] = evaluate
    report = modes[args.mode](args)
    rank = int(os.environ.get("RANK", "0"))
    (Path(args.out) / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
