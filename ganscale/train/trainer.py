"""The training loop: read :meth:`Trainer.run` (step, decide, act) and :meth:`Trainer.step`
(a D phase, then a G phase) top to bottom.

``ganscale train`` first resolves a :class:`~ganscale.train.plan.Plan` (every derived value and
every refusal, before the run folder is touched: :func:`train`), then builds the trainer from
it. :meth:`Trainer.step` is what ``ganscale train``, ``ganscale bench`` and the multi-process
tests run. Around it: :mod:`~ganscale.train.terms` (the step's loss terms),
:mod:`~ganscale.train.noise`, :mod:`~ganscale.train.faults` (the decision: NaN policy, rollback,
stop signals, the data's end), :mod:`~ganscale.train.state` (the resumable state),
:mod:`~ganscale.train.reporting` (the one metrics writer, sample grids, export).

Randomness that matters for exact resume is derived, not carried: the noise of step ``t``
on rank ``r`` comes from a generator seeded with (seed, rank, t, phase), and the data
stream's order and augmentation from (seed, epoch, rank, position). So a checkpoint needs
only weights, optimizers, scalers, EMA, counters and the data position to continue
bit-exactly.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from ganscale.augment import RealBatchAugment
from ganscale.augment.ada import build_augmenter
from ganscale.config import Config, save_config
from ganscale.evaluation.during_training import EvalContext, TrainingEvalHook
from ganscale.outputs.export import generator_meta
from ganscale.outputs.tracking import MetricsFile, Tracker, build_tracker
from ganscale.run_layout import CONFIG, METRICS
from ganscale.runtime import Runtime, build_runtime, env
from ganscale.train import checkpoint as ckpt
from ganscale.train import losses, terms
from ganscale.train.ema import EMA
from ganscale.train.faults import (
    CONTINUE,
    Action,
    DataEnded,
    DataWatch,
    Decision,
    Faults,
    NonFiniteLoss,
    StopSignal,
    agree,
    roll_back,
)
from ganscale.train.init_from import InitPlan, apply_init, plan_init
from ganscale.train.noise import NoisePhase, NoiseSource, step_generator
from ganscale.train.plan import Plan, plan_for
from ganscale.train.reporting import STUDY_CONDITIONS, RunLog, build_outputs, say
from ganscale.train.run_folder import RunMetrics, clear_run, drop_after_resume, plan_start
from ganscale.train.state import Checkpointer, TrainState
from ganscale.train.types import Batch, BatchStream, TrainResult

__all__ = [
    "STUDY_CONDITIONS",
    "DataEnded",
    "NonFiniteLoss",
    "Plan",
    "TrainResult",
    "TrainState",
    "Trainer",
    "plan_for",
    "step_generator",
    "train",
]


@contextlib.contextmanager
def frozen(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """D's parameters frozen for the G phase (per parameter: D.requires_grad_ walks modules)."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class Trainer:
    """G, D, their EMA, the data and the run's outputs, built once from a resolved
    :class:`~ganscale.train.plan.Plan`; :meth:`step` trains one step, :meth:`run` the run.

    ``resume`` ("latest", a checkpoint folder, or None) is loaded here. ``data``, ``batches``,
    ``tracker`` and ``metrics`` replace the defaults (the plan's corpus, streamed; the
    config's tracker and ``RUN/metrics.jsonl`` on the main process): the bench feeds in-memory
    batches and tracks nothing, the tests feed batches of their own (resolve the plan with
    :func:`~ganscale.train.plan.plan_for` ``(cfg, rt, data)`` then).
    """

    def __init__(
        self,
        plan: Plan,
        run_dir: Path,
        rt: Runtime,
        *,
        resume: str | None = None,
        data: BatchStream | None = None,
        batches: Iterable[Batch] | None = None,
        tracker: Tracker | None = None,
        metrics: MetricsFile | None = None,
        init: InitPlan | None = None,
    ) -> None:
        from ganscale.data.loader import build_loader
        from ganscale.models import build_discriminator, build_generator
        from ganscale.models.conditioning import freeze_discriminator_blocks

        cfg, batch = plan.cfg, plan.batch
        self.plan, self.cfg, self.run_dir, self.rt = plan, cfg, run_dir, rt
        self.attributes, self.num_classes = plan.attributes, plan.num_classes
        self.data: BatchStream = (
            data
            if data is not None
            else build_loader(
                cfg.data,
                image_size=cfg.model.image_size,
                batch_size=batch.batch_size,
                seed=cfg.seed,
                rank=rt.rank,
                world_size=rt.world_size,
                output="uint8",  # read + decode only; converted and augmented on rt.device
                info=plan.corpus,  # resolved by the plan: not opened again
            )
        )
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        G = build_generator(cfg.model, self.num_classes)
        D = build_discriminator(cfg.model, self.num_classes, norm=plan.d_norm)
        if init is not None:  # --init-from: the source's matching weights (ganscale/train/init_from.py)
            say(rt, apply_init(G, D, init, self.attributes))
        freeze_discriminator_blocks(D, cfg.train.freeze_d)  # train.freeze_d: before the optimizer, DDP
        rt.setup(G, D)
        self.ema = EMA(rt.module("g"), cfg.train.ema_decay)
        self.noise = NoiseSource(
            cfg.seed,
            rt.rank,
            cfg.model.z_dim,
            cfg.model.z_sigma,
            self.num_classes,
            rt.device,
            paired=cfg.loss.mode_seeking_weight > 0,
        )
        # the real batch: loader uint8 -> float [-1, 1] on the device, the study's flip/rotation
        # warped there (data.augment_on: device); float batches fed in are only moved
        layout = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.real_batch = RealBatchAugment(rt.device, layout)
        # stabilisers (augment.*, loss.lecam_*)
        self.augment = build_augmenter(cfg, rt, plan.augment_policy, plan.images_per_step)
        self.lecam = losses.LeCamEMA(cfg.loss.lecam_decay, rt.device) if cfg.loss.lecam_weight > 0 else None
        # frozen for the G phase (train.freeze_d's frozen ones stay frozen)
        self._d_params = [p for p in rt.module("d").parameters() if p.requires_grad]
        self.state = TrainState()
        self.meta = generator_meta(cfg, self.attributes)

        # what the run reports (null objects on the other ranks); RunLog is the one metrics writer
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
            metrics if metrics is not None else RunMetrics(run_dir / METRICS if rt.is_main else None)
        )
        self.report = RunLog(cfg, rt, self.data, self.tracker, self.metrics)
        self.outputs = build_outputs(cfg, run_dir, rt, self.ema, self.meta, self.report)
        self.batches = DataWatch(self.data if batches is None else batches, self.data)
        self.faults = Faults(cfg.faults, rt, self.state, self.report, self.batches)
        self.eval_hook = TrainingEvalHook.build(self.eval_context())  # None when eval is off
        ranked = {"augment": self.augment, "lecam": self.lecam}  # ADA's statistics, LeCam's EMAs
        self.checkpointer = Checkpointer(
            cfg, run_dir, rt, self.ema, self.batches, self.meta, {"eval": self.eval_hook}, per_rank=ranked
        )

        folder = agree(rt, lambda: ckpt.resolve_resume(run_dir, resume))  # rank 0's view, everywhere
        if folder is not None:
            self.checkpointer.restore(folder, self.state)
            say(rt, f"resumed from {folder} at step {self.state.step}")
        if resume is not None and rt.is_main:  # rows and checkpoints past the resumed step go
            say(rt, drop_after_resume(run_dir, self.report.drop_after, self.state.step))
        self.faults.reset()  # decisions count from the resumed step
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
            self.report,
            self.tracker,
            every=self.plan.eval_every,
            corpus=self.plan.eval_corpus,
            inception_env=env.inception_weights(),
            cache_dir=env.cache_dir(),
        )

    # ------------------------------------------------------------------ one step
    def step(self, log: bool | None = None) -> dict[str, torch.Tensor]:
        """One training step: the D phase, the G phase, then the counters. ``log``: is the
        step's metrics row written (:meth:`logged`, computed when not given)?

        Returns the step's record (0-dim tensors, not read: no host sync), with the same keys
        on every rank and every step (``skipped``: 1 when an update was dropped), except keys
        only some steps compute, on all ranks alike: ``d/*``, ``acc/*`` and ``grad_norm/*`` on
        logged steps (NaN on any step whose update was dropped), ``loss/penalty`` on
        lazy-penalty steps. Non-finite losses are noted for the next decision (:meth:`run`).
        """
        rt, aug, lc = self.rt, self.augment, self.cfg.loss
        accum, step = self.plan.batch.grad_accum, self.state.step
        log = self.logged() if log is None else log
        out: dict[str, torch.Tensor] = {}
        self.faults.skipped = False
        aug.start_step(step)

        # D phase: n_critic updates of D, each on grad_accum micro-batches of reals and fakes
        for critic in range(self.plan.batch.n_critic):
            penalty = terms.penalty_due(lc, self.plan.batch.n_critic, step, critic)
            for micro in range(accum):
                real, real_labels = self.next_batch()
                z, fake_labels = self.noise.draw(step, real.shape[0], "d", micro, critic)
                with rt.no_sync("d", enabled=micro < accum - 1), rt.autocast():
                    with torch.set_grad_enabled(self.plan.shared_fake):  # shared: G's graph kept for G
                        fake = rt.G(z, fake_labels)
                    real_logits, real_cls = rt.D(aug(real), real_labels)
                    fake_logits, fake_cls = rt.D(aug(fake.detach()), fake_labels)
                    loss_d, cls_d = terms.d_loss(
                        lc, real_logits, real_cls, real_labels, fake_logits, fake_cls, fake_labels
                    )
                    if penalty:  # of D after the augmentation, with the step's own random mixing
                        gen = self.noise.generator(step, NoisePhase.PENALTY, critic, micro)
                        loss_d = loss_d + terms.penalty_term(lc, rt, aug, gen, real, fake, real_labels, out)
                    if self.lecam is not None:
                        loss_d = loss_d + terms.lecam_term(lc, self.lecam, real_logits, fake_logits, out)
                    aug.observe_real(real_logits)
                    rt.backward(loss_d / accum, "d")
            if not self.update("d", loss_d, log, out):
                break  # dropped (faults.nan_policy=skip): G draws fresh fakes
        shared = (fake, fake_labels) if self.plan.shared_fake and not self.faults.skipped else None

        # G phase: D frozen (its plain module: no DDP reduction), grad_accum micro-batches of fakes
        D = rt.module("d")
        with frozen(self._d_params):
            for micro in range(accum):
                if shared is None:
                    z, fake_labels = self.noise.draw(step, self.plan.batch.batch_size, "g", micro)
                with rt.no_sync("g", enabled=micro < accum - 1), rt.autocast():
                    # shared: the D phase's G forward (D's graph is new: the D step changed D in place)
                    fake, fake_labels = shared if shared is not None else (rt.G(z, fake_labels), fake_labels)
                    g_logits, g_cls = D(aug(fake), fake_labels)
                    loss_g, cls_g = terms.g_loss(lc, g_logits, g_cls, fake_labels)
                    if lc.mode_seeking_weight > 0:  # pairs of one condition must differ
                        loss_g = loss_g + terms.mode_seeking_term(lc, z, fake, out)
                    rt.backward(loss_g / accum, "g")
        if self.update("g", loss_g, log, out):
            self.ema.update()

        # the step's record, ADA's adjustment, the counters
        out |= {"loss/d": loss_d.detach(), "loss/d_class": cls_d.detach()}
        out |= {"loss/g": loss_g.detach(), "loss/g_class": cls_g.detach()}
        if log:
            d_out = (real_logits, fake_logits, real_cls, real_labels, g_cls, fake_labels)
            out |= terms.logged_metrics(lc.adversarial, self.attributes, *d_out)
        out |= aug.end_step(step)  # ADA: p's adjustment (collective every ada_interval)
        out["skipped"] = self.faults.one if self.faults.skipped else self.faults.zero
        self.state.step += 1
        self.state.images_seen += self.plan.images_per_step
        return out

    # ------------------------------------------------------------------ the step's parts
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next real batch on the device (float [-1, 1], warped) and its labels."""
        t0 = time.perf_counter()
        batch = next(self.batches)
        self.data_wait_s += time.perf_counter() - t0
        # a LoaderBatch (uint8 + per-sample flip/angle) or a plain (float images, labels) pair
        labels = batch[1]
        images = self.real_batch(batch[0], getattr(batch, "aug", None))
        if not self.num_classes:
            return images, None
        return images, labels.to(self.rt.device, non_blocking=True)

    def update(self, net: str, loss: torch.Tensor, log: bool, out: dict[str, torch.Tensor]) -> bool:
        """``net``'s optimizer step; False when faults.nan_policy=skip dropped it (its norm NaN).
        The gradient norm is measured only where a metrics row reads it."""
        if not self.faults.update_ok(net, loss, self.state.step):
            out[f"grad_norm/{net}"] = self.faults.nan  # dropped: every key still filled
            return False
        norm = self.rt.step(net, measure=log)
        if norm is not None:
            out[f"grad_norm/{net}"] = norm
        return True

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        """Step, decide (one agreement of every rank per faults.check_every steps and after the
        last), act: continue, skip (an update already dropped), roll back, or stop (a stop
        signal: checkpoint and exit; a non-finite loss or the data's end: the error)."""
        state, stop = self.state, StopSignal()
        stop.install()
        try:
            self.report.start(state.step, state.images_seen, self.data_wait_s)
            decision = self.decide(stop)  # every rank holds the first window's batches
            while decision.action is not Action.STOP and not self.done():
                log = self.logged()
                record = self.step(log)
                decision = self.decide(stop) if self.faults.due(state.step) or self.done() else CONTINUE
                if decision.action is Action.ROLLBACK:  # reload the last checkpoint, lower the lr
                    self.rollback(decision.reason)
                    decision = self.decide(stop)
                elif not isinstance(decision.error, NonFiniteLoss):  # a non-finite step is not kept
                    self.after_step(record, log)
            if decision.error is not None:
                raise decision.error
            self.save()
            self.outputs.finish(state.step)
        finally:
            stop.restore()
            self.close()
        stopped = decision.action is Action.STOP
        return TrainResult(self.run_dir, state.step, state.images_seen, stopped_by_signal=stopped)

    def decide(self, stop: StopSignal) -> Decision:
        """Read the next check window's batches (those of the steps up to the next decision),
        then the agreed :class:`~ganscale.train.faults.Decision` of every rank."""
        window = min(self.cfg.faults.check_every, self.steps_left())
        t0 = time.perf_counter()
        have = self.batches.fill(window * self.plan.batch.n_critic * self.plan.batch.grad_accum)
        self.data_wait_s += time.perf_counter() - t0
        return self.faults.decide(self.state.step, have, stop)

    def after_step(self, record: dict[str, torch.Tensor], log: bool) -> None:
        """What follows a step that stands: its metrics row, a sample grid, an evaluation, a
        checkpoint (each at its interval), the progress bar."""
        cfg, step = self.cfg, self.state.step
        if log:
            self.report.log_step(record, step, self.state.images_seen, self.data_wait_s)
        if cfg.log.sample_every and step % cfg.log.sample_every == 0:
            self.outputs.write_samples(step)
        if self.eval_hook is not None:  # every rank: metrics are computed across ranks
            self.eval_hook.after_step(step, final=self.done())
        if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and not self.done():
            self.save()
        self.report.progress.update(step, self.report.last_row)

    def logged(self) -> bool:
        """Is the next step's metrics row written? Every log.every steps and the last; metrics
        nothing else reads are computed on those steps only (the one place this is decided)."""
        return (self.state.step + 1) % self.cfg.log.every == 0 or self.steps_left() == 1

    def steps_left(self) -> int:
        """Steps until train.max_steps or train.max_images is reached (the nearer)."""
        tc, state = self.cfg.train, self.state
        left = []
        if tc.max_steps > 0:
            left.append(tc.max_steps - state.step)
        if tc.max_images > 0:
            left.append(math.ceil((tc.max_images - state.images_seen) / self.plan.images_per_step))
        return max(0, min(left))

    def done(self) -> bool:
        return self.steps_left() == 0

    # ------------------------------------------------------------------ checkpoints, faults
    def save(self) -> None:
        """Checkpoint the current step (collective; no-op when it is already saved)."""
        if self.checkpointer.is_latest(self.state.step):
            return
        self.faults.ensure_clean(self.state.step)
        self.checkpointer.save(self.state)

    def rollback(self, reason: str) -> None:
        """Reload the latest checkpoint with a lower lr; the data reads on from its position."""
        ref = roll_back(
            reason,
            self.cfg.faults,
            self.state,
            self.checkpointer.latest(),
            self.checkpointer.restore,
            self.rt.set_lr,
        )
        self.report.drop_after(ref.step, keep_events=True)  # the replayed steps are logged once
        self.report.event(ref.step, "rollback", reason=reason)
        self.faults.reset()

    def close(self) -> None:
        """Stop the data workers, close the metrics file, the tracker and the progress bar."""
        if self._closed:
            return
        self._closed = True
        self.batches.close()
        self.report.close()


def train(
    cfg: Config,
    run_dir: Path,
    resume: str | None = None,
    overwrite: bool = False,
    init_from: str | None = None,
) -> TrainResult:
    """Train ``cfg`` into ``run_dir`` (created; the config is saved there).

    First ``init_from`` (``--init-from``: the source's weights checked,
    :mod:`ganscale.train.init_from`), then the plan (:func:`~ganscale.train.plan.plan_for`: the
    batch plan, the corpus and its attributes, every refusal of the config on this corpus and
    process count), then the run
    folder's refusals (:func:`~ganscale.train.run_folder.plan_start`: a folder that holds a run
    needs ``resume`` or ``overwrite``; a resume into networks of other shapes is refused), agreed
    by every rank. Only then does ``--overwrite`` remove anything or ``--resume`` load anything.
    """
    rt = build_runtime(cfg)
    try:
        init = None  # --init-from: the source is read (headers only) before the corpus is built
        if init_from is not None:
            init = agree(
                rt, lambda: plan_init(cfg, init_from, run_dir=run_dir, resume=resume, overwrite=overwrite)
            )
        plan = plan_for(cfg, rt)
        start = agree(rt, lambda: plan_start(cfg, run_dir, resume, overwrite))
        if rt.is_main:
            if start.overwrite:
                say(rt, clear_run(run_dir, start))
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / CONFIG)
        rt.barrier()
        return Trainer(plan, run_dir, rt, resume=resume, init=init).run()
    finally:
        rt.end()
