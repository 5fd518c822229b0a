"""Which corpus a run uses: ``data`` config + image size -> shard list, facts, folder.

The one answer for training (the loader streams ``resolve_corpus(...).source``) and for
evaluation (the classifier and the real statistics live in ``corpus_folder(...)``, the
folder with ``dataset.json``). ``data.source: synthetic`` builds the built-in corpus into
``data.cache_dir`` on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ganscale.config import DataConfig
from ganscale.data import remote
from ganscale.data.info import CorpusInfo, corpus_info
from ganscale.data.remote import RetryPolicy
from ganscale.data.sources import ShardSource, local_path, shard_source
from ganscale.errors import GanscaleError
from ganscale.shardformat import MANIFEST


@dataclass
class ResolvedCorpus:
    """The shards a run reads (checked) and what they hold."""

    source: ShardSource
    info: CorpusInfo


def corpus_location(cfg: DataConfig, image_size: int, progress: bool = False) -> str:
    """``data.source`` -> a shard folder / pattern / URL list (building the synthetic corpus if needed)."""
    if cfg.source == "synthetic":
        from ganscale.corpus.synthetic import ensure_synthetic_corpus

        folder = ensure_synthetic_corpus(
            cfg.cache_dir, cfg.synthetic_n, image_size, cfg.synthetic_seed, progress=progress
        )
        return str(folder)
    return cfg.path


def retry_policy(cfg: DataConfig) -> RetryPolicy:
    """How the run's http(s) shard reads wait for a server (``data.retry_s`` and friends)."""
    return RetryPolicy(cfg.retry_s, cfg.retry_backoff_s, cfg.timeout_s)


def resolve_corpus(cfg: DataConfig, image_size: int, progress: bool = False) -> ResolvedCorpus:
    """The run's shards, checked now (missing shard, pipe:, backend), and the corpus facts.

    Also sets this process's http(s) retry policy for the reads that follow (the loader's,
    and its forked workers'). The checks here do not retry: a server that does not answer at
    start is a wrong ``data.path`` or a server not up yet, one line now rather than after
    ``data.retry_s``.
    """
    policy = retry_policy(cfg)
    with remote.using(policy.without_retries()):
        src = shard_source(corpus_location(cfg, image_size, progress), allow_pipe=cfg.allow_pipe)
        info = corpus_info(src)
    remote.configure(policy)
    return ResolvedCorpus(src, info)


def corpus_folder(cfg: DataConfig, image_size: int) -> Path:
    """The packed corpus folder (with dataset.json) that a run's ``data`` config trains on.

    synthetic: the cached built-in corpus (built if missing); shards: ``data.path`` when it
    is a folder, else the folder of its first local shard when that holds dataset.json.
    """
    src = shard_source(corpus_location(cfg, image_size), allow_pipe=cfg.allow_pipe)
    origin = local_path(src.origin)
    if origin is not None and origin.is_dir():
        return origin
    first = local_path(src.urls[0])
    if first is not None and (first.parent / MANIFEST).is_file():
        return first.parent
    raise GanscaleError(
        f"data.path {cfg.path!r}: evaluation needs a local corpus folder with "
        f"{MANIFEST} (pack one with `ganscale data pack`)"
    )
