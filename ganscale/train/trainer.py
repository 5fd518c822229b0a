"""The training loop: a D phase, then a G phase, repeated; read :meth:`Trainer.run` top to bottom.

One public training step, :meth:`Trainer.step`, is what ``ganscale train``, ``ganscale bench``
and the multi-process tests run. Around it, each concern has its own module:
:mod:`~ganscale.train.noise` (the derived noise of each phase), :mod:`~ganscale.train.faults`
(NaN policy, rollback, stop signals), :mod:`~ganscale.train.state` (the resumable state and its
checkpoint), :mod:`~ganscale.train.reporting` (metrics rows, health warnings, progress bar,
sample grids, export).

Randomness that matters for exact resume is derived, not carried: the noise of step ``t``
on rank ``r`` comes from a generator seeded with (seed, rank, t, phase), and the data
stream's order and augmentation from (seed, epoch, rank, position). So a checkpoint needs
only weights, optimizers, scalers, EMA, counters and the data position to continue
bit-exactly.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ganscale.config import Config, save_config
from ganscale.errors import GanscaleError
from ganscale.evaluation.during_training import EvalContext, TrainingEvalHook
from ganscale.outputs.export import generator_meta
from ganscale.outputs.tracking import MetricsFile, Tracker, build_tracker
from ganscale.runtime import Runtime, build_runtime, env
from ganscale.train import checkpoint as ckpt
from ganscale.train import losses
from ganscale.train.ema import EMA
from ganscale.train.faults import SIGNAL_CHECK_EVERY, NanGuard, NonFiniteLoss, Rollback, StopSignal, roll_back
from ganscale.train.noise import NoiseSource, step_generator
from ganscale.train.reporting import STUDY_CONDITIONS, RunLog, build_outputs, say
from ganscale.train.state import Checkpointer, TrainState

__all__ = [
    "SIGNAL_CHECK_EVERY",
    "STUDY_CONDITIONS",
    "NonFiniteLoss",
    "TrainResult",
    "TrainState",
    "Trainer",
    "step_generator",
    "train",
]

Batch = tuple[torch.Tensor, torch.Tensor]


class BatchStream(Protocol):
    """What the trainer needs of its data (:func:`ganscale.data.loader.build_loader` gives one)."""

    info: Any

    def __iter__(self) -> Iterator[Batch]: ...

    def stats(self) -> dict[str, int]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    images_seen: int
    stopped_by_signal: bool = False


class Trainer:
    """G, D, their EMA, the data and the run's outputs, built once; :meth:`step` trains one step.

    ``resume`` ("latest", a checkpoint folder, or None) is loaded here. ``data``, ``batches``,
    ``tracker`` and ``metrics`` replace the defaults (the config's loader, iterated; the
    config's tracker and ``RUN/metrics.jsonl`` on the main process): the bench feeds in-memory
    batches and tracks nothing, the tests feed batches of their own.
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        rt: Runtime,
        *,
        resume: str | None = None,
        data: BatchStream | None = None,
        batches: Iterable[Batch] | None = None,
        tracker: Tracker | None = None,
        metrics: MetricsFile | None = None,
    ) -> None:
        from ganscale.data.loader import build_loader
        from ganscale.models import build_discriminator, build_generator

        self.cfg, self.run_dir, self.rt, self.plan = cfg, run_dir, rt, rt.plan
        self.data: BatchStream = (
            data
            if data is not None
            else build_loader(
                cfg.data,
                image_size=cfg.model.image_size,
                batch_size=self.plan.batch_size,
                seed=cfg.seed,
                rank=rt.rank,
                world_size=rt.world_size,
            )
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
        self.noise = NoiseSource(
            cfg.seed,
            rt.rank,
            cfg.model.z_dim,
            cfg.model.z_sigma,
            self.num_classes,
            self.plan.grad_accum,
            rt.device,
        )
        self.state = TrainState()
        self.meta = generator_meta(cfg, self.attributes)

        # what the run reports; null objects on the other ranks
        if rt.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        self.tracker = (
            tracker
            if tracker is not None
            else build_tracker(
                cfg.log.tracker,
                run_dir,
                cfg.log.project,
                cfg.name,
                cfg.to_dict(),
                rt.is_main,
                env.wandb_mode(),
            )
        )
        self.metrics = (
            metrics if metrics is not None else MetricsFile(run_dir / "metrics.jsonl" if rt.is_main else None)
        )
        self.report = RunLog(cfg, rt, self.data, self.tracker, self.metrics)
        self.outputs = build_outputs(cfg, run_dir, rt, self.ema, self.meta, self.report)
        self.guard = NanGuard(cfg.faults, rt, self.state, self.tracker, self.metrics)
        self.eval_hook = TrainingEvalHook.build(self.eval_context())  # None when eval.every == 0
        self.checkpointer = Checkpointer(
            cfg, run_dir, rt, self.ema, self.data, self.meta, stateful={"eval": self.eval_hook}
        )

        folder = ckpt.resolve_resume(run_dir, resume)
        if folder is not None:
            self.checkpointer.restore(folder, self.state)
            say(rt, f"resumed from {folder} at step {self.state.step}")
        self._source: Iterable[Batch] = self.data if batches is None else batches
        self.batches: Iterator[Batch] = iter(self._source)
        self.data_wait_s = 0.0
        """Seconds spent waiting for batches, summed over the trainer's life."""
        self._closed = False

    def eval_context(self) -> EvalContext:
        """What the training-time evaluation reads (the EMA generator, the run's outputs)."""
        return EvalContext(
            self.cfg,
            self.attributes,
            self.rt,
            self.ema.shadow,
            self.meta,
            self.run_dir,
            self.metrics,
            self.tracker,
            inception_env=env.inception_weights(),
        )

    # ------------------------------------------------------------------ data
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        t0 = time.perf_counter()
        images, labels = next(self.batches)
        self.data_wait_s += time.perf_counter() - t0
        images = images.to(self.rt.device, non_blocking=True)
        if self.cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if not self.num_classes:
            return images, None
        return images, labels.to(self.rt.device, non_blocking=True)

    # ------------------------------------------------------------------ the two phases
    def d_phase(self, step: int) -> dict[str, torch.Tensor]:
        cfg, rt, accum = self.cfg, self.rt, self.plan.grad_accum
        out: dict[str, torch.Tensor] = {}
        for critic in range(cfg.train.n_critic):
            for micro in range(accum):
                real, real_labels = self.next_batch()
                z, fake_labels = self.noise.draw(step, real.shape[0], "d", micro, critic)
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
            if not self.guard.check(loss, "d", step):
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
        cfg, rt, accum = self.cfg, self.rt, self.plan.grad_accum
        D = rt.module("d")  # plain D: no DDP reduction and no gradient kept for D in this phase
        D.requires_grad_(False)
        try:
            for micro in range(accum):
                z, fake_labels = self.noise.draw(step, self.plan.batch_size, "g", micro)
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
        if not self.guard.check(loss, "g", step):
            return out | {"skipped": torch.tensor(1.0)}
        out["grad_norm/g"] = rt.step("g")
        self.ema.update()
        for name, acc in zip(self.attributes, losses.class_accuracy(fake_cls, fake_labels), strict=False):
            out[f"acc/fake/{name}"] = acc
        return out

    def _d_prob(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.detach().float()
        return torch.sigmoid(logits).mean() if self.cfg.loss.adversarial == "bce" else logits.mean()

    # ------------------------------------------------------------------ one step, the loop
    def step(self) -> dict[str, torch.Tensor]:
        """One training step: the D phase, the G phase (NaN checks inside), then the counters.

        Returns the step's record (0-dim tensors, not read: no host sync). Raises
        :class:`~ganscale.train.faults.Rollback` under faults.nan_policy=rollback.
        """
        step = self.state.step
        record = self.d_phase(step)
        record |= self.g_phase(step)
        self.state.step += 1
        self.state.images_seen += self.plan.images_per_step
        return record

    def run(self) -> TrainResult:
        cfg, state, report = self.cfg, self.state, self.report
        stop = StopSignal()
        stop.install()
        report.start(state.step, state.images_seen, self.data_wait_s)
        stopped = False
        try:
            while not self.done():
                try:
                    record = self.step()
                except Rollback as e:
                    self.rollback(str(e))
                    continue
                step = state.step
                if step % cfg.log.every == 0 or self.done():
                    report.write(record, step, state.images_seen, self.data_wait_s)
                if cfg.log.sample_every and step % cfg.log.sample_every == 0:
                    self.outputs.write_samples(step)
                if self.eval_hook is not None:  # every rank: metrics are computed across ranks
                    self.eval_hook.after_step(step, final=self.done())
                if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and not self.done():
                    self.save()
                if self.stop_requested(stop, step):
                    stopped = True
                    break
                report.progress.update(step, report.last_row)
            self.save()
            self.outputs.finish(state.step)
        finally:
            stop.restore()
            self.close()
        return TrainResult(self.run_dir, state.step, state.images_seen, stopped_by_signal=stopped)

    def done(self) -> bool:
        tc = self.cfg.train
        return (tc.max_steps > 0 and self.state.step >= tc.max_steps) or (
            tc.max_images > 0 and self.state.images_seen >= tc.max_images
        )

    def stop_requested(self, stop: StopSignal, step: int) -> bool:
        """Has any rank received a stop signal? (checked every SIGNAL_CHECK_EVERY steps)"""
        if step % SIGNAL_CHECK_EVERY and self.rt.world_size > 1:
            return False
        t = torch.tensor([1.0 if stop.received is not None else 0.0], device=self.rt.device)
        return bool(self.rt.all_reduce_mean(t).item() > 0)

    # ------------------------------------------------------------------ checkpoints, faults
    def save(self) -> None:
        """Checkpoint the current step (collective; no-op when it is already saved)."""
        if self.checkpointer.is_latest(self.state.step):
            return
        self.guard.ensure_clean(self.state.step)
        self.checkpointer.save(self.state)

    def rollback(self, reason: str) -> None:
        """Reload the latest checkpoint with a lower lr, and read the data from there."""
        roll_back(reason, self.cfg.faults, self.state, self.checkpointer, self.metrics)
        self._close_batches()
        self.batches = iter(self._source)

    def _close_batches(self) -> None:
        # closing the batch generator shuts the DataLoader's worker processes down (otherwise
        # a worker can outlive the trainer after a signal)
        getattr(self.batches, "close", lambda: None)()

    def close(self) -> None:
        """Stop the data workers, close the metrics file, the tracker and the progress bar."""
        if self._closed:
            return
        self._closed = True
        self._close_batches()
        self.report.close()


def train(cfg: Config, run_dir: Path, resume: str | None = None) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (created; the resolved config is saved there)."""
    rt = build_runtime(cfg)
    try:
        if rt.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
        rt.barrier()
        return Trainer(cfg, run_dir, rt, resume=resume).run()
    finally:
        rt.end()
