"""The training loop: a D phase, then a G phase, repeated; read it top to bottom.

Randomness that matters for exact resume is derived, not carried: the noise of step ``t``
on rank ``r`` comes from a generator seeded with (seed, rank, t, phase), and the data
stream's order and augmentation from (seed, epoch, rank, position). So a checkpoint needs
only weights, optimizers, scalers, EMA, counters and the data position to continue
bit-exactly.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ganscale.config import Config, save_config
from ganscale.errors import GanscaleError
from ganscale.evaluation.during_training import TrainingEvalHook
from ganscale.outputs.export import export_generator, generator_meta
from ganscale.outputs.images import make_grid, plot_losses, save_png
from ganscale.outputs.tracking import MetricsFile, build_tracker, read_metrics
from ganscale.runtime import Runtime, build_runtime, finite
from ganscale.train import checkpoint as ckpt
from ganscale.train import losses
from ganscale.train.ema import EMA
from ganscale.train.monitors import HealthMonitor, HealthWarning

# Rows of the fixed sample grid for conditional runs: the study's conditions where the corpus
# has those colours (the first combinations of the vocabulary otherwise).
STUDY_CONDITIONS = [
    "aqua hair orange eyes",
    "blue hair blue eyes",
    "blue hair red eyes",
    "green hair blue eyes",
    "pink hair green eyes",
    "blonde hair purple eyes",
]
SIGNAL_CHECK_EVERY = 5  # steps between all-rank checks for a stop signal


class NonFiniteLoss(GanscaleError):
    """A loss or G's output became NaN/inf and faults.nan_policy is stop."""


class _Rollback(Exception):
    pass


@dataclass
class TrainState:
    step: int = 0
    images_seen: int = 0
    lr_factor: float = 1.0
    skipped_steps: int = 0
    rollbacks: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    images_seen: int
    stopped_by_signal: bool = False


def step_generator(seed: int, rank: int, step: int, phase: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    # modulo 2**64: a large seed (>= ~10**7) would overflow manual_seed; values in range keep
    # their stream (torch maps a negative seed to seed + 2**64 itself)
    g.manual_seed((((seed * 1_000_003 + rank) * 1_000_003 + step) * 8 + phase) % 2**64)
    return g


class StopSignal:
    """SIGTERM/SIGUSR1 set a flag; the loop checkpoints and exits at the next check."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            # ValueError off the main thread (e.g. train() called from a test's thread)
            with contextlib.suppress(ValueError):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, rt: Runtime) -> None:
        from ganscale.data.loader import build_loader
        from ganscale.models import build_discriminator, build_generator

        self.cfg, self.run_dir, self.rt = cfg, run_dir, rt
        self.data = build_loader(
            cfg.data,
            image_size=cfg.model.image_size,
            batch_size=cfg.train.batch_size,
            seed=cfg.seed,
            rank=rt.rank,
            world_size=rt.world_size,
        )
        self.attributes = dict(self.data.info.attributes) if cfg.model.conditional else {}
        if cfg.model.conditional and not self.attributes:
            raise GanscaleError(
                "model.conditional is true but the corpus has no attributes (labels); "
                "use a labelled corpus or --set model.conditional=false"
            )
        self.num_classes = [len(v) for v in self.attributes.values()]
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        G = build_generator(cfg.model, self.num_classes)
        D = build_discriminator(cfg.model, self.num_classes, norm=cfg.d_norm)
        rt.setup(G, D)
        self.ema = EMA(rt.module("g"), cfg.train.ema_decay)
        self.grad_accum = cfg.grad_accum_for(rt.world_size)
        self.state = TrainState()
        self.meta = generator_meta(cfg, self.attributes)
        self.health = HealthMonitor(cfg.loss.adversarial)
        self.eval_hook = TrainingEvalHook.build(self)  # None when eval.every == 0
        self._unchecked: torch.Tensor | None = None  # finite flag not yet read (faults.check_every)

    # ------------------------------------------------------------------ noise and data
    def noise(self, step: int, phase: int, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z ~ N(0, sigma) and uniformly drawn fake labels, from (seed, rank, step, phase)."""
        dev = self.rt.device
        gen = step_generator(self.cfg.seed, self.rt.rank, step, phase, dev)
        z = torch.randn(batch, self.cfg.model.z_dim, device=dev, generator=gen) * self.cfg.model.z_sigma
        if not self.num_classes:
            return z, None
        labels = torch.stack(
            [torch.randint(n, (batch,), device=dev, generator=gen) for n in self.num_classes], 1
        )
        return z, labels

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        t0 = time.perf_counter()
        images, labels = next(self._batches)
        self._data_wait += time.perf_counter() - t0
        images = images.to(self.rt.device, non_blocking=True)
        if self.cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if not self.num_classes:
            return images, None
        return images, labels.to(self.rt.device, non_blocking=True)

    # ------------------------------------------------------------------ the two phases
    def d_phase(self, step: int) -> dict[str, torch.Tensor]:
        cfg, rt, accum = self.cfg, self.rt, self.grad_accum
        out: dict[str, torch.Tensor] = {}
        for critic in range(cfg.train.n_critic):
            for micro in range(accum):
                real, real_labels = self.next_batch()
                z, fake_labels = self.noise(step, 1 + critic * accum + micro, real.shape[0])
                with rt.no_sync("d", enabled=micro < accum - 1), rt.autocast():
                    with torch.no_grad():
                        fake = rt.G(z, fake_labels)
                    real_logits, real_cls = rt.D(real, real_labels)
                    fake_logits, fake_cls = rt.D(fake, fake_labels)
                    adv = losses.d_adversarial_loss(cfg.loss.adversarial, real_logits, fake_logits)
                    cls = losses.class_loss(real_cls, real_labels)
                    if cfg.loss.d_fake_class:
                        cls = cls + losses.class_loss(fake_cls, fake_labels)
                    cls = cfg.loss.class_weight * cls
                    loss = adv + cls
                    if cfg.loss.penalty != "none":
                        pen = losses.gradient_penalty(
                            cfg.loss.penalty, rt.D, real, fake, real_labels, grad_scale=rt.loss_scale("d")
                        )
                        loss = loss + cfg.loss.penalty_weight * pen
                        out["loss/penalty"] = pen.detach()
                    rt.backward(loss / accum, "d")
            if not self.check_finite(loss, "d", step):
                return out | {"skipped": torch.tensor(1.0)}
            out["grad_norm/d"] = rt.step("d")
        out["loss/d"] = loss.detach()
        out["loss/d_class"] = cls.detach()
        out["d/real"] = self._d_prob(real_logits)
        out["d/fake"] = self._d_prob(fake_logits)
        for name, acc in zip(self.attributes, losses.class_accuracy(real_cls, real_labels), strict=False):
            out[f"acc/real/{name}"] = acc
        return out

    def g_phase(self, step: int) -> dict[str, torch.Tensor]:
        cfg, rt, accum = self.cfg, self.rt, self.grad_accum
        D = rt.module("d")  # plain D: no DDP reduction and no gradient kept for D in this phase
        D.requires_grad_(False)
        try:
            for micro in range(accum):
                z, fake_labels = self.noise(step, 0 if micro == 0 else 1000 + micro, cfg.train.batch_size)
                with rt.no_sync("g", enabled=micro < accum - 1), rt.autocast():
                    fake = rt.G(z, fake_labels)
                    fake_logits, fake_cls = D(fake, fake_labels)
                    adv = losses.g_adversarial_loss(cfg.loss.adversarial, fake_logits)
                    cls = cfg.loss.class_weight * losses.class_loss(fake_cls, fake_labels)
                    loss = adv + cls
                    rt.backward(loss / accum, "g")
        finally:
            D.requires_grad_(True)
        out = {"loss/g": loss.detach(), "loss/g_class": cls.detach()}
        if not self.check_finite(loss, "g", step):
            return out | {"skipped": torch.tensor(1.0)}
        out["grad_norm/g"] = rt.step("g")
        self.ema.update()
        for name, acc in zip(self.attributes, losses.class_accuracy(fake_cls, fake_labels), strict=False):
            out[f"acc/fake/{name}"] = acc
        return out

    def _d_prob(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.detach().float()
        return torch.sigmoid(logits).mean() if self.cfg.loss.adversarial == "bce" else logits.mean()

    def check_finite(self, loss: torch.Tensor, net: str, step: int) -> bool:
        """NaN/inf policy: stop (error), skip (drop this update) or rollback (reload + lower lr).

        With faults.check_every = k > 1 the flag stays on the device and is read only every k
        steps (no host sync in between); a fault is then reported at the next check step.
        """
        every = self.cfg.faults.check_every
        ok = finite(loss) if self._unchecked is None else self._unchecked & finite(loss)
        self._unchecked = ok if every > 1 and (step + 1) % every else None
        if self._unchecked is not None or bool(ok):
            return True
        policy = self.cfg.faults.nan_policy
        when = f"step {step + 1}" if every == 1 else f"steps {step + 2 - every}-{step + 1}"
        msg = f"non-finite {net.upper()} loss at {when}"
        self.tracker.alert("non_finite", msg)
        self.metrics.write({"step": step + 1, "event": "non_finite", "net": net, "policy": policy})
        if policy == "stop":
            raise NonFiniteLoss(
                f"{msg}; stopped (faults.nan_policy=stop). Resume from the last checkpoint "
                f"with a lower lr, or set faults.nan_policy=rollback"
            )
        self.rt.opt[net].zero_grad(set_to_none=True)
        if policy == "rollback":
            raise _Rollback(msg)
        self.state.skipped_steps += 1
        self._repair_after_skip(msg)
        warnings.warn(f"{msg}; update skipped (faults.nan_policy=skip)", stacklevel=2)
        return False

    def _repair_after_skip(self, msg: str) -> None:
        """A skipped update must leave no NaN behind. The non-finite forward already updated
        BatchNorm running statistics (found NaN in D's by the NaN drill): reset those. A
        non-finite weight cannot be skipped past (every later step would be skipped too)."""
        for net in ("g", "d"):
            module = self.rt.module(net)
            bad = next((n for n, p in module.named_parameters() if not bool(finite(p))), None)
            if bad is not None:
                raise NonFiniteLoss(
                    f"{msg}; {net.upper()} weights are non-finite ({bad}), skipping cannot recover; "
                    f"resume from the last checkpoint or set faults.nan_policy=rollback"
                )
            for m in module.modules():
                stats = [getattr(m, "running_mean", None), getattr(m, "running_var", None)]
                stats = [t for t in stats if isinstance(t, torch.Tensor)]
                if stats and not bool(finite(*stats)):
                    m.reset_running_stats()

    # ------------------------------------------------------------------ the loop
    def run(self, resume: str | None) -> TrainResult:
        cfg, rt, tc = self.cfg, self.rt, self.cfg.train
        self.tracker = build_tracker(
            cfg.log.tracker, self.run_dir, cfg.log.project, cfg.name, cfg.to_dict(), rt.is_main
        )
        self.metrics = MetricsFile(self.run_dir / "metrics.jsonl" if rt.is_main else None)
        self.restore(ckpt.resolve_resume(self.run_dir, resume))
        self._batches = iter(self.data)
        stop = StopSignal()
        stop.install()
        progress = self._progress()
        images_per_step = tc.batch_size * self.grad_accum * tc.n_critic * rt.world_size
        self._data_wait, t_log, seen_log = 0.0, time.perf_counter(), self.state.images_seen
        stopped = False
        try:
            while not self.done():
                step = self.state.step
                try:
                    record = self.d_phase(step)
                    record |= self.g_phase(step)
                except _Rollback as e:
                    self.rollback(str(e))
                    continue
                self.state.step += 1
                self.state.images_seen += images_per_step
                step = self.state.step
                if step % cfg.log.every == 0 or self.done():
                    now = time.perf_counter()
                    self.log(
                        record,
                        step,
                        (self.state.images_seen - seen_log) / (now - t_log),
                        self._data_wait / (now - t_log),
                    )
                    self._data_wait, t_log, seen_log = 0.0, now, self.state.images_seen
                if cfg.log.sample_every and step % cfg.log.sample_every == 0:
                    self.write_samples(step)
                if self.eval_hook is not None:  # every rank: metrics are computed across ranks
                    self.eval_hook.after_step(step, final=self.done())
                if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and not self.done():
                    self.save()
                check = step % SIGNAL_CHECK_EVERY == 0 or rt.world_size == 1
                if check and self._any_rank(stop.received is not None):
                    stopped = True
                    break
                progress.update(step)
            self.save()
            if rt.is_main:
                self.finish()
        finally:
            # close the batch generator now: it shuts the DataLoader's worker processes down
            # (otherwise a worker can outlive the trainer after a signal)
            getattr(getattr(self, "_batches", None), "close", lambda: None)()
            progress.close()
            stop.restore()
            self.metrics.close()
            self.tracker.finish()
        return TrainResult(self.run_dir, self.state.step, self.state.images_seen, stopped_by_signal=stopped)

    def done(self) -> bool:
        tc = self.cfg.train
        return (tc.max_steps > 0 and self.state.step >= tc.max_steps) or (
            tc.max_images > 0 and self.state.images_seen >= tc.max_images
        )

    def _any_rank(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.rt.device)
        return bool(self.rt.all_reduce_mean(t).item() > 0)

    def log(self, record: dict[str, torch.Tensor], step: int, img_per_s: float, data_wait: float) -> None:
        keys = sorted(record)
        # the loader's skipped-sample counters ride along in the same all-reduce (summed over ranks)
        counters = self.data.stats()
        counts = [float(counters.get(k, 0)) for k in ("corrupt_skipped", "read_errors")]
        stacked = torch.stack([record[k].float().reshape(()) for k in keys])
        stacked = torch.cat([stacked, torch.tensor(counts, device=stacked.device)])
        values = self.rt.all_reduce_mean(stacked).tolist()
        row: dict[str, Any] = {k: round(v, 6) for k, v in zip(keys, values, strict=False)}
        row["data/corrupt_skipped"], row["data/read_errors"] = (
            round(v * self.rt.world_size) for v in values[len(keys) :]
        )
        row |= {
            "step": step,
            "images_seen": self.state.images_seen,
            "images_per_s": round(img_per_s, 2),
            "data_wait_fraction": round(min(1.0, data_wait), 4),
            "lr/g": self.rt.opt["g"].param_groups[0]["lr"],
            "lr/d": self.rt.opt["d"].param_groups[0]["lr"],
        }
        self.metrics.write(row)
        self.tracker.log({k: v for k, v in row.items() if k != "step"}, step=step)
        self._last_row = row
        self.warn_health(self.health.observe_metrics(row))

    def warn_health(self, found: list[HealthWarning]) -> None:
        """A training-health warning goes to the log, the tracker and metrics.jsonl."""
        for w in found:
            if self.rt.is_main:
                warnings.warn(f"step {w.step}: {w.message}", stacklevel=2)
            self.tracker.alert(w.signal, w.message)
            self.metrics.write(w.row())

    # ------------------------------------------------------------------ samples and export
    def sample_conditions(self) -> list[str] | None:
        from ganscale.corpus.vocab import parse_tags

        if not self.attributes:
            return None
        rows = []
        for text in STUDY_CONDITIONS:
            try:
                parse_tags(text, self.attributes)
            except GanscaleError:
                continue
            rows.append(text)
        if not rows:  # a corpus with other attribute names: first combinations
            names = list(self.attributes)
            rows = [
                " ".join(f"{self.attributes[a][i % len(self.attributes[a])]} {a}" for a in names)
                for i in range(6)
            ]
        return rows

    @torch.no_grad()
    def fixed_grid(self) -> torch.Tensor:
        from ganscale.outputs.sampling import generate

        conditions = self.sample_conditions()
        return generate(
            self.ema.shadow,
            self.meta,
            conditions,
            self.cfg.log.samples_per_condition,
            seed=self.cfg.seed,
            device=self.rt.device,
        )

    def write_samples(self, step: int) -> None:
        if not self.rt.is_main:
            return
        images = self.fixed_grid()
        self.warn_health(self.health.observe_samples(images, step, group=self.cfg.log.samples_per_condition))
        grid = make_grid(images, ncol=self.cfg.log.samples_per_condition)
        save_png(grid, self.run_dir / "samples" / f"step-{step:07d}.png")
        self.tracker.log_image("samples", grid, step, caption=f"step {step}")

    def finish(self) -> None:
        export_generator(self.ema.shadow, self.meta, self.run_dir)
        self.write_samples(self.state.step)
        plot_losses(read_metrics(self.run_dir / "metrics.jsonl"), self.run_dir / "losses.png")

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        from safetensors.torch import save_file

        rt, step = self.rt, self.state.step
        if ckpt.latest_checkpoint(self.run_dir) and ckpt.latest_checkpoint(self.run_dir).step == step:
            return
        if self._unchecked is not None and not bool(self._unchecked):  # faults.check_every > 1
            raise NonFiniteLoss(f"non-finite loss in the steps before step {step}; checkpoint not written")
        data_states = rt.all_gather_object(self.data.state_dict())
        error = None
        try:
            if rt.is_main:
                ckpt.begin(self.run_dir, step)
            rt.barrier()
            folder = ckpt.staging_dir(self.run_dir, step)
            rt.save_training_state(folder)
            if rt.is_main:
                save_file(
                    {k: v.contiguous() for k, v in self.ema.state_dict().items()},
                    str(folder / "G_ema.safetensors"),
                )
                save_config(self.cfg, folder / "config.yaml")
                ckpt.write_json(folder / "generator.json", self.meta)
        except ckpt.WRITE_ERRORS as e:  # on a full disk torch.save raises RuntimeError, not OSError
            error = ckpt.disk_error(e, ckpt.staging_dir(self.run_dir, step))
        errors = rt.all_gather_object(str(error) if error else None)
        if any(errors):
            if rt.is_main:
                ckpt.abort(self.run_dir, step)
            message = next(e for e in errors if e)
            if self.cfg.checkpoint.on_disk_full == "continue":
                warnings.warn(message + " (continuing: checkpoint.on_disk_full=continue)", stacklevel=2)
                return
            raise ckpt.CheckpointWriteError(message)
        if rt.is_main:
            state = {
                "step": step,
                "images_seen": self.state.images_seen,
                "lr_factor": self.state.lr_factor,
                "skipped_steps": self.state.skipped_steps,
                "rollbacks": self.state.rollbacks,
                "world_size": rt.world_size,
                "data": data_states,
                "scalers": rt.scaler_state(),
                "eval": self.eval_hook.state_dict() if self.eval_hook else None,
            }
            try:
                ckpt.commit(self.run_dir, step, state, self.cfg.checkpoint.keep)
            except OSError as e:
                ckpt.abort(self.run_dir, step)
                raise ckpt.disk_error(e, ckpt.staging_dir(self.run_dir, step)) from None
        rt.barrier()

    def restore(self, folder: Path | None) -> None:
        if folder is None:
            return
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        state = ckpt.read_state(folder)
        try:
            self.rt.load_training_state(folder)
            self.ema.load_state_dict(load_file(str(folder / "G_ema.safetensors"), device=str(self.rt.device)))
        except (OSError, RuntimeError, ValueError, pickle.UnpicklingError, SafetensorError) as e:
            # e.g. an optimizer file whose pickle would run code: weights_only refuses it
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise GanscaleError(
                f"checkpoint {folder} cannot be loaded ({type(e).__name__}: {first}); "
                f"resume from another checkpoint"
            ) from e
        self.rt.load_scaler_state(state.get("scalers", {}))
        self.state.step = state["step"]
        self.state.images_seen = state["images_seen"]
        self.state.skipped_steps = state.get("skipped_steps", 0)
        self.state.rollbacks = state.get("rollbacks", 0)
        self.state.lr_factor = state.get("lr_factor", 1.0)
        if self.eval_hook is not None and state.get("eval"):
            self.eval_hook.load_state_dict(state["eval"])
        self.data.load_state_dict(_data_position(state["data"], self.rt.rank, self.rt.world_size))
        if self.rt.is_main:
            print(f"resumed from {folder} at step {self.state.step}", flush=True)

    def rollback(self, reason: str) -> None:
        ref = ckpt.latest_checkpoint(self.run_dir)
        if ref is None:
            raise NonFiniteLoss(f"{reason}; no checkpoint to roll back to (faults.nan_policy=rollback)")
        limit = self.cfg.faults.max_rollbacks
        if self.state.rollbacks >= limit:
            raise NonFiniteLoss(
                f"{reason}; already rolled back {self.state.rollbacks} times (faults.max_rollbacks="
                f"{limit}); stopped. Resume from {ref.path} with a lower lr, or raise faults.max_rollbacks"
            )
        # counters and the lr factor carry across the reload (the checkpoint holds older ones):
        # a fault that recurs lowers the lr again instead of replaying the same steps forever
        rollbacks = self.state.rollbacks + 1
        lr_factor = self.state.lr_factor * self.cfg.faults.rollback_lr_factor
        self.restore(ref.path)
        for net in ("g", "d"):  # the reloaded optimizers hold the checkpoint's lr
            self.rt.set_lr(net, lr_factor / self.state.lr_factor)
        self.state.rollbacks, self.state.lr_factor = rollbacks, lr_factor
        self._batches = iter(self.data)
        msg = f"{reason}; rolled back to step {ref.step}, lr x{self.state.lr_factor:g}"
        warnings.warn(msg, stacklevel=2)
        self.metrics.write({"step": ref.step, "event": "rollback", "reason": reason})

    def _progress(self) -> _Progress:
        return _Progress(self, enabled=self.rt.is_main and self.cfg.log.progress)


def _data_position(states: list[dict], rank: int, world_size: int) -> dict:
    """This rank's data position; when the process count changed (elastic resume), rank 0's
    epoch with its batch index rescaled so the same fraction of the epoch is done."""
    if len(states) == world_size:
        return states[rank]
    first = dict(states[0])
    first["batch"] = int(first.get("batch", 0) * len(states) / world_size)
    return first


class _Progress:
    """A rich progress bar on the main process: step, img/s and losses."""

    def __init__(self, trainer: Trainer, enabled: bool) -> None:
        self.trainer = trainer
        self.bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            transient=False,
        )
        total = trainer.cfg.train.max_steps or None
        self.task = self.bar.add_task("train", total=total, completed=trainer.state.step, info="")
        self.bar.start()

    def update(self, step: int) -> None:
        if self.bar is None:
            return
        row = getattr(self.trainer, "_last_row", {})
        info = (
            (
                f"{row.get('images_per_s', 0):.0f} img/s  D {row.get('loss/d', float('nan')):.3f}  "
                f"G {row.get('loss/g', float('nan')):.3f}"
            )
            if row
            else ""
        )
        self.bar.update(self.task, completed=step, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def train(cfg: Config, run_dir: Path, resume: str | None = None) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (created; the resolved config is saved there)."""
    rt = build_runtime(cfg)
    try:
        if rt.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
        rt.barrier()
        trainer = Trainer(cfg, run_dir, rt)
        return trainer.run(resume)
    finally:
        rt.end()
