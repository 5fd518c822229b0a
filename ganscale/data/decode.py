"""One corpus record -> (uint8 image, label indices): decoding, labels, augmentation parameters.

A record is one stored item as WebDataset groups a shard's files (``{"__key__", "png",
"json", ...}``, see :mod:`ganscale.data.sources`); "sample" is kept for generated images.

Two kinds of records carry the pixels:

- encoded images under one of ``IMAGE_KEYS`` (``png``, ``jpg``, ...), decoded with PIL;
- raw pixels (``ganscale data pack --format raw``): ``u8`` = the uint8 bytes of an
  ``[H, W, 3]`` array (row-major, RGB), with ``"shape": [H, W, 3], "dtype": "uint8"`` in the
  record's ``json``. Read with no decoding at all (:func:`pixels`). For code that wants encoded
  bytes (inspection, corpus facts), :func:`image_bytes` wraps them as a binary PPM.

The study's augmentation (random flip, slight rotation) is drawn per record by
:func:`augment_params`, from (seed, epoch, pass, shard file name, key); it is applied either by
PIL here (:func:`apply_augment`, ``data.augment_on: loader``) or on the training device
(:mod:`ganscale.augment.geometric`, the default).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import random
from typing import Any

import numpy as np
from PIL import Image

from ganscale.shardformat import IMAGE_KEYS, RAW_KEY, raw_shape
from ganscale.shardformat.pixels import fit_square, to_rgb
from ganscale.shardformat.vocab import TagError, parse_tags

__all__ = ["IMAGE_KEYS", "RAW_KEY", "raw_shape"]  # re-exported: readers import them from here too
_FORMATS = {
    "png": ["PNG"],
    "jpg": ["JPEG"],
    "jpeg": ["JPEG"],
    "webp": ["WEBP"],
    "bmp": ["BMP"],
    "ppm": ["PPM"],
}
ANGLE_EPS_RAD = 1e-4
"""Rotations below this many radians are skipped (no zoom either)."""


def record_meta(record: dict[str, Any]) -> dict[str, Any]:
    """The record's ``json`` file as a dict ({} when absent or not an object)."""
    raw = record.get("json")
    if raw is None:
        return {}
    meta = _parse_json(raw)
    return meta if isinstance(meta, dict) else {}


_DECODER = json.JSONDecoder()


def _parse_json(raw: bytes | str) -> Any:
    """``json.loads``, without its per-call overhead (encoding sniffing, whitespace regexes)
    for the usual shape (UTF-8, an object, no padding): a third of its cost per record."""
    if isinstance(raw, bytes) and raw[:1] == b"{":
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            return json.loads(raw)
        obj, end = _DECODER.raw_decode(text)
        if end == len(text):
            return obj
    return json.loads(raw)  # everything else, and its errors, as json.loads has them


def image_bytes(record: dict[str, Any]) -> bytes:
    """The encoded image of a record (the first of ``IMAGE_KEYS``; raw pixels as a PPM)."""
    for k in IMAGE_KEYS:
        if k in record:
            return record[k]
    if RAW_KEY in record:
        h, w, c = raw_shape(record_meta(record), len(record[RAW_KEY]), record.get("__key__"))
        if c != 3:
            return _encode_ppm(_rgb_from_raw(record[RAW_KEY], h, w, c))
        return b"P6\n%d %d\n255\n" % (w, h) + bytes(record[RAW_KEY])
    raise ValueError(
        f"record {record.get('__key__')!r} has no image ({', '.join(IMAGE_KEYS)}, or {RAW_KEY} + json shape)"
    )


def _rgb_from_raw(data: bytes, h: int, w: int, c: int) -> np.ndarray:
    arr = np.frombuffer(data, np.uint8).reshape(h, w, c)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[c]
    return np.asarray(to_rgb(Image.fromarray(arr[..., 0] if c == 1 else arr, mode)))


def _encode_ppm(arr: np.ndarray) -> bytes:
    h, w, _ = arr.shape
    return b"P6\n%d %d\n255\n" % (w, h) + arr.tobytes()


# ---------------------------------------------------------------------------- labels
def _index(value: Any, values: list[str], lowered: dict[str, int]) -> int:
    if isinstance(value, bool):
        return -1
    if isinstance(value, int):
        return value if 0 <= value < len(values) else -1
    if isinstance(value, str):
        return lowered.get(" ".join(value.lower().split()), -1)
    return -1


class LabelReader:
    """Label indices in ``attributes`` order (-1 = unknown), from our json or common foreign ones.

    Understood: ``{"labels": {attr: i}}`` (ganscale), ``{attr: name_or_index}``,
    ``{"names": {attr: name}}``, ``{"tags": "aqua hair red eyes"}``, and for one attribute
    ``{"label"|"class"|"cls": ...}`` or a ``.cls`` file. Build once per pass: the lowercase
    vocabularies are worked out here, not per record.
    """

    def __init__(self, attributes: dict[str, list[str]]) -> None:
        self.attributes = attributes
        self._lookups = []
        for attr, values in attributes.items():
            lowered: dict[str, int] = {}
            for i, v in enumerate(values):
                lowered.setdefault(v.lower(), i)  # first match, as list.index did
            self._lookups.append((attr, values, lowered))

    def __call__(self, record: dict[str, Any], meta: dict[str, Any]) -> list[int]:
        out = []
        labels, names = meta.get("labels"), meta.get("names")
        for attr, values, lowered in self._lookups:
            idx = -1
            if isinstance(labels, dict) and attr in labels:
                idx = _index(labels[attr], values, lowered)
            elif isinstance(names, dict) and attr in names:
                idx = _index(names[attr], values, lowered)
            elif attr in meta:
                idx = _index(meta[attr], values, lowered)
            elif len(self.attributes) == 1:
                for k in ("label", "class", "cls"):
                    if k in meta:
                        idx = _index(meta[k], values, lowered)
                        break
                else:
                    if "cls" in record:
                        idx = _index(int(record["cls"]), values, lowered)
            out.append(idx)
        if -1 in out and isinstance(meta.get("tags"), str):
            with contextlib.suppress(TagError):
                out = parse_tags(meta["tags"], self.attributes)
        return out


def labels_of(record: dict[str, Any], meta: dict[str, Any], attributes: dict[str, list[str]]) -> list[int]:
    """Label indices of one record (see :class:`LabelReader`; build one for many records)."""
    return LabelReader(attributes)(record, meta)


# ---------------------------------------------------------------------------- pixels
def decode_image(data: bytes, size: int, formats: list[str] | None = None) -> Image.Image:
    """Decode fully to RGB at ``size`` x ``size`` (Lanczos if the shard's size differs).

    ``formats`` is a hint (from the record's key); a mislabelled file is still opened.
    """
    try:
        im = Image.open(io.BytesIO(data), formats=formats)
    except Image.UnidentifiedImageError:
        if formats is None:
            raise
        im = Image.open(io.BytesIO(data))
    with im:
        im.load()
        img = to_rgb(im)
    if img.size != (size, size):
        img = fit_square(img, size)
    return img


def pixels(record: dict[str, Any], meta: dict[str, Any], size: int) -> np.ndarray:
    """The record's image as uint8 ``[size, size, 3]`` (HWC; read-only for raw records)."""
    for k in IMAGE_KEYS:
        if k in record:
            return np.asarray(decode_image(record[k], size, _FORMATS.get(k)))
    data = record.get(RAW_KEY)
    if data is not None:
        if (
            meta.get("shape") == [size, size, 3]
            and meta.get("dtype") == "uint8"
            and len(data) == 3 * size * size
        ):
            return np.frombuffer(data, np.uint8).reshape(size, size, 3)  # no decoding, no copy
        h, w, c = raw_shape(meta, len(data), record.get("__key__"))
        if c == 3 and h == w == size:
            return np.frombuffer(data, np.uint8).reshape(h, w, 3)  # no decoding, no copy
        return np.asarray(fit_square(Image.fromarray(_rgb_from_raw(data, h, w, c)), size))
    raise ValueError(f"record {record.get('__key__')!r} has no image")


def to_array(img: Image.Image) -> np.ndarray:
    """uint8 CHW (so the batch converts to float contiguously, without a strided copy)."""
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def decode_record(
    record: dict[str, Any], size: int, attributes: dict[str, list[str]]
) -> tuple[Image.Image, list[int]]:
    """(RGB image at ``size`` px, label indices) of a record, exactly as training reads it."""
    meta = record_meta(record)
    for k in IMAGE_KEYS:
        if k in record:
            return decode_image(record[k], size, _FORMATS.get(k)), labels_of(record, meta, attributes)
    return Image.fromarray(np.array(pixels(record, meta, size))), labels_of(record, meta, attributes)


# ---------------------------------------------------------------------------- augmentation
def augment_seed(seed: int, epoch: int, pass_: int, url: str, key: str) -> str:
    """The per-record seed string: the shard's file *name* (not its URL: a copied or
    re-mounted corpus augments identically) and the record key."""
    return f"aug:{seed}:{epoch}:{pass_}:{url.rsplit('/', 1)[-1]}#{key}"


def draw_params(rng: random.Random, hflip: bool, rotate_degrees: float) -> tuple[bool, float]:
    """(flip, angle in degrees) as the study draws them; angle 0.0 = no rotation at all.

    The draw order is the historical one (flip coin first, only when flips are on), so the
    parameters, and a PIL run's images, are what they always were.
    """
    flip = bool(hflip and rng.random() < 0.5)
    angle = 0.0
    if rotate_degrees > 0:
        angle = rng.uniform(-rotate_degrees, rotate_degrees)
        if abs(math.radians(angle)) <= ANGLE_EPS_RAD:
            angle = 0.0
    return flip, angle


def augment_params(
    seed: int, epoch: int, pass_: int, url: str, key: str, hflip: bool, rotate_degrees: float
) -> tuple[bool, float]:
    """The (flip, angle) of one record in one pass of one epoch."""
    if not hflip and rotate_degrees <= 0:
        return False, 0.0
    return draw_params(random.Random(augment_seed(seed, epoch, pass_, url, key)), hflip, rotate_degrees)


class ParamDraw:
    """:func:`augment_params` for many records of one pass: one generator re-seeded per record
    (the same state as a fresh ``random.Random(seed string)``), the seed prefix built once."""

    def __init__(self, seed: int, epoch: int, pass_: int, hflip: bool, rotate_degrees: float) -> None:
        self.prefix = f"aug:{seed}:{epoch}:{pass_}:"
        self.hflip, self.rotate_degrees = hflip, rotate_degrees
        self.rng = random.Random()
        self._names: dict[str, str] = {}

    def __call__(self, url: str, key: str) -> tuple[bool, float]:
        name = self._names.get(url)
        if name is None:
            name = self._names[url] = url.rsplit("/", 1)[-1]
        # random.Random.seed(str) (version 2) is this int, handed to the C seeding directly
        b = f"{self.prefix}{name}#{key}".encode()
        _SEED_INT(self.rng, int.from_bytes(b + hashlib.sha512(b).digest()))
        return draw_params(self.rng, self.hflip, self.rotate_degrees)


_SEED_INT = random.Random.__mro__[1].seed  # _random.Random.seed: MT19937 init_by_array of an int


def apply_augment(img: Image.Image, flip: bool, angle: float) -> Image.Image:
    """Flip, then rotate by ``angle`` degrees with PIL (bilinear), zoomed in by cos + sin of the
    angle so that no empty corner appears."""
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    theta = math.radians(angle)
    if abs(theta) > ANGLE_EPS_RAD:
        w, h = img.size
        zoom = math.cos(abs(theta)) + math.sin(abs(theta))
        a, b = math.cos(theta) / zoom, math.sin(theta) / zoom
        cx, cy = w / 2, h / 2
        # output (x, y) reads input (a(x-cx) + b(y-cy) + cx, -b(x-cx) + a(y-cy) + cy)
        data = (a, b, cx - a * cx - b * cy, -b, a, cy + b * cx - a * cy)
        img = img.transform((w, h), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)
    return img


def augment(img: Image.Image, rng: random.Random, hflip: bool, rotate_degrees: float) -> Image.Image:
    """The study's augmentation with PIL: random horizontal flip, slight random rotation."""
    return apply_augment(img, *draw_params(rng, hflip, rotate_degrees))
