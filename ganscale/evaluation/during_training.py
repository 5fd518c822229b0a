"""The eval metrics every ``eval.every`` steps of training, computed across all ranks.

Each rank generates its share of the ``eval.n`` images (image i goes to rank i % world), runs
the classifier (and Inception, when local weights are given) on them, and the features are
all-gathered to rank 0, which scores them against the cached real features; the result is
shared back so every rank returns the same numbers. The z vectors and conditions are drawn
from a fixed seed, so successive evaluations (and runs on any number of ranks) judge the
same requests: the curve moves only because G does.

The trainer's side: it builds an :class:`EvalContext` (config, attributes, runtime, EMA
generator, export metadata, run folder, metrics file, tracker) and calls
``TrainingEvalHook.build(ctx)`` once, then ``hook.after_step(step, final)`` after each step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ganscale.config import METRIC_DIRECTIONS
from ganscale.errors import GanscaleError
from ganscale.evaluation.classifier import accuracy, classifier_from_state, ensure_classifier
from ganscale.evaluation.diversity import structure_embedding
from ganscale.evaluation.features import load_inception
from ganscale.evaluation.scoring import draw_conditions, real_reference, score, uniform_conditions
from ganscale.outputs.latents import draw_z

if TYPE_CHECKING:
    from ganscale.config import Config
    from ganscale.outputs.tracking import MetricsFile, Tracker
    from ganscale.runtime.base import Runtime

PREFIX = "eval/"
EVAL_SEED = 12345  # z (draw_z: the z of `ganscale sample --seed 12345`) and conditions of the eval set


def _quiet(*_: Any, **__: Any) -> None:
    pass


class TrainingEvaluator:
    """``evaluate(G_ema, step, rt) -> {"eval/<metric>": float}`` on every rank; ``is_better``
    tracks the best value of ``eval.metric`` (state saved with checkpoints via state_dict)."""

    def __init__(
        self,
        cfg: Any,
        attributes: dict[str, list[str]],
        corpus_folder: str | Path,
        device: str | torch.device,
        rank: int = 0,
        world_size: int = 1,
        log: Any = print,
        inception_env: str | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        ecfg = cfg.eval
        self.n, self.metric = int(ecfg.n), str(ecfg.metric)
        self.direction = METRIC_DIRECTIONS[self.metric]
        self.attributes = {k: list(v) for k, v in attributes.items()}
        self.folder, self.device = Path(corpus_folder), torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.image_size = int(cfg.model.image_size)
        self.z_dim, self.z_sigma = int(cfg.model.z_dim), float(cfg.model.z_sigma)
        self.log = log if rank == 0 else _quiet
        # Rank 0 loads (or trains) the corpus's classifier; the other ranks receive its weights
        # in _prepare. Each rank used its own corpus folder's before: without a shared cache, each
        # node trained its own classifier and measured FID in its own feature space.
        self.clf = ensure_classifier(self.folder, self.device, log=self.log) if rank == 0 else None
        self.inception, message = load_inception(
            ecfg.inception or None, self.device, env_value=inception_env, cache_dir=cache_dir
        )
        if self.inception is None:
            if self.metric.endswith("_inception"):
                raise GanscaleError(f"eval.metric={self.metric} needs Inception weights. {message}")
            self.log(message)
        if self.metric.startswith("acc_joint") and not self.attributes:
            raise GanscaleError(
                f"eval.metric={self.metric} needs a conditional generator; use fid_classifier"
            )
        # eval.metric=acc_joint_uniform also reads G on every hair x eyes combination equally
        # often (the same z, a second pass: only then, so the default costs what it did)
        self.uniform = self.metric == "acc_joint_uniform"
        self._uniform_labels: torch.Tensor | None = None
        self.ref = None
        self._labels: torch.Tensor | None = None
        self._prepared = False
        self.best: float | None = None
        self.best_step: int | None = None
        self._warned = False

    # ------------------------------------------------------------------ the evaluation
    def _prepare(self, rt: Any) -> None:
        """Rank 0's classifier on every rank; real features on rank 0 (cached per corpus), and the
        conditions shared with all ranks."""
        if self.world_size > 1:
            state = rt.broadcast_object(self.clf.state() if self.rank == 0 else None)
            if self.rank != 0:
                self.clf = classifier_from_state(*state, device=self.device)
        labels = None
        if self.rank == 0:
            self.ref = real_reference(
                self.folder, self.clf, self.image_size, self.n, self.inception, log=self.log
            )
            if self.attributes:
                nc = [len(v) for v in self.attributes.values()]
                labels = draw_conditions(self.ref.labels, self.n, nc, EVAL_SEED).numpy()
        labels = rt.all_gather_object(labels)[0]
        self._labels = torch.from_numpy(labels) if labels is not None else None
        if self.uniform:  # from the seed alone: the same on every rank, no collective needed
            nc = [len(v) for v in self.attributes.values()]
            self._uniform_labels = uniform_conditions(self.n, nc, EVAL_SEED + 1)
        self._prepared = True

    @torch.no_grad()
    def _my_share(self, G: nn.Module) -> tuple[np.ndarray, ...]:
        z_all = torch.from_numpy(draw_z(self.n, {"z_dim": self.z_dim, "z_sigma": self.z_sigma}, EVAL_SEED))
        idx = torch.arange(self.rank, self.n, self.world_size)
        was_training = G.training
        G.eval()
        feats, preds, incep, structure = [], [], [], []
        try:
            for chunk in idx.split(250):
                y = self._labels[chunk].to(self.device) if self._labels is not None else None
                x = G(z_all[chunk].to(self.device), y).float().clamp(-1, 1)
                f, p = self.clf.run(x)
                feats.append(f)
                preds.append(p)
                structure.append(structure_embedding(x))
                if self.inception is not None:
                    incep.append(self.inception(x))
            even = []
            for chunk in idx.split(250) if self._uniform_labels is not None else ():
                y = self._uniform_labels[chunk].to(self.device)
                even.append(self.clf.run(G(z_all[chunk].to(self.device), y).float().clamp(-1, 1))[1])
        finally:
            G.train(was_training)
        cat = lambda xs: torch.cat(xs).numpy() if xs else None  # noqa: E731
        return idx.numpy(), cat(feats), cat(preds), cat(incep), cat(even), cat(structure)

    def evaluate(self, G: nn.Module, step: int, rt: Any) -> dict[str, float]:
        """The metrics of G now (call on every rank; ``rt`` gives ``all_gather_object``)."""
        t0 = time.perf_counter()
        if not self._prepared:
            self._prepare(rt)
        parts = rt.all_gather_object(self._my_share(G))
        result = None
        if self.rank == 0:
            order = np.argsort(np.concatenate([p[0] for p in parts]))
            feats = torch.from_numpy(np.concatenate([p[1] for p in parts])[order])
            preds = torch.from_numpy(np.concatenate([p[2] for p in parts])[order])
            incep = (
                torch.from_numpy(np.concatenate([p[3] for p in parts])[order])
                if self.inception is not None
                else None
            )
            structure = torch.from_numpy(np.concatenate([p[5] for p in parts])[order])
            metrics = score(feats, preds, self._labels, self.ref, self.attributes, incep, structure)
            if self._uniform_labels is not None:
                even = torch.from_numpy(np.concatenate([p[4] for p in parts])[order])
                acc = accuracy(even, self._uniform_labels, self.attributes)
                metrics |= {f"acc_uniform/{a}": acc[a] for a in self.attributes}
                metrics["acc_joint_uniform"] = acc["joint"]
            if self.metric not in metrics and not self._warned:
                self._warned = True
                self.log(
                    f"eval.metric={self.metric}: not computable at eval.n={self.n} (no condition drew 2 "
                    "generated and 2 real images); best/ is not updated until it is: raise eval.n"
                )
            result = {PREFIX + k: float(v) for k, v in metrics.items() if not k.endswith("_std")}
            result[PREFIX + "seconds"] = round(time.perf_counter() - t0, 2)
        return rt.all_gather_object(result)[0]

    # ------------------------------------------------------------------ best checkpoint
    def is_better(self, metrics: dict[str, float], step: int | None = None) -> bool:
        """True (and remembered) when ``eval.metric`` improved on the best value so far."""
        value = metrics.get(PREFIX + self.metric, metrics.get(self.metric))
        if value is None or not math.isfinite(value):
            return False
        if self.best is not None and (value >= self.best if self.direction == "min" else value <= self.best):
            return False
        self.best, self.best_step = float(value), step
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("metric") == self.metric:  # a changed eval.metric starts a fresh best
            self.best, self.best_step = state.get("best"), state.get("best_step")


@dataclass(frozen=True)
class EvalContext:
    """Exactly what the training-time evaluation needs from the run (built by the trainer)."""

    cfg: Config
    attributes: dict[str, list[str]]
    rt: Runtime
    """Device, rank, process count and ``all_gather_object`` (every rank evaluates)."""
    generator: nn.Module
    """The generator to judge (the trainer's EMA generator, updated in place)."""
    meta: dict[str, Any]
    """The generator's export metadata (for ``RUN/best/``)."""
    run_dir: Path
    metrics: MetricsFile
    tracker: Tracker
    every: int = 0
    """Steps between evaluations (0 = off): the plan's ``eval_every``."""
    corpus: Path | None = None
    """The corpus folder of the classifier and the real statistics (the plan's ``eval_corpus``)."""
    inception_env: str | None = None
    """The Inception weights variable's value (:func:`ganscale.runtime.env.inception_weights`)."""
    cache_dir: str | None = None
    """Where ``eval.inception: download`` keeps the standard file (:func:`ganscale.runtime.env.cache_dir`)."""


class TrainingEvalHook:
    """All the trainer needs, in one object: ``TrainingEvalHook.build(ctx)`` once (None when
    eval is off), then ``hook.after_step(step, final)`` after every step, on every rank.

    It evaluates the EMA generator every ``eval.every`` steps (and at the last step), writes the
    metrics to ``metrics.jsonl`` and the tracker, and with ``eval.keep_best`` exports the best
    generator so far to ``RUN/best/`` (plus ``RUN/best/best.json``: step, metric, value).
    ``state_dict``/``load_state_dict`` carry the best value across a resume. The evaluator (its
    classifier, trained once per corpus, and Inception) is built at the first evaluation, not
    when the trainer is built.
    """

    def __init__(self, ctx: EvalContext) -> None:
        self.ctx, self.every, self.cfg = ctx, ctx.every, ctx.cfg.eval
        self._evaluator: TrainingEvaluator | None = None
        self._state: dict[str, Any] = {"metric": self.cfg.metric, "best": None, "best_step": None}

    @classmethod
    def build(cls, ctx: EvalContext) -> TrainingEvalHook | None:
        return cls(ctx) if ctx.every > 0 and ctx.corpus is not None else None

    @property
    def evaluator(self) -> TrainingEvaluator:
        if self._evaluator is None:
            c = self.ctx
            self._evaluator = TrainingEvaluator(
                c.cfg,
                c.attributes,
                c.corpus,
                c.rt.device,
                c.rt.rank,
                c.rt.world_size,
                inception_env=c.inception_env,
                cache_dir=c.cache_dir,
            )
            self._evaluator.load_state_dict(self._state)
        return self._evaluator

    def after_step(self, step: int, final: bool = False) -> dict[str, float] | None:
        if step % self.every and not final:
            return None
        c = self.ctx
        metrics = self.evaluator.evaluate(c.generator, step, c.rt)
        c.metrics.write({"step": step, **{k: round(v, 6) for k, v in metrics.items()}})
        c.tracker.log(metrics, step=step)
        if self.cfg.keep_best and self.evaluator.is_better(metrics, step) and c.rt.is_main:
            self.export_best(step, metrics)
        return metrics

    def export_best(self, step: int, metrics: dict[str, float]) -> Path:
        import json

        from ganscale.outputs.export import export_generator

        best = Path(self.ctx.run_dir) / "best"
        export_generator(self.ctx.generator, self.ctx.meta, best)
        info = {
            "step": step,
            "metric": self.evaluator.metric,
            "value": self.evaluator.best,
            "metrics": metrics,
        }
        tmp = best / ".best.json.tmp"
        tmp.write_text(json.dumps(info, indent=1) + "\n")
        tmp.replace(best / "best.json")
        return best

    def state_dict(self) -> dict[str, Any]:
        return self._state if self._evaluator is None else self._evaluator.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._evaluator is None:
            if state.get("metric") == self.cfg.metric:  # as TrainingEvaluator.load_state_dict
                self._state = dict(state)
        else:
            self._evaluator.load_state_dict(state)
