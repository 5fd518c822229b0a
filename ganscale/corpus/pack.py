"""`ganscale data pack`: images -> WebDataset shards + ``dataset.json`` + ``rejects.jsonl``.

A record is ``<key>.<format>`` + ``<key>.json`` in the tar (WebDataset's grouping by key):

- ``--format png`` (default) / ``jpg``: ``png`` / ``jpg`` = the encoded image;
- ``--format raw`` (decode-free): ``u8`` = the image's uint8 pixels, ``[H, W, 3]`` row-major
  RGB (``H * W * 3`` bytes), and the json adds ``"shape": [H, W, 3], "dtype": "uint8"``.
  Plain WebDataset code reads it as ``np.frombuffer(s["u8"], np.uint8).reshape(
  json.loads(s["json"])["shape"])``; shards written with ``webdataset.TarWriter`` in these
  keys feed ganscale's loader. 4x the size of PNG at 64 px, and no decoding at all.

The json also holds ``{"id": source id, "labels": {attr: index}, "names": {attr: name}}``.

Every shard is written as ``<name>-NNNNNN.tar.partial`` and renamed when complete; the
manifest is removed first and written last (also via a temporary name), so a crash or
Ctrl-C never leaves a shard or a manifest that looks complete.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image

from ganscale.corpus.layouts import Reject, scan
from ganscale.corpus.progress import progress_bar
from ganscale.errors import GanscaleError

MANIFEST = "dataset.json"
REJECTS = "rejects.jsonl"
FORMAT_VERSION = 1


def to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale, palette, CMYK and alpha images -> RGB (alpha composited over white)."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def fit_square(img: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize to ``size`` (Lanczos; a box pre-reduce for big images)."""
    w, h = img.size
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return img


RAW_KEY = "u8"
"""Record key of raw pixels (``--format raw``)."""
FORMATS = ("png", "jpg", "raw")


def encode(img: Image.Image, fmt: str, png_level: int = 6) -> bytes:
    if fmt == "raw":
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8)).tobytes()  # HWC, RGB
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=png_level)
    else:
        img.save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def load_image(path: Path, size: int) -> Image.Image:
    """Decode fully (so a truncated file fails here), make RGB, fit to ``size``."""
    with Image.open(path) as im:
        im.load()
        return fit_square(to_rgb(im), size)


_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]+")


def record_key(source_id: str, taken: set[str]) -> str:
    """A WebDataset-safe key (no dots or slashes: the first dot splits key from extension)."""
    key = _KEY_BAD.sub("_", source_id).strip("_") or "x"
    base, k = key, 1
    while key in taken:
        k += 1
        key = f"{base}_{k}"
    taken.add(key)
    return key


class ShardSink:
    """Rotating, atomically renamed shards written with ``webdataset.TarWriter``."""

    def __init__(self, out: Path, name: str, per_shard: int) -> None:
        self.out, self.name, self.per_shard = out, name, per_shard
        self.shards: list[dict[str, Any]] = []
        self._writer: wds.TarWriter | None = None
        self._file: Any = None
        self._count = 0

    def _open(self) -> None:
        fname = f"{self.name}-{len(self.shards):06d}.tar"
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

    def summary(self) -> str:
        skipped = sum(self.rejects.values())
        why = ", ".join(f"{r} {c}" for r, c in sorted(self.rejects.items()))
        tail = f"; skipped {skipped}: {why}" if skipped else "; skipped 0"
        return f"packed {self.kept} images into {self.num_shards} shards in {self.out}{tail}"


def _clear_previous(out: Path, name: str) -> None:
    """Remove the manifest first (the old one would describe a mix), then our stale shards."""
    (out / MANIFEST).unlink(missing_ok=True)
    pattern = re.compile(rf"^{re.escape(name)}-\d{{6}}\.tar(\.partial)?$")
    for p in out.iterdir():
        if pattern.match(p.name):
            p.unlink()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_shards(
    items: Iterable[tuple[str, Image.Image | Path, dict[str, int] | None]],
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
) -> PackResult:
    """Pack ``(source_id, image or path, labels)`` items into shards + manifest + rejects list.

    Paths are decoded here; an unreadable image becomes a reject (never fatal). Raises
    :class:`GanscaleError` only if nothing usable was found (after writing ``rejects.jsonl``).
    """
    if fmt not in FORMATS:
        raise GanscaleError(f"--format {fmt!r}: use png, jpg or raw (uint8 pixels, no decoding)")
    if per_shard < 1:
        raise GanscaleError(f"--per-shard {per_shard}: must be >= 1")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise GanscaleError(f"--name {name!r}: use letters, digits, '_', '-' and '.'")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out, name)
    rejects = list(rejects or [])
    counts = {a: [0] * len(v) for a, v in attributes.items()}
    unlabelled = 0
    taken: set[str] = set()
    sink = ShardSink(out, name, per_shard)
    try:
        with progress_bar(f"pack {out.name}", total, enabled=progress) as advance:
            for source_id, image, labels in items:
                advance(1)
                if isinstance(image, Path):
                    try:
                        img = load_image(image, size)
                    except Exception as e:  # PIL raises many types for bad files
                        rejects.append(Reject("unreadable_image", str(image), f"{type(e).__name__}: {e}"))
                        continue
                else:
                    img = fit_square(to_rgb(image), size)
                meta: dict[str, Any] = {"id": source_id, "labels": {}, "names": {}}
                if labels:
                    meta["labels"] = {a: int(labels[a]) for a in attributes if a in labels}
                    meta["names"] = {a: attributes[a][i] for a, i in meta["labels"].items()}
                    for a, i in meta["labels"].items():
                        counts[a][i] += 1
                else:
                    unlabelled += 1
                if fmt == "raw":
                    meta |= {"shape": [img.size[1], img.size[0], 3], "dtype": "uint8"}
                sink.write(
                    {
                        "__key__": record_key(source_id, taken),
                        RAW_KEY if fmt == "raw" else fmt: encode(img, fmt, png_level),
                        "json": json.dumps(meta, sort_keys=True).encode(),
                    }
                )
        shards = sink.close()
    except BaseException:
        sink.abort()
        raise
    reasons = Counter(r.reason for r in rejects)
    _write_atomic(out / REJECTS, "".join(json.dumps(r.to_dict()) + "\n" for r in rejects))
    kept = sum(s["num_samples"] for s in shards)
    result = PackResult(out, kept, len(shards), reasons)
    if kept == 0:
        raise GanscaleError(
            f"no usable images in {source or out}: {result.summary().split('; ', 1)[-1]}; see {out / REJECTS}"
        )
    manifest = {
        "format": "ganscale-webdataset",
        "version": FORMAT_VERSION,
        "name": name,
        "num_samples": kept,
        "num_shards": len(shards),
        "shards": shards,
        "image_size": size,
        "image_format": fmt,
        "layout": layout,
        "source": source,
        "attributes": attributes,
        "attribute_index": {a: {v: i for i, v in enumerate(vals)} for a, vals in attributes.items()},
        "class_counts": {a: dict(zip(attributes[a], c, strict=True)) for a, c in counts.items()},
        "unlabelled": unlabelled,
        "rejects": dict(sorted(reasons.items())),
    }
    _write_atomic(out / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    return result


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
) -> PackResult:
    """Pack a source folder (layout detected unless given) into WebDataset shards."""
    if size < 4:
        raise GanscaleError(f"--size {size}: must be >= 4")
    found = scan(src, layout, unconditional)
    items: Iterator[tuple[str, Image.Image | Path, dict[str, int] | None]] = (
        (r.source_id, r.path, r.labels) for r in found.records
    )
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
        total=len(found.records),
        progress=progress,
    )


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise GanscaleError(
            f"{path} not found; pack the corpus with `ganscale data pack SRC {folder}`"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GanscaleError(f"{path} is not valid JSON ({e}); re-run `ganscale data pack`") from None
    if not isinstance(data, dict) or "shards" not in data:
        raise GanscaleError(f"{path} has no 'shards' list; re-run `ganscale data pack`")
    return data
