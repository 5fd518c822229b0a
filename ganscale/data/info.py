"""Corpus facts the trainer needs: attributes, record count, image size, shard list.

From ``dataset.json`` when there is one (a folder's, or one served over http(s)); for bare
shard lists, inferred from the first shard (image size, MLDS-style labels and, when counts are
unknown, its record count).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image

from ganscale.data.decode import image_bytes, record_meta
from ganscale.data.sources import ShardSource, iter_records, shard_source
from ganscale.errors import GanscaleError
from ganscale.shardformat import manifest_attributes
from ganscale.shardformat.vocab import MLDS_ATTRIBUTES, TagError, parse_tags


@dataclass
class CorpusInfo:
    """What the trainer needs to know about a corpus."""

    attributes: dict[str, list[str]]
    """Ordered attribute vocabularies, e.g. {"hair": [...], "eyes": [...]}; {} if unconditional."""
    num_records: int
    """Stored images (``num_samples`` in dataset.json)."""
    image_size: int
    num_shards: int
    shard_urls: list[str] = field(default_factory=list)
    shard_sizes: list[int] = field(default_factory=list)
    """Records per shard (-1 where unknown)."""


def read_corpus_info(source: str | Path | list[str], *, allow_pipe: bool = True) -> CorpusInfo:
    """Corpus facts from ``dataset.json``; for bare shard lists, inferred from the first shard."""
    return corpus_info(shard_source(source, allow_pipe=allow_pipe))


def corpus_info(src: ShardSource) -> CorpusInfo:
    """The facts of an already resolved source (see :func:`read_corpus_info`)."""
    m = src.manifest
    sizes = list(src.sizes)
    if m is not None and src.complete:
        return CorpusInfo(
            manifest_attributes(m),
            int(m["num_samples"]),
            int(m["image_size"]),
            len(src.urls),
            list(src.urls),
            sizes,
        )
    first = _peek(src.urls[0], count=-1 in sizes)
    if m is not None:
        attributes = manifest_attributes(m)
        size = int(m.get("image_size", 0)) or first["size"]
    else:
        attributes, size = first["attributes"], first["size"]
    if -1 in sizes:  # remote shards without a manifest: estimate from the first one
        est = first["count"]
        sizes = [s if s >= 0 else est for s in sizes]
    return CorpusInfo(attributes, sum(sizes), size, len(src.urls), list(src.urls), sizes)


def _peek(url: str, limit: int = 64, count: bool = False) -> dict[str, Any]:
    """Image size, label schema and (``count``: reading it all) the record count of one shard."""
    size, n, attributes = 0, 0, {}
    for record in iter_records([url], on_error=wds.warn_and_continue):
        n += 1
        if n > limit and size:
            if not count:
                break
            continue
        try:
            if not size:
                size = _size_of(image_bytes(record))
            if not attributes:
                attributes = _guess_attributes(record_meta(record))
        except Exception:  # a bad first record: try the next
            continue
    if not size:
        raise GanscaleError(f"no readable image in shard {url}; is it a WebDataset shard?")
    return {"size": size, "count": n, "attributes": attributes}


def _size_of(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as im:
        return im.size[0]


def _guess_attributes(meta: dict[str, Any]) -> dict[str, list[str]]:
    """Foreign shards: recognise MLDS hair/eye labels; otherwise unconditional."""
    keys = set(meta) | set(meta.get("labels", {}) or {}) | set(meta.get("names", {}) or {})
    if {"hair", "eyes"} <= keys:
        return dict(MLDS_ATTRIBUTES)
    if isinstance(meta.get("tags"), str):
        try:
            parse_tags(meta["tags"], MLDS_ATTRIBUTES)
            return dict(MLDS_ATTRIBUTES)
        except TagError:
            pass
    return {}
