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
from collections.abc import Iterable
from pathlib import Path

import torch

from ganscale.augment import RealBatchAugment
from ganscale.augment.ada import build_augmenter
from ganscale.config import Config, save_config
from ganscale.errors import GanscaleError
from ganscale.evaluation.during_training import EvalContext, TrainingEvalHook
from ganscale.outputs.export import generator_meta
from ganscale.outputs.tracking import MetricsFile, Tracker, build_tracker
from ganscale.runtime import Runtime, build_runtime, env
from ganscale.train import checkpoint as ckpt
from ganscale.train import losses
from ganscale.train.ema import EMA
from ganscale.train.faults import (
    SIGNAL_CHECK_EVERY,
    DataEnded,
    DataWatch,
    NanGuard,
    NonFiniteLoss,
    Rollback,
    StopSignal,
    agree,
    roll_back,
)
from ganscale.train.noise import NoisePhase, NoiseSource, check_plan, step_generator
from ganscale.train.reporting import STUDY_CONDITIONS, RunLog, build_outputs, say
from ganscale.train.run_folder import RunMetrics, clear_run, drop_after_resume, plan_start
from ganscale.train.state import Checkpointer, TrainState
from ganscale.train.types import Batch, BatchStream, TrainResult

__all__ = [
    "SIGNAL_CHECK_EVERY",
    "STUDY_CONDITIONS",
    "DataEnded",
    "NonFiniteLoss",
    "TrainResult",
    "TrainState",
    "Trainer",
    "step_generator",
    "train",
]


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
                output="uint8",  # read + decode only; converted and augmented on rt.device
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
        check_plan(rt.world_size, self.plan.grad_accum, self.plan.n_critic)
        self.noise = NoiseSource(
            cfg.seed,
            rt.rank,
            cfg.model.z_dim,
            cfg.model.z_sigma,
            self.num_classes,
            self.plan.grad_accum,
            rt.device,
        )
        # the real batch: loader uint8 -> float [-1, 1] on the device, the study's flip/rotation
        # warped there (data.augment_on: device); float batches fed in are only moved
        layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.real_batch = RealBatchAugment(rt.device, layout)
        # stabilisers (augment.*, loss.lecam_*) and the one-G-forward step (train.shared_fake)
        self.augment = build_augmenter(cfg, rt)
        self.lecam = losses.LeCamEMA(cfg.loss.lecam_decay, rt.device) if cfg.loss.lecam_weight > 0 else None
        self.shared_fake = cfg.shares_fake(self.plan.grad_accum)
        self._fake: tuple[torch.Tensor, torch.Tensor | None] | None = None  # the D phase's, for G
        self._d_params = list(rt.module("d").parameters())  # toggled per step: D.requires_grad_ walks modules
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
            metrics if metrics is not None else RunMetrics(run_dir / "metrics.jsonl" if rt.is_main else None)
        )
        self.report = RunLog(cfg, rt, self.data, self.tracker, self.metrics)
        self.outputs = build_outputs(cfg, run_dir, rt, self.ema, self.meta, self.report)
        self.batches = DataWatch(self.data if batches is None else batches)
        self.guard = NanGuard(cfg.faults, rt, self.state, self.tracker, self.metrics, self.batches)
        self.eval_hook = TrainingEvalHook.build(self.eval_context())  # None when eval.every == 0
        ranked = {"augment": self.augment, "lecam": self.lecam}  # ADA's statistics, LeCam's EMAs
        self.checkpointer = Checkpointer(
            cfg, run_dir, rt, self.ema, self.data, self.meta, {"eval": self.eval_hook}, per_rank=ranked
        )

        folder = agree(rt, lambda: ckpt.resolve_resume(run_dir, resume))  # rank 0's view, everywhere
        if folder is not None:
            self.checkpointer.restore(folder, self.state)
            say(rt, f"resumed from {folder} at step {self.state.step}")
        if resume is not None and rt.is_main:  # rows and checkpoints past the resumed step go
            say(rt, drop_after_resume(run_dir, self.metrics, self.state.step))
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
        batch = next(self.batches)
        self.data_wait_s += time.perf_counter() - t0
        # a LoaderBatch (uint8 + per-sample flip/angle) or a plain (float images, labels) pair
        labels = batch[1]
        images = self.real_batch(batch[0], getattr(batch, "aug", None))
        if not self.num_classes:
            return images, None
        return images, labels.to(self.rt.device, non_blocking=True)

    # ------------------------------------------------------------------ the two phases
    def d_phase(self, step: int) -> dict[str, torch.Tensor]:
        cfg, rt, accum, aug, lc = self.cfg, self.rt, self.plan.grad_accum, self.augment, self.cfg.loss
        out: dict[str, torch.Tensor] = {}
        self._fake = None
        for critic in range(cfg.train.n_critic):
            # lazy penalty: on D updates 0, N, 2N... (counted over steps and critic updates)
            penalty = lc.penalty != "none" and (step * cfg.train.n_critic + critic) % lc.penalty_every == 0
            for micro in range(accum):
                real, real_labels = self.next_batch()
                z, fake_labels = self.noise.draw(step, real.shape[0], "d", micro, critic)
                with rt.no_sync("d", enabled=micro < accum - 1), rt.autocast():
                    with torch.set_grad_enabled(self.shared_fake):  # shared: G's graph kept for the G phase
                        fake = rt.G(z, fake_labels)
                    real_logits, real_cls = rt.D(aug(real), real_labels)
                    fake_logits, fake_cls = rt.D(aug(fake.detach()), fake_labels)
                    adv = losses.d_adversarial_loss(cfg.loss.adversarial, real_logits, fake_logits)
                    cls = losses.class_loss(real_cls, real_labels, device=rt.device)
                    if cfg.loss.d_fake_class:
                        cls = cls + losses.class_loss(fake_cls, fake_labels, all_known=True, device=rt.device)
                    cls = cfg.loss.class_weight * cls
                    loss = adv + cls
                    if penalty:  # of D after the augmentation (the plain D under it, as losses.py runs)
                        pen_d = aug.discriminator(rt.D, plain=rt.module("d"))
                        pen = losses.gradient_penalty(
                            lc.penalty,
                            pen_d,
                            real,
                            fake,
                            real_labels,
                            generator=self.noise.generator(step, NoisePhase.PENALTY, critic, micro),
                        )
                        loss = loss + lc.penalty_weight * lc.penalty_every * pen
                        out["loss/penalty"] = pen.detach()
                    if self.lecam is not None:
                        lecam = self.lecam.penalty(real_logits, fake_logits)  # EMAs updated first
                        loss = loss + lc.lecam_weight * lecam
                        out["loss/lecam"] = lecam.detach()
                    aug.observe_real(real_logits)
                    rt.backward(loss / accum, "d")
            if not self.guard.check(loss, "d", step):  # agreed by every rank
                out["grad_norm/d"] = self.guard.nan  # dropped: every key still filled
                break
            norm = rt.step("d", measure=self.logged(step))  # only where a metrics row reads it
            if norm is not None:
                out["grad_norm/d"] = norm
            if self.shared_fake:  # only after D's update went through: a skipped one redraws for G
                self._fake = (fake, fake_labels)
        out["loss/d"] = loss.detach()
        out["loss/d_class"] = cls.detach()
        if self.logged(step):  # what only a metrics row reads
            out["d/real"] = self._d_prob(real_logits)
            out["d/fake"] = self._d_prob(fake_logits)
            for name, acc in zip(self.attributes, losses.class_accuracy(real_cls, real_labels), strict=False):
                out[f"acc/real/{name}"] = acc
        return out

    def g_phase(self, step: int) -> dict[str, torch.Tensor]:
        cfg, rt, accum, aug = self.cfg, self.rt, self.plan.grad_accum, self.augment
        D = rt.module("d")  # plain D: no DDP reduction and no gradient kept for D in this phase
        shared, self._fake = self._fake, None
        for p in self._d_params:
            p.requires_grad_(False)
        try:
            for micro in range(accum):
                if shared is None:
                    z, fake_labels = self.noise.draw(step, self.plan.batch_size, "g", micro)
                with rt.no_sync("g", enabled=micro < accum - 1), rt.autocast():
                    # shared: the D phase's G forward (D's graph is new: the D step changed D in place)
                    fake, fake_labels = shared if shared is not None else (rt.G(z, fake_labels), fake_labels)
                    fake_logits, fake_cls = D(aug(fake), fake_labels)
                    adv = losses.g_adversarial_loss(cfg.loss.adversarial, fake_logits)
                    cls = cfg.loss.class_weight * losses.class_loss(
                        fake_cls, fake_labels, all_known=True, device=rt.device
                    )
                    loss = adv + cls
                    rt.backward(loss / accum, "g")
        finally:
            for p in self._d_params:
                p.requires_grad_(True)
        out = {"loss/g": loss.detach(), "loss/g_class": cls.detach()}
        if self.guard.check(loss, "g", step):  # agreed by every rank
            norm = rt.step("g", measure=self.logged(step))
            if norm is not None:
                out["grad_norm/g"] = norm
            self.ema.update()
        else:
            out["grad_norm/g"] = self.guard.nan  # dropped: every key still filled
        if self.logged(step):
            for name, acc in zip(self.attributes, losses.class_accuracy(fake_cls, fake_labels), strict=False):
                out[f"acc/fake/{name}"] = acc
        return out

    def logged(self, step: int) -> bool:
        """Is 0-based ``step``'s record written (what :meth:`run` logs: every log.every steps
        and the last)? Metrics nothing else reads are computed on those steps only."""
        tc, after = self.cfg.train, step + 1
        return (
            after % self.cfg.log.every == 0
            or after == tc.max_steps
            or 0 < tc.max_images - self.state.images_seen <= self.plan.images_per_step
        )

    def _d_prob(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.detach().float()
        return torch.sigmoid(logits).mean() if self.cfg.loss.adversarial == "bce" else logits.mean()

    # ------------------------------------------------------------------ one step, the loop
    def step(self) -> dict[str, torch.Tensor]:
        """One training step: the D phase, the G phase (NaN checks inside), then the counters.

        Returns the step's record (0-dim tensors, not read: no host sync), with the same keys
        on every rank and every step (``skipped``: 1 when an update was dropped), except keys
        only some steps compute, on all ranks alike: ``d/*``, ``acc/*`` and ``grad_norm/*`` on
        logged steps (:meth:`logged`; NaN on any step whose update was dropped),
        ``loss/penalty`` on lazy-penalty steps. Raises
        :class:`~ganscale.train.faults.Rollback` under faults.nan_policy=rollback.
        """
        step = self.state.step
        self.guard.skipped = False
        self.augment.start_step(step)
        record = self.d_phase(step)
        record |= self.g_phase(step)
        record |= self.augment.end_step(step)  # ADA: p's adjustment (collective every ada_interval)
        record["skipped"] = self.guard.one if self.guard.skipped else self.guard.zero
        self.state.step += 1
        self.state.images_seen += self.plan.images_per_step
        return record

    def run(self) -> TrainResult:
        cfg, state, report = self.cfg, self.state, self.report
        stop = StopSignal()
        stop.install()
        stopped = False
        try:
            self.batches.start(self.rt)  # every rank has data, or every rank stops
            report.start(state.step, state.images_seen, self.data_wait_s)
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
        """Has any rank received a stop signal? (agreed; see :meth:`StopSignal.agreed`)"""
        return stop.agreed(self.rt, step, self.cfg.faults.check_every)

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
        self.guard.reset()
        self.batches.restart()

    def close(self) -> None:
        """Stop the data workers, close the metrics file, the tracker and the progress bar."""
        if self._closed:
            return
        self._closed = True
        self.batches.close()
        self.report.close()


def train(cfg: Config, run_dir: Path, resume: str | None = None, overwrite: bool = False) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (created; the resolved config is saved there).

    A folder that holds a run needs ``resume`` (continue it) or ``overwrite`` (remove its files
    first); a resume into networks of other shapes is refused. Those refusals come before
    anything is written (:mod:`ganscale.train.run_folder`), agreed by every rank.
    """
    rt = build_runtime(cfg)
    try:
        start = agree(rt, lambda: plan_start(cfg, run_dir, resume, overwrite))
        if rt.is_main:
            if start.overwrite:
                say(rt, clear_run(run_dir, start))
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
        rt.barrier()
        return Trainer(cfg, run_dir, rt, resume=resume).run()
    finally:
        rt.end()
