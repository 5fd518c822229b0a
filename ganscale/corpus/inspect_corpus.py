"""`ganscale data inspect`: counts, per-class histogram and a contact sheet with tags."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds
from PIL import Image

from ganscale.corpus.contact_sheet import contact_sheet
from ganscale.corpus.layouts import scan
from ganscale.corpus.pack import load_image
from ganscale.data.decode import decode_image, image_bytes, labels_of, record_meta
from ganscale.data.info import corpus_info
from ganscale.data.sources import iter_records, local_path, shard_source
from ganscale.errors import GanscaleError
from ganscale.shardformat.vocab import format_tags


@dataclass
class Inspection:
    source: str
    layout: str
    num_records: int
    num_shards: int
    image_size: int
    attributes: dict[str, list[str]]
    class_counts: dict[str, dict[str, int]]
    unlabelled: int
    rejects: dict[str, int]
    sheet: Image.Image | None


def _is_raw_folder(target: str) -> bool:
    p = local_path(target)
    return p is not None and p.is_dir() and not (p / "dataset.json").is_file() and not any(p.glob("*.tar"))


def inspect_corpus(target: str, n: int = 64, cell: int = 64) -> Inspection:
    """Read counts (from dataset.json, or by streaming the labels) and draw ``n`` records."""
    if _is_raw_folder(target):
        return _inspect_source_folder(Path(target), n, cell)
    src = shard_source(target, allow_pipe=False)
    info = corpus_info(src)
    m = src.manifest or {}
    images, captions = [], []
    counts = {a: Counter() for a in info.attributes}
    unlabelled, total = 0, 0
    have_counts = bool(m.get("class_counts")) and src.origin == str(local_path(target))
    for record in iter_records(info.shard_urls, on_error=wds.warn_and_continue):
        if len(images) >= n and have_counts:
            break
        try:
            labels = labels_of(record, record_meta(record), info.attributes)
            if len(images) < n:
                images.append(decode_image(image_bytes(record), info.image_size))
                caption = format_tags(labels, info.attributes) if info.attributes else ""
                captions.append(caption or str(record.get("__key__", "")))
        except Exception:
            continue
        total += 1
        if -1 in labels or not labels:
            unlabelled += 1
        for (a, values), i in zip(info.attributes.items(), labels, strict=False):
            if i >= 0:
                counts[a][values[i]] += 1
    if have_counts:
        class_counts = {a: dict(c) for a, c in m["class_counts"].items()}
        unlabelled, num = int(m.get("unlabelled", 0)), info.num_records
    else:
        class_counts = {a: {v: counts[a][v] for v in vals} for a, vals in info.attributes.items()}
        num = total
    sheet = contact_sheet(images, captions, cols=8, cell=cell) if images else None
    return Inspection(
        target,
        str(m.get("layout", "shards")),
        num,
        info.num_shards,
        info.image_size,
        info.attributes,
        class_counts,
        unlabelled,
        dict(m.get("rejects", {})),
        sheet,
    )


def _inspect_source_folder(folder: Path, n: int, cell: int) -> Inspection:
    found = scan(folder)
    counts = {a: Counter() for a in found.attributes}
    unlabelled = 0
    for r in found.records:
        if not r.labels:
            unlabelled += 1
            continue
        for a, i in r.labels.items():
            counts[a][found.attributes[a][i]] += 1
    images, captions = [], []
    for r in found.records:
        if len(images) >= n:
            break
        try:
            images.append(load_image(r.path, cell))
        except Exception:
            continue
        labels = [r.labels[a] for a in found.attributes] if r.labels else []
        captions.append(format_tags(labels, found.attributes) if labels else r.source_id)
    if not found.records:
        raise GanscaleError(f"no usable images in {folder}")
    return Inspection(
        str(folder),
        found.layout,
        len(found.records),
        0,
        0,
        found.attributes,
        {a: {v: counts[a][v] for v in vals} for a, vals in found.attributes.items()},
        unlabelled,
        dict(Counter(r.reason for r in found.rejects)),
        contact_sheet(images, captions, cols=8, cell=cell) if images else None,
    )
