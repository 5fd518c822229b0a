"""One plan before anything is touched: a validated config + the process count + the corpus ->
everything a run derives, and every refusal.

:func:`resolve` works out the batch plan, D's normalisation, the augmentation policy, the
corpus's attributes (and whether the model can be conditional on them), shared fake,
training-time evaluation, the in-memory budget and the noise counter's fields, and raises
every refusal that does not need the run folder (one line, :class:`GanscaleError`). It writes
nothing. ``ganscale train`` calls it before ``--overwrite`` removes anything or ``--resume``
loads anything (:func:`ganscale.train.trainer.train`); the :class:`Plan` it returns is what
the :class:`~ganscale.train.trainer.Trainer` is built from (it derives nothing again).

The config stays as written (``model.d_norm: auto``, ``augment.policy: auto`` are saved so);
the values they resolve to are the plan's, the same for the same config on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganscale.config import Config
from ganscale.config.schema import DOUBLE_BACKWARD
from ganscale.errors import GanscaleError
from ganscale.runtime.base import BatchPlan
from ganscale.seeding import check_plan

if TYPE_CHECKING:
    from ganscale.data.info import CorpusInfo
    from ganscale.data.resolve import ResolvedCorpus
    from ganscale.data.sources import ShardSource
    from ganscale.runtime import Runtime
    from ganscale.train.types import BatchStream


def d_norm_of(cfg: Config) -> str:
    """D's normalisation: model.d_norm, auto resolved (none for WGAN-GP's per-sample penalty,
    under spectral norm on D (SN-GAN), and for r1/dragan with train.sync_batchnorm (SyncBatchNorm
    has no double backward), else batch)."""
    model = cfg.model
    if model.d_norm != "auto":
        return model.d_norm
    sync_double = cfg.train.sync_batchnorm and cfg.loss.penalty in DOUBLE_BACKWARD
    return "none" if cfg.loss.penalty == "gp" or model.spectral_norm != "none" or sync_double else "batch"


def augment_policy_of(cfg: Config) -> tuple[str, ...]:
    """The transforms of augment.policy (auto: translation,cutout,color, without color for a
    conditional model); () with augment.kind none."""
    aug = cfg.augment
    if aug.kind == "none":
        return ()
    policy = aug.policy
    if policy == "auto":
        policy = "translation,cutout" if cfg.model.conditional else "translation,cutout,color"
    return tuple(n.strip() for n in policy.split(",") if n.strip())


def eval_interval(cfg: Config) -> int:
    """Steps between training-time evaluations (0 = off), eval.every -1 resolved to checkpoint.every."""
    return cfg.checkpoint.every if cfg.eval.every == -1 else cfg.eval.every


def shares_fake(cfg: Config, grad_accum: int) -> bool:
    """train.shared_fake for a run of ``grad_accum`` micro-steps (auto: where allowed); true where
    the run accumulates (train.global_batch) is refused."""
    mode, allowed = cfg.train.shared_fake, cfg.train.n_critic == 1 and grad_accum == 1
    if mode is True and not allowed:
        raise GanscaleError(
            f"config key train.shared_fake: true, but this run accumulates {grad_accum} micro-batches "
            f"(train.global_batch); use --set train.shared_fake=auto"
        )
    return allowed if mode == "auto" else bool(mode)


@dataclass(frozen=True)
class Plan:
    """What a run derives from its config, the process count and its corpus (see the module)."""

    cfg: Config
    batch: BatchPlan
    """Images per process per micro-step, micro-steps per update, processes, D updates per step."""
    d_norm: str
    """D's normalisation: batch or none (:func:`d_norm_of`)."""
    augment_policy: tuple[str, ...]
    """The transforms D's inputs get (augment.kind diffaugment/ada); () when off."""
    corpus: CorpusInfo
    """The corpus's facts (records, shards, attribute vocabulary)."""
    shards: ShardSource | None
    """The checked shards the loader streams; None when the batches are fed in (tests, bench)."""
    attributes: dict[str, list[str]]
    """The attributes G and D are conditioned on: the corpus's, or none (unconditional)."""
    shared_fake: bool
    """One G forward per step (train.shared_fake resolved)."""
    eval_every: int
    """Steps between training-time evaluations (0 = off)."""
    eval_corpus: Path | None
    """The corpus folder the evaluation's classifier and real statistics come from (when on)."""

    @property
    def num_classes(self) -> list[int]:
        """Classes per attribute (empty: unconditional)."""
        return [len(v) for v in self.attributes.values()]

    @property
    def images_per_step(self) -> int:
        return self.batch.images_per_step


def resolve(cfg: Config, world: int, corpus: ResolvedCorpus | CorpusInfo) -> Plan:
    """The run's :class:`Plan` on ``world`` processes reading ``corpus`` (a checked
    :class:`~ganscale.data.resolve.ResolvedCorpus`, or the facts of batches fed in). Raises
    every refusal that does not need the run folder; writes nothing."""
    info, shards = (corpus.info, corpus.source) if hasattr(corpus, "source") else (corpus, None)
    batch = BatchPlan.of(cfg, world)  # train.global_batch not divisible: refused here
    check_plan(world, batch.grad_accum, batch.n_critic)  # the noise counter's fields
    attributes = {k: list(v) for k, v in info.attributes.items()} if cfg.model.conditional else {}
    if cfg.model.conditional and not attributes:
        raise GanscaleError(
            "model.conditional is true but the corpus has no attributes (labels); "
            "use a labelled corpus or --set model.conditional=false"
        )
    if cfg.loss.mode_seeking_weight > 0 and batch.batch_size < 2:
        raise GanscaleError(
            "config key loss.mode_seeking_weight: needs pairs of images in each batch, but "
            f"train.batch_size resolves to {batch.batch_size} per process; use a batch of 2 or more"
        )
    if cfg.data.in_memory and shards is not None:
        _check_memory(cfg, world, info)
    if cfg.train.freeze_d:
        _check_freeze_d(cfg)
    every = eval_interval(cfg)
    return Plan(
        cfg=cfg,
        batch=batch,
        d_norm=d_norm_of(cfg),
        augment_policy=augment_policy_of(cfg),
        corpus=info,
        shards=shards,
        attributes=attributes,
        shared_fake=shares_fake(cfg, batch.grad_accum),
        eval_every=every,
        eval_corpus=_check_eval(cfg, attributes) if every > 0 else None,
    )


def _check_memory(cfg: Config, world: int, info: CorpusInfo) -> None:
    """data.in_memory: the largest rank's share must fit data.in_memory_max_gb (as the loader
    will stream it: resampled when there are fewer shards than readers)."""
    from ganscale.data.memory import check_fits

    dc = cfg.data
    resampled = dc.resampled or info.num_shards < world * max(1, dc.num_workers)
    check_fits(info, cfg.model.image_size, world, 0, resampled, dc.in_memory_max_gb)


def _check_freeze_d(cfg: Config) -> None:
    """train.freeze_d: at most D's block count (counted from the image side)."""
    from ganscale.models.conditioning import discriminator_block_count

    blocks = discriminator_block_count(cfg.model)
    if cfg.train.freeze_d > blocks:
        raise GanscaleError(
            f"config key train.freeze_d: {cfg.train.freeze_d} is more than D's {blocks} blocks "
            f"({cfg.model.arch} at {cfg.model.image_size} px); use at most {blocks}"
        )


def _check_eval(cfg: Config, attributes: dict[str, list[str]]) -> Path:
    """Training-time evaluation: a local corpus folder, Inception weights when the metric needs
    them, a conditional model for the accuracy metrics. Returns the corpus folder."""
    from ganscale.data.resolve import corpus_folder
    from ganscale.evaluation.features import inception_path
    from ganscale.runtime import env

    metric = cfg.eval.metric
    if metric.startswith("acc_joint") and not attributes:
        raise GanscaleError(f"eval.metric={metric} needs a conditional generator; use fid_classifier")
    weights = inception_path(cfg.eval.inception or None, env.inception_weights())  # a missing file: refused
    if weights is None and metric.endswith("_inception"):
        from ganscale.evaluation.features import inception_unavailable_message

        raise GanscaleError(
            f"eval.metric={metric} needs Inception weights. {inception_unavailable_message()}"
        )
    return corpus_folder(cfg.data, cfg.model.image_size)


def plan_for(cfg: Config, rt: Runtime, data: BatchStream | Any | None = None) -> Plan:
    """The plan of ``cfg`` on ``rt``'s processes: reading the config's corpus (checked; the
    built-in synthetic one is built into data.cache_dir if missing), or ``data``'s (batches
    fed in)."""
    if data is not None:
        return resolve(cfg, rt.world_size, data.info)
    from ganscale.data.resolve import resolve_corpus

    return resolve(cfg, rt.world_size, resolve_corpus(cfg.data, cfg.model.image_size, progress=rt.is_main))
