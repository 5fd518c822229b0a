"""One corpus record -> (uint8 CHW image, label indices): decoding, labels, augmentation.

A record is one stored item as WebDataset groups a shard's files (``{"__key__", "png",
"json", ...}``, see :mod:`ganscale.data.sources`); "sample" is kept for generated images.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
from typing import Any

import numpy as np
from PIL import Image

from ganscale.corpus.pack import to_rgb
from ganscale.corpus.vocab import TagError, parse_tags

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp", "bmp", "ppm", "img")


def image_bytes(record: dict[str, Any]) -> bytes:
    """The encoded image of a record (the first of ``IMAGE_KEYS`` it has)."""
    for k in IMAGE_KEYS:
        if k in record:
            return record[k]
    raise ValueError(f"record {record.get('__key__')!r} has no image ({', '.join(IMAGE_KEYS)})")


def record_meta(record: dict[str, Any]) -> dict[str, Any]:
    """The record's ``json`` file as a dict ({} when absent or not an object)."""
    raw = record.get("json")
    if raw is None:
        return {}
    meta = json.loads(raw)
    return meta if isinstance(meta, dict) else {}


def _index(value: Any, values: list[str]) -> int:
    if isinstance(value, bool):
        return -1
    if isinstance(value, int):
        return value if 0 <= value < len(values) else -1
    if isinstance(value, str):
        v = " ".join(value.lower().split())
        lowered = [x.lower() for x in values]
        return lowered.index(v) if v in lowered else -1
    return -1


def labels_of(record: dict[str, Any], meta: dict[str, Any], attributes: dict[str, list[str]]) -> list[int]:
    """Label indices in ``attributes`` order (-1 = unknown), from our json or common foreign ones.

    Understood: ``{"labels": {attr: i}}`` (ganscale), ``{attr: name_or_index}``,
    ``{"names": {attr: name}}``, ``{"tags": "aqua hair red eyes"}``, and for one attribute
    ``{"label"|"class"|"cls": ...}`` or a ``.cls`` file.
    """
    out = []
    for attr, values in attributes.items():
        idx = -1
        labels, names = meta.get("labels"), meta.get("names")
        if isinstance(labels, dict) and attr in labels:
            idx = _index(labels[attr], values)
        elif isinstance(names, dict) and attr in names:
            idx = _index(names[attr], values)
        elif attr in meta:
            idx = _index(meta[attr], values)
        elif len(attributes) == 1:
            for k in ("label", "class", "cls"):
                if k in meta:
                    idx = _index(meta[k], values)
                    break
            else:
                if "cls" in record:
                    idx = _index(int(record["cls"]), values)
        out.append(idx)
    if -1 in out and isinstance(meta.get("tags"), str):
        with contextlib.suppress(TagError):
            out = parse_tags(meta["tags"], attributes)
    return out


def decode_image(data: bytes, size: int) -> Image.Image:
    """Decode fully to RGB at ``size`` x ``size`` (Lanczos if the shard's size differs)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        img = to_rgb(im)
    if img.size != (size, size):
        from ganscale.corpus.pack import fit_square

        img = fit_square(img, size)
    return img


def augment(img: Image.Image, rng: random.Random, hflip: bool, rotate_degrees: float) -> Image.Image:
    """The study's augmentation: random horizontal flip, slight random rotation.

    The rotation zooms in just enough (cos + sin of the angle) that no empty corner appears.
    """
    if hflip and rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rotate_degrees > 0:
        theta = math.radians(rng.uniform(-rotate_degrees, rotate_degrees))
        if abs(theta) > 1e-4:
            w, h = img.size
            zoom = math.cos(abs(theta)) + math.sin(abs(theta))
            a, b = math.cos(theta) / zoom, math.sin(theta) / zoom
            cx, cy = w / 2, h / 2
            # output (x, y) reads input (a(x-cx) + b(y-cy) + cx, -b(x-cx) + a(y-cy) + cy)
            data = (a, b, cx - a * cx - b * cy, -b, a, cy + b * cx - a * cy)
            img = img.transform((w, h), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)
    return img


def to_array(img: Image.Image) -> np.ndarray:
    """uint8 CHW (so the batch converts to float contiguously, without a strided copy)."""
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def decode_record(
    record: dict[str, Any], size: int, attributes: dict[str, list[str]]
) -> tuple[Image.Image, list[int]]:
    """(RGB image at ``size`` px, label indices) of a record, exactly as training reads it."""
    return decode_image(image_bytes(record), size), labels_of(record, record_meta(record), attributes)
