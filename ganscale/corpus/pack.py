"""`ganscale data pack`: images -> WebDataset shards + ``dataset.json`` + ``rejects.jsonl``.

A record is ``<key>.<format>`` + ``<key>.json`` in the tar (WebDataset's grouping by key):

- ``--format png`` (default) / ``jpg``: ``png`` / ``jpg`` = the encoded image;
- ``--format raw`` (decode-free): ``u8`` = the image's uint8 pixels, ``[H, W, 3]`` row-major
  RGB (``H * W * 3`` bytes), and the json adds ``"shape": [H, W, 3], "dtype": "uint8"``.
  Plain WebDataset code reads it as ``np.frombuffer(s["u8"], np.uint8).reshape(
  json.loads(s["json"])["shape"])``; shards written with ``webdataset.TarWriter`` in these
  keys feed ganscale's loader. 4x the size of PNG at 64 px, and no decoding at all.

The json also holds ``{"id": source id, "labels": {attr: index}, "names": {attr: name}}``; the
format (keys, json fields, ``dataset.json`` and its attribute vocabulary) is defined in
:mod:`ganscale.shardformat`, which the readers in :mod:`ganscale.data` share.

Every shard is written as ``<name>-NNNNNN.tar.partial`` and renamed when complete; the
manifest is removed first and written last (also via a temporary name), so a crash or
Ctrl-C never leaves a shard or a manifest that looks complete.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image

from ganscale.corpus.layouts import Reject, SourceOptions, scan
from ganscale.corpus.progress import progress_bar
from ganscale.errors import GanscaleError
from ganscale.shardformat import (
    FORMAT_VERSION,
    FORMATS,
    JSON_KEY,
    MANIFEST,
    RAW_KEY,
    REJECTS,
    build_manifest,
    image_key,
    read_manifest,
    record_json,
    record_key,
    shard_name,
    shard_pattern,
)
from ganscale.shardformat.pixels import fit_square, to_rgb

# Names other modules import from here (the format lives in ganscale.shardformat).
__all__ = ["FORMAT_VERSION", "MANIFEST", "RAW_KEY", "REJECTS", "fit_square", "read_manifest", "to_rgb"]


def encode(img: Image.Image, fmt: str, png_level: int = 6) -> bytes:
    if fmt == "raw":
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8)).tobytes()  # HWC, RGB
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=png_level)
    else:
        img.save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def load_image(ref: Any, size: int) -> Image.Image:
    """Decode fully (so a truncated file fails here), make RGB, fit to ``size``.

    ``ref``: a file path, or anything with ``read() -> bytes`` (a zip member, a dataset row).
    """
    src = ref if isinstance(ref, (str, Path)) else io.BytesIO(ref.read())
    with Image.open(src) as im:
        im.load()
        return fit_square(to_rgb(im), size)


class ShardSink:
    """Rotating, atomically renamed shards written with ``webdataset.TarWriter``."""

    def __init__(self, out: Path, name: str, per_shard: int) -> None:
        self.out, self.name, self.per_shard = out, name, per_shard
        self.shards: list[dict[str, Any]] = []
        self._writer: wds.TarWriter | None = None
        self._file: Any = None
        self._count = 0

    def _open(self) -> None:
        fname = shard_name(self.name, len(self.shards))
        self._file = open(self.out / (fname + ".partial"), "wb")  # noqa: SIM115 - closed in _close
        # mtime fixed: same input, same bytes.
        self._writer = wds.TarWriter(self._file, encoder=False, mtime=0)  # int: no PAX header per file
        self.shards.append({"url": fname, "num_samples": 0})
        self._count = 0

    def _close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        fname = self.shards[-1]["url"]
        os.replace(self.out / (fname + ".partial"), self.out / fname)
        self._writer = None

    def write(self, record: dict[str, Any]) -> None:
        if self._writer is None or self._count >= self.per_shard:
            self._close()
            self._open()
        assert self._writer is not None
        self._writer.write(record)
        self._count += 1
        self.shards[-1]["num_samples"] += 1

    def close(self) -> list[dict[str, Any]]:
        self._close()
        return self.shards

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
                self._file.close()
            finally:
                (self.out / (self.shards[-1]["url"] + ".partial")).unlink(missing_ok=True)
                self._writer = None


@dataclass
class PackResult:
    out: Path
    kept: int
    num_shards: int
    rejects: Counter = field(default_factory=Counter)
    attributes: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, list[int]] = field(default_factory=dict)
    """Records kept per value: ``counts[attr][i]`` for ``attributes[attr][i]``."""

    def summary(self) -> str:
        skipped = sum(self.rejects.values())
        why = ", ".join(f"{r} {c}" for r, c in sorted(self.rejects.items()))
        tail = f"; skipped {skipped}: {why}" if skipped else "; skipped 0"
        return f"packed {self.kept} images into {self.num_shards} shards in {self.out}{tail}"

    def value_counts(self) -> list[str]:
        """One line per attribute: ``vendor (2 values): google 1906, twitter 1906``."""
        return [
            f"{a} ({len(vals)} values): "
            + ", ".join(f"{v} {c}" for v, c in zip(vals, self.counts[a], strict=True))
            for a, vals in self.attributes.items()
        ]


def _clear_previous(out: Path, name: str) -> None:
    """Remove the manifest first (the old one would describe a mix), then our stale shards."""
    (out / MANIFEST).unlink(missing_ok=True)
    pattern = shard_pattern(name)
    for p in out.iterdir():
        if pattern.match(p.name):
            p.unlink()


def _holds_corpus(out: Path, name: str) -> bool:
    """Whether ``out`` holds a packed corpus (a manifest or shards of ``name``) a pack would replace."""
    if not out.is_dir():
        return False
    pattern = shard_pattern(name)
    return (out / MANIFEST).exists() or any(pattern.match(p.name) for p in out.iterdir())


def _swap_in(stage: Path, out: Path, name: str) -> None:
    """Move a finished pack from ``stage`` into ``out``: the old manifest and shards go first,
    then the new shards and rejects list, the manifest last (renames on one file system), so
    ``out`` never shows a manifest over a mix of old and new shards."""
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out, name)
    for p in sorted(stage.iterdir(), key=lambda p: p.name == MANIFEST):
        os.replace(p, out / p.name)
    stage.rmdir()


class _NothingUsable(Exception):
    """Raised inside :func:`write_shards` when every item was rejected (the rejects are staged)."""

    def __init__(self, result: PackResult, first: Reject | None) -> None:
        super().__init__(result.summary())
        self.result, self.first = result, first


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_pack_args(fmt: str, per_shard: int, name: str, size: int = 64) -> None:
    """Refuse bad flags before anything is read or written."""
    if fmt not in FORMATS:
        raise GanscaleError(f"--format {fmt!r}: use png, jpg or raw (uint8 pixels, no decoding)")
    if per_shard < 1:
        raise GanscaleError(f"--per-shard {per_shard}: must be >= 1")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise GanscaleError(f"--name {name!r}: use letters, digits, '_', '-' and '.'")
    if size < 4:
        raise GanscaleError(f"--size {size}: must be >= 4")


def write_shards(
    items: Iterable[tuple],
    out: str | Path,
    *,
    attributes: dict[str, list[str]],
    size: int,
    fmt: str = "png",
    per_shard: int = 1000,
    name: str = "data",
    layout: str = "",
    source: str = "",
    rejects: list[Reject] | None = None,
    total: int | None = None,
    progress: bool = False,
    png_level: int = 6,
    shuffle_seed: int | None = None,
) -> PackResult:
    """Pack ``(source_id, image, labels[, key])`` items into shards + manifest + rejects list.

    ``image`` is a PIL image, a path or anything with ``read() -> bytes``; those are decoded
    here, and an unreadable one becomes a reject (never fatal). Without a key one is made from
    the source id. Everything is written into a staging folder beside ``out`` and moved in at
    the end (:func:`_swap_in`), so a pack that fails or is interrupted leaves a corpus already in
    ``out`` byte for byte as it was. Raises :class:`GanscaleError` only if nothing usable was
    found: ``rejects.jsonl`` then goes into ``out`` when ``out`` holds no corpus yet; a corpus
    there is left unchanged and the message names the first reject instead.
    """
    check_pack_args(fmt, per_shard, name, size)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GanscaleError(f"{out}: exists and is not a folder; pick another OUT")
    home = out.resolve().parent
    home.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.resolve().name}.packing-", dir=home))
    try:
        result, manifest = _write_staged(
            items,
            stage,
            out,
            attributes=attributes,
            size=size,
            fmt=fmt,
            per_shard=per_shard,
            name=name,
            rejects=list(rejects or []),
            total=total,
            progress=progress,
            png_level=png_level,
        )
    except _NothingUsable as e:
        summary = e.result.summary().split("; ", 1)[-1]
        if _holds_corpus(out, name):
            shutil.rmtree(stage, ignore_errors=True)
            first = f" (first: {e.first.item}: {e.first.detail[:120]})" if e.first else ""
            raise GanscaleError(
                f"no usable images in {source or out}: {summary}{first}; {out} still holds its "
                "previous corpus, unchanged"
            ) from None
        out.mkdir(parents=True, exist_ok=True)
        os.replace(stage / REJECTS, out / REJECTS)
        shutil.rmtree(stage, ignore_errors=True)
        raise GanscaleError(f"no usable images in {source or out}: {summary}; see {out / REJECTS}") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    manifest |= {"layout": layout, "source": source, "shuffle_seed": shuffle_seed}
    _write_atomic(stage / MANIFEST, json.dumps(build_manifest(**manifest), indent=1) + "\n")
    _swap_in(stage, out, name)
    return result


def _write_staged(
    items: Iterable[tuple],
    stage: Path,
    out: Path,
    *,
    attributes: dict[str, list[str]],
    size: int,
    fmt: str,
    per_shard: int,
    name: str,
    rejects: list[Reject],
    total: int | None,
    progress: bool,
    png_level: int,
) -> tuple[PackResult, dict[str, Any]]:
    """Shards and ``rejects.jsonl`` into ``stage``; (the result, reported as ``out``, and the
    manifest's arguments). Every item rejected: :class:`_NothingUsable`."""
    counts = {a: [0] * len(v) for a, v in attributes.items()}
    unlabelled = 0
    taken: set[str] = set()
    sink = ShardSink(stage, name, per_shard)
    try:
        with progress_bar(f"pack {out.name}", total, enabled=progress) as advance:
            for source_id, image, labels, *key in items:
                advance(1)
                if isinstance(image, Image.Image):
                    img = fit_square(to_rgb(image), size)
                else:
                    try:
                        img = load_image(image, size)
                    except Exception as e:  # PIL raises many types for bad files
                        rejects.append(Reject("unreadable_image", str(image), f"{type(e).__name__}: {e}"))
                        continue
                shape = (img.size[1], img.size[0], 3) if fmt == "raw" else None
                meta = record_json(source_id, labels, attributes, shape)
                if meta["labels"]:
                    for a, i in meta["labels"].items():
                        counts[a][i] += 1
                else:
                    unlabelled += 1
                sink.write(
                    {
                        "__key__": key[0] if key else record_key(source_id, taken),
                        image_key(fmt): encode(img, fmt, png_level),
                        JSON_KEY: json.dumps(meta, sort_keys=True).encode(),
                    }
                )
        shards = sink.close()
    except BaseException:
        sink.abort()
        raise
    reasons = Counter(r.reason for r in rejects)
    _write_atomic(stage / REJECTS, "".join(json.dumps(r.to_dict()) + "\n" for r in rejects))
    kept = sum(s["num_samples"] for s in shards)
    result = PackResult(out, kept, len(shards), reasons, attributes, counts)
    if kept == 0:
        raise _NothingUsable(result, rejects[0] if rejects else None)
    manifest = {
        "name": name,
        "shards": shards,
        "image_size": size,
        "image_format": fmt,
        "attributes": attributes,
        "counts": counts,
        "unlabelled": unlabelled,
        "rejects": reasons,
    }
    return result, manifest


def pack(
    src: str | Path,
    out: str | Path,
    *,
    size: int = 64,
    fmt: str = "png",
    per_shard: int = 1000,
    layout: str | None = None,
    name: str = "data",
    unconditional: bool = False,
    progress: bool = False,
    seed: int = 0,
    options: SourceOptions | None = None,
    echo: Callable[[str], None] | None = None,
) -> PackResult:
    """Pack a source (layout detected unless given) into WebDataset shards.

    Everything is read and checked (flags, layout, label files, attributes) before ``out`` is
    touched; ``echo`` gets what was read (layout, attributes chosen, files not read). Records
    get their keys in source order and are then shuffled with ``seed``, so every shard holds a
    mix close to the corpus's, and the order is the same for the same seed.
    """
    check_pack_args(fmt, per_shard, name, size)
    opts = options or SourceOptions(layout=layout, unconditional=unconditional)
    found = scan(src, options=opts)
    if not found.records:
        why = ", ".join(f"{r} {c}" for r, c in sorted(Counter(r.reason for r in found.rejects).items()))
        first = found.rejects[0] if found.rejects else None
        eg = f" (first: {first.item}: {first.detail})" if first else ""
        raise GanscaleError(f"no usable images in {src}" + (f": rejected {why}{eg}" if why else ""))
    if echo is not None:
        echo(f"layout {found.layout}")
        for note in found.notes:
            echo(f"  {note}")
    taken: set[str] = set()
    items = [(r.source_id, r.path, r.labels, record_key(r.source_id, taken)) for r in found.records]
    random.Random(seed).shuffle(items)
    return write_shards(
        items,
        out,
        attributes=found.attributes,
        size=size,
        fmt=fmt,
        per_shard=per_shard,
        name=name,
        layout=found.layout,
        source=str(src),
        rejects=found.rejects,
        total=len(items),
        progress=progress,
        shuffle_seed=seed,
    )
