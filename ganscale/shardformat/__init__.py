"""The shard format: what `ganscale data pack` writes and every reader of a corpus reads.

This package sits beneath both :mod:`ganscale.corpus` (the writer) and :mod:`ganscale.data`
(the readers); it imports nothing else of ganscale but :mod:`ganscale.errors`.

A corpus folder holds WebDataset tar shards ``<name>-NNNNNN.tar``, ``dataset.json`` (the
manifest) and ``rejects.jsonl`` (one json object per skipped item: reason, item, detail).

**Records.** One record is ``<key>.<image key>`` + ``<key>.json`` in a tar (WebDataset groups
members by key: the path up to the first dot of the file name, so keys carry no dots):

- the image under one of :data:`IMAGE_KEYS` (``png``, ``jpg`` ... encoded), or raw pixels under
  :data:`RAW_KEY` (``u8``: the uint8 bytes of an ``[H, W, 3]`` RGB array, row-major), with
  ``"shape": [H, W, 3], "dtype": "uint8"`` in the json;
- the json (:func:`record_json`): ``{"id": source id, "labels": {attr: index},
  "names": {attr: value name}}``; an unlabelled record has empty ``labels`` and ``names``.

**Manifest** (``dataset.json``, :func:`build_manifest`): ``format``, ``version``, ``name``,
``num_samples``, ``num_shards``, ``shards`` (``[{"url", "num_samples"}]``, urls relative to the
folder), ``image_size``, ``image_format``, ``layout``, ``source``, ``shuffle_seed`` and the
**attribute vocabulary**:

- ``attributes``: ``{attr: [value, ...]}``, an ordered mapping (json object order) of each
  attribute to its values; a record's ``labels[attr]`` is an index into that list. ``{}`` for
  an unconditional corpus. Readers take it with :func:`manifest_attributes`.
- ``attribute_index``: ``{attr: {value: index}}`` (the inverse, for readers in other languages);
- ``class_counts``: ``{attr: {value: records}}``; ``unlabelled``: records without labels;
- ``rejects``: ``{reason: count}``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ganscale.errors import GanscaleError

FORMAT_NAME = "ganscale-webdataset"
FORMAT_VERSION = 1
MANIFEST = "dataset.json"
REJECTS = "rejects.jsonl"

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp", "bmp", "ppm", "img")
"""Record keys of encoded images, in the order readers look for them."""
RAW_KEY = "u8"
"""Record key of raw uint8 pixels (shape and dtype in the record's json)."""
FORMATS = ("png", "jpg", "raw")
"""What ``--format`` writes: an encoded key, or ``raw`` (:data:`RAW_KEY`)."""
JSON_KEY = "json"

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


def image_key(fmt: str) -> str:
    """The record key that ``--format fmt`` stores the image under."""
    return RAW_KEY if fmt == "raw" else fmt


def record_json(
    source_id: str,
    labels: dict[str, int] | None,
    attributes: dict[str, list[str]],
    shape: tuple[int, int, int] | None = None,
) -> dict[str, Any]:
    """The json of one record (``shape`` only for raw pixels)."""
    meta: dict[str, Any] = {"id": source_id, "labels": {}, "names": {}}
    if labels:
        meta["labels"] = {a: int(labels[a]) for a in attributes if a in labels}
        meta["names"] = {a: attributes[a][i] for a, i in meta["labels"].items()}
    if shape is not None:
        meta |= {"shape": list(shape), "dtype": "uint8"}
    return meta


def raw_shape(meta: dict[str, Any], nbytes: int, key: Any = None) -> tuple[int, int, int]:
    """``[H, W, C]`` of a raw record, checked against its byte count (C in 1, 3, 4)."""
    shape, dtype = meta.get("shape"), meta.get("dtype", "uint8")
    if dtype != "uint8":
        raise ValueError(f"raw record {key!r}: dtype {dtype!r}, only uint8 is read")
    if (
        not isinstance(shape, list)
        or len(shape) not in (2, 3)
        or not all(isinstance(d, int) and d > 0 for d in shape)
    ):
        raise ValueError(f"raw record {key!r}: json 'shape' {shape!r} is not [H, W, 3]")
    h, w, c = (*shape, 1) if len(shape) == 2 else shape
    if c not in (1, 3, 4) or h * w * c != nbytes:
        raise ValueError(f"raw record {key!r}: shape {shape} does not match its {nbytes} bytes")
    return h, w, c


def shard_name(name: str, index: int) -> str:
    return f"{name}-{index:06d}.tar"


def shard_pattern(name: str) -> re.Pattern[str]:
    """Shard files of ``name`` (complete or ``.partial``)."""
    return re.compile(rf"^{re.escape(name)}-\d{{6}}\.tar(\.partial)?$")


def build_manifest(
    *,
    name: str,
    shards: list[dict[str, Any]],
    image_size: int,
    image_format: str,
    layout: str,
    source: str,
    attributes: dict[str, list[str]],
    counts: dict[str, list[int]],
    unlabelled: int,
    rejects: dict[str, int],
    shuffle_seed: int | None = None,
) -> dict[str, Any]:
    """``dataset.json`` (see the module docstring); ``counts[attr][i]`` = records of value i."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "name": name,
        "num_samples": sum(int(s["num_samples"]) for s in shards),
        "num_shards": len(shards),
        "shards": shards,
        "image_size": image_size,
        "image_format": image_format,
        "layout": layout,
        "source": source,
        "shuffle_seed": shuffle_seed,
        "attributes": attributes,
        "attribute_index": attribute_index(attributes),
        "class_counts": {a: dict(zip(attributes[a], c, strict=True)) for a, c in counts.items()},
        "unlabelled": unlabelled,
        "rejects": dict(sorted(rejects.items())),
    }


def attribute_index(attributes: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    return {a: {v: i for i, v in enumerate(vals)} for a, vals in attributes.items()}


def manifest_attributes(manifest: dict[str, Any]) -> dict[str, list[str]]:
    """The ordered attribute vocabularies of a ``dataset.json`` ({} if unconditional)."""
    return {a: list(v) for a, v in (manifest.get("attributes") or {}).items()}


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """A folder's ``dataset.json``; one-line errors when missing or not a manifest."""
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
