"""A contact sheet: a grid of images, each with its tags printed underneath."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont


def contact_sheet(
    images: Sequence[Image.Image], captions: Sequence[str], cols: int = 8, cell: int = 96
) -> Image.Image:
    """Lay ``images`` out ``cols`` wide, each scaled to ``cell`` px with its caption below.

    Captions are wrapped on spaces into up to three short lines (e.g. "aqua hair" / "red eyes").
    """
    font = ImageFont.load_default()
    line_h = 11
    lines_per = max((len(_wrap(c, cell)) for c in captions), default=0)
    cols = max(1, min(cols, len(images) or 1))
    rows = max(1, -(-len(images) // cols))
    ch = cell + lines_per * line_h + 4
    sheet = Image.new("RGB", (cols * (cell + 4) + 4, rows * ch + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (img, cap) in enumerate(zip(images, captions, strict=True)):
        x, y = 4 + (i % cols) * (cell + 4), 4 + (i // cols) * ch
        im = img.convert("RGB")
        if im.size != (cell, cell):
            im = im.resize(
                (cell, cell), Image.Resampling.NEAREST if im.width < cell else Image.Resampling.LANCZOS
            )
        sheet.paste(im, (x, y))
        for k, line in enumerate(_wrap(cap, cell)):
            draw.text((x, y + cell + 1 + k * line_h), line, fill=(0, 0, 0), font=font)
    return sheet


def _wrap(text: str, width_px: int) -> list[str]:
    max_chars = max(4, width_px // 6)
    words, lines, cur = text.split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > max_chars:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    if cur:
        lines.append(cur)
    return lines[:3]
