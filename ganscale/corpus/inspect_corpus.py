"""`ganscale data inspect`: counts, per-class histogram and a contact sheet drawn across classes.

The sheet is a stratified sample: the records are grouped by their labels (every attribute's
value together) and drawn round-robin over the groups, so every class shows up (when there are
more groups than cells, groups spread evenly over their sorted order), not the first ``n``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import webdataset as wds
from PIL import Image

from ganscale.corpus.contact_sheet import contact_sheet
from ganscale.corpus.layouts import scan
from ganscale.corpus.pack import load_image
from ganscale.data.decode import LabelReader, decode_image, image_bytes, record_meta
from ganscale.data.info import corpus_info
from ganscale.data.sources import iter_records, local_path, shard_source
from ganscale.errors import GanscaleError
from ganscale.shardformat import MANIFEST

SCAN_WITH_COUNTS = 4096
"""Records read to draw the sheet when dataset.json already has the counts (shards are mixed)."""

T = TypeVar("T")


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


def stratified(groups: dict[tuple[int, ...], list[T]], n: int) -> list[tuple[tuple[int, ...], T]]:
    """Up to ``n`` items drawn round-robin over the groups (sorted by key), as (key, item).

    With more groups than ``n``, ``n`` groups spread evenly over the sorted keys are used.
    """
    keys = sorted(groups)
    if len(keys) > n:
        keys = [keys[round(k * (len(keys) - 1) / max(1, n - 1))] for k in range(n)] if n > 1 else keys[:1]
    picked: list[tuple[tuple[int, ...], T]] = []
    depth = 0
    while len(picked) < n:
        added = False
        for k in keys:
            if depth < len(groups[k]) and len(picked) < n:
                picked.append((k, groups[k][depth]))
                added = True
        if not added:
            break
        depth += 1
    picked.sort(key=lambda kv: kv[0])
    return picked


def caption(labels: Iterable[int], attributes: dict[str, list[str]]) -> list[str]:
    """One line per attribute: ``aqua hair`` for the MLDS colours, the value name otherwise."""
    lines = []
    for (attr, values), i in zip(attributes.items(), labels, strict=False):
        name = values[i] if 0 <= i < len(values) else "?"
        lines.append(f"{name} {attr}" if attr in ("hair", "eyes") else name)
    return lines


def _is_raw_folder(target: str) -> bool:
    p = local_path(target)
    if p is None:
        return False
    if p.is_file() and p.suffix.lower() == ".zip":
        return True
    return p.is_dir() and not (p / MANIFEST).is_file() and not any(p.glob("*.tar"))


def inspect_corpus(target: str, n: int = 64, cell: int = 80) -> Inspection:
    """Read counts (from dataset.json, or by streaming the labels) and draw ``n`` records."""
    if _is_raw_folder(target):
        return _inspect_source_folder(Path(target), n, cell)
    src = shard_source(target, allow_pipe=False)
    info = corpus_info(src)
    m = src.manifest or {}
    reader = LabelReader(info.attributes)
    groups: dict[tuple[int, ...], list[tuple[bytes, str]]] = defaultdict(list)
    counts = {a: Counter() for a in info.attributes}
    unlabelled, total = 0, 0
    have_counts = bool(m.get("class_counts")) and src.origin == str(local_path(target))
    for record in iter_records(info.shard_urls, on_error=wds.warn_and_continue):
        if have_counts and total >= SCAN_WITH_COUNTS:
            break
        try:
            labels = reader(record, record_meta(record))
            data = image_bytes(record)
        except Exception:
            continue
        total += 1
        key = tuple(labels)
        if len(groups[key]) < n:
            groups[key].append((data, str(record.get("__key__", ""))))
        if -1 in labels or not labels:
            unlabelled += 1
        for (a, values), i in zip(info.attributes.items(), labels, strict=False):
            if i >= 0:
                counts[a][values[i]] += 1
    images, captions = [], []
    for key, (data, rkey) in stratified(groups, n):
        try:
            images.append(decode_image(data, info.image_size))
        except Exception:
            continue
        captions.append(caption(key, info.attributes) if info.attributes else [rkey])
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
    if not found.records:
        raise GanscaleError(f"no usable images in {folder}")
    counts = {a: Counter() for a in found.attributes}
    groups: dict[tuple[int, ...], list[Any]] = defaultdict(list)
    unlabelled = 0
    for r in found.records:
        key = tuple(r.labels[a] for a in found.attributes) if r.labels else ()
        if len(groups[key]) < n:
            groups[key].append(r)
        if not r.labels:
            unlabelled += 1
            continue
        for a, i in r.labels.items():
            counts[a][found.attributes[a][i]] += 1
    images, captions = [], []
    for key, r in stratified(groups, n):
        try:
            images.append(load_image(r.path, cell))
        except Exception:
            continue
        captions.append(caption(key, found.attributes) if key else [r.source_id])
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
