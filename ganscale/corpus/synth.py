"""Procedural anime faces with exact hair/eye colour labels (the built-in corpus).

Each face is drawn with PIL at twice the target size from polygons in a unit "face frame"
(face radius 1, centre 0,0), mapped to the canvas by one affine (jitter of position, scale
and a slight tilt), then box-downsampled: anti-aliased and fast (no raster rotation).
Each image has its own RNG seeded from (seed, index), so any slice renders identically.
"""

from __future__ import annotations

import colorsys
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from ganscale.shardformat.vocab import EYE_COLOURS, HAIR_COLOURS

SYNTH_VERSION = 1
"""Bump when the drawing changes: it keys the cached built-in corpus."""

RGB = tuple[int, int, int]

# Colours picked to stay apart at 64 px (hue and lightness), checked on contact sheets.
HAIR_RGB: dict[str, RGB] = {
    "aqua": (40, 215, 215),
    "black": (34, 32, 40),
    "blonde": (250, 222, 100),
    "blue": (35, 75, 215),
    "brown": (120, 66, 30),
    "gray": (135, 135, 140),
    "green": (40, 160, 55),
    "orange": (250, 130, 20),
    "pink": (255, 145, 200),
    "purple": (130, 50, 190),
    "red": (215, 25, 30),
    "white": (246, 246, 246),
}
EYE_RGB: dict[str, RGB] = {
    "aqua": (30, 225, 220),
    "black": (20, 20, 24),
    "blue": (30, 70, 235),
    "brown": (125, 65, 25),
    "green": (30, 175, 50),
    "orange": (255, 130, 0),
    "pink": (255, 120, 200),
    "purple": (140, 40, 210),
    "red": (225, 20, 25),
    "yellow": (250, 225, 20),
}
SKIN_RGB: list[RGB] = [(255, 229, 212), (252, 218, 196), (244, 204, 178), (255, 236, 226), (236, 190, 160)]

_N = 24
_CIRCLE = [(math.cos(2 * math.pi * k / _N), math.sin(2 * math.pi * k / _N)) for k in range(_N)]


def _shade(c: RGB, f: float) -> RGB:
    """f < 1 darkens, f > 1 mixes toward white."""
    if f <= 1:
        return (int(c[0] * f), int(c[1] * f), int(c[2] * f))
    t = min(f - 1, 1.0)
    return (int(c[0] + (255 - c[0]) * t), int(c[1] + (255 - c[1]) * t), int(c[2] + (255 - c[2]) * t))


def _jitter(c: RGB, rng: random.Random, amount: int) -> RGB:
    return tuple(max(0, min(255, v + rng.randint(-amount, amount))) for v in c)  # type: ignore[return-value]


@dataclass(frozen=True)
class _Frame:
    """Unit face frame -> canvas pixels: p' = centre + scale * R(tilt) p."""

    cx: float
    cy: float
    a: float  # scale * cos
    b: float  # scale * sin

    def pts(self, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        a, b, cx, cy = self.a, self.b, self.cx, self.cy
        return [(cx + a * x - b * y, cy + b * x + a * y) for x, y in points]

    def ellipse(self, x: float, y: float, rx: float, ry: float, k0: int = 0, k1: int = _N):
        return self.pts(_arc(x, y, rx, ry, k0, k1))


def _arc(x: float, y: float, rx: float, ry: float, k0: int = 0, k1: int = _N) -> list[tuple[float, float]]:
    """Points of an ellipse (k0..k1 of _N steps; _N/2.._N is the upper half, left to right)."""
    return [(x + rx * _CIRCLE[k % _N][0], y + ry * _CIRCLE[k % _N][1]) for k in range(k0, k1)]


def _background(draw: ImageDraw.ImageDraw, w: int, rng: random.Random) -> None:
    h = rng.random()
    base = colorsys.hsv_to_rgb(h, rng.uniform(0.10, 0.40), rng.uniform(0.55, 0.92))
    base_c = tuple(int(v * 255) for v in base)
    draw.rectangle((0, 0, w, w), fill=base_c)
    style = rng.randrange(3)
    other = _shade(base_c, rng.choice((0.8, 1.25)))  # type: ignore[arg-type]
    if style == 0:  # diagonal bands
        step = w // rng.randint(2, 4)
        for off in range(-w, w, step):
            draw.polygon([(off, 0), (off + step // 2, 0), (off + step // 2 + w, w), (off + w, w)], fill=other)
    elif style == 1:  # bokeh dots
        for _ in range(rng.randint(3, 7)):
            r = rng.uniform(0.05, 0.18) * w
            x, y = rng.uniform(0, w), rng.uniform(0, w)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=other)
    else:  # horizon split
        y = rng.uniform(0.3, 0.8) * w
        draw.rectangle((0, y, w, w), fill=other)


def render_face(rng: random.Random, hair: int, eyes: int, size: int) -> Image.Image:
    """One face with hair colour ``HAIR_COLOURS[hair]`` and eye colour ``EYE_COLOURS[eyes]``."""
    w = size * 2
    img = Image.new("RGB", (w, w))
    d = ImageDraw.Draw(img)
    _background(d, w, rng)

    scale = w * rng.uniform(0.22, 0.27)
    tilt = math.radians(rng.uniform(-12, 12))
    f = _Frame(
        w * (0.5 + rng.uniform(-0.06, 0.06)),
        w * (0.54 + rng.uniform(-0.05, 0.05)),
        scale * math.cos(tilt),
        scale * math.sin(tilt),
    )
    lw = max(1, round(w / 64))

    hair_c = _jitter(HAIR_RGB[HAIR_COLOURS[hair]], rng, 8)
    hair_dark, hair_line = _shade(hair_c, 0.72), _shade(hair_c, 0.45)
    if HAIR_COLOURS[hair] == "black":
        hair_dark, hair_line = (20, 18, 26), (8, 8, 10)
    skin = _jitter(rng.choice(SKIN_RGB), rng, 4)
    skin_dark = _shade(skin, 0.85)
    eye_c = _jitter(EYE_RGB[EYE_COLOURS[eyes]], rng, 8)

    # Back hair: a dome over the head, falling to a length that varies (short .. long).
    length = rng.choice((0.9, 1.4, 2.0, 2.8))
    spread = rng.uniform(1.15, 1.35)
    back = (
        [(-spread * 0.97, length)] + _arc(0, -0.1, spread, 1.15, _N // 2, _N + 1) + [(spread * 0.97, length)]
    )
    d.polygon(f.pts(back), fill=hair_dark, outline=hair_line, width=lw)
    # Neck and face (round top, tapered chin).
    d.polygon(f.pts([(-0.3, 0.6), (0.3, 0.6), (0.33, 1.6), (-0.33, 1.6)]), fill=skin_dark)
    chin = rng.uniform(1.12, 1.25)
    face = [(c * (1 - 0.28 * max(s, 0) ** 2), s * (chin if s > 0 else 1.0)) for c, s in _CIRCLE]
    d.polygon(f.pts(face), fill=skin, outline=_shade(skin, 0.6), width=lw)

    # Eyes: sclera, iris (darker rim on top), pupil, highlight, lash line.
    ey = rng.uniform(0.18, 0.28)
    ex = rng.uniform(0.40, 0.46)
    erx, ery = 0.25, 0.31
    for side in (-1, 1):
        x = side * ex
        d.polygon(f.ellipse(x, ey, erx, ery), fill=(255, 255, 255))
        d.polygon(f.ellipse(x, ey + 0.03, erx * 0.82, ery * 0.92), fill=_shade(eye_c, 0.6))  # darker rim
        d.polygon(f.ellipse(x, ey + 0.06, erx * 0.74, ery * 0.8), fill=eye_c)
        d.polygon(f.ellipse(x, ey + 0.06, erx * 0.28, ery * 0.32), fill=_shade(eye_c, 0.35))
        d.polygon(f.ellipse(x - side * 0.07 - 0.02, ey - 0.06, 0.075, 0.075, 0, _N), fill=(255, 255, 255))
        lash = f.ellipse(x, ey + 0.02, erx * 1.12, ery * 1.05, _N // 2 + 2, _N - 1)
        lash += f.ellipse(x, ey + 0.02, erx * 1.0, ery * 0.85, _N // 2 + 2, _N - 1)[::-1]
        d.polygon(lash, fill=(40, 25, 30))
    # Blush, nose, mouth.
    if rng.random() < 0.5:
        for side in (-1, 1):
            d.polygon(f.ellipse(side * 0.55, ey + 0.38, 0.14, 0.05), fill=(250, 170, 170))
    d.line(f.pts([(0.0, ey + 0.33), (0.03, ey + 0.38)]), fill=_shade(skin, 0.7), width=lw)
    my = ey + rng.uniform(0.52, 0.6)
    if rng.random() < 0.5:  # open mouth
        d.polygon(f.pts([(-0.12, my), (0.12, my), (0.0, my + 0.1)]), fill=(170, 50, 60))
    else:
        d.line(f.pts([(-0.1, my), (0.0, my + 0.03), (0.1, my)]), fill=(150, 60, 60), width=lw)

    # Side locks, in front of the face sides.
    lock_len = rng.uniform(0.7, 1.6)
    for side in (-1, 1):
        d.polygon(
            f.pts(
                [
                    (side * 1.05, -0.35),
                    (side * 0.78, -0.1),
                    (side * 0.9, lock_len),
                    (side * 1.12, lock_len - 0.15),
                ]
            ),
            fill=hair_c,
            outline=hair_line,
            width=lw,
        )
    # Fringe: dome cap over the forehead with a zig-zag of bangs; gaps and lengths vary.
    cap = [(-1.09, 0.05)] + _arc(0, -0.12, 1.1, 1.02, _N // 2, _N + 1) + [(1.09, 0.05)]
    tips = rng.randint(4, 7)
    bang_len = rng.uniform(-0.05, 0.2)
    edge = []
    for k in range(tips, -1, -1):
        x = -0.95 + 1.9 * k / tips
        edge.append((x, bang_len + rng.uniform(-0.1, 0.1)))
        if k:
            edge.append((x - 0.95 / tips, -0.35 + rng.uniform(-0.1, 0.05)))
    d.polygon(f.pts(cap + edge), fill=hair_c, outline=hair_line, width=lw)
    # Shading: strand lines, and a glossy ring near the crown.
    for x, y in edge[1::2]:
        d.line(f.pts([(x * 0.6, -0.9), (x, y + 0.15)]), fill=hair_dark, width=lw)
    ring = f.ellipse(0, -0.1, 0.78, 0.7, _N // 2 + 3, _N - 2)
    d.line(ring, fill=_shade(hair_c, 1.45), width=lw * 2)
    return img.reduce(2)


def face_labels(seed: int, index: int) -> tuple[random.Random, int, int]:
    """The RNG and labels of image ``index`` of the corpus with ``seed``."""
    rng = random.Random(f"ganscale-synth:{seed}:{index}")
    return rng, rng.randrange(len(HAIR_COLOURS)), rng.randrange(len(EYE_COLOURS))


def iter_faces(n: int, size: int, seed: int, start: int = 0) -> Iterator[tuple[int, Image.Image, int, int]]:
    """Yield ``(index, image, hair, eyes)`` for images ``start .. n-1``."""
    for i in range(start, n):
        rng, hair, eyes = face_labels(seed, i)
        yield i, render_face(rng, hair, eyes, size), hair, eyes


def write_synthetic(out: str | Path, n: int, size: int = 64, seed: int = 0, progress: bool = False) -> int:
    """Write the MLDS ``extra_data`` layout: ``out/images/<id>.png`` + ``out/tags.csv``."""
    from ganscale.corpus.progress import progress_bar

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    with progress_bar("synth", n, enabled=progress) as advance:
        for i, img, hair, eyes in iter_faces(n, size, seed):
            img.save(out / "images" / f"{i}.png", compress_level=1)  # fast; pack re-encodes
            rows.append(f"{i},{HAIR_COLOURS[hair]} hair {EYE_COLOURS[eyes]} eyes\n")
            advance(1)
    tmp = out / "tags.csv.tmp"
    tmp.write_text("".join(rows))
    tmp.replace(out / "tags.csv")
    return n
