"""A contact sheet: a grid of images, each with its caption lines underneath, fitted to the cell.

A caption is a list of lines (one per attribute, e.g. ``["aqua hair", "red eyes"]`` or
``["google", "smileys-emotion"]``). Each line is wrapped on spaces to the cell's width as PIL
measures it with the font drawn, and a word or line that still does not fit ends in ``...``.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

ELLIPSIS = "..."
MAX_LINES = 4
"""Caption lines per image at most (the last one ellipsized)."""


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def text_width(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> float:
    return font.getlength(text)


def ellipsize(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: float) -> str:
    """``text`` if it fits in ``width`` px, else its longest prefix + ``...`` that does."""
    if text_width(text, font) <= width:
        return text
    for cut in range(len(text) - 1, -1, -1):
        candidate = text[:cut].rstrip() + ELLIPSIS
        if text_width(candidate, font) <= width:
            return candidate
    return ""


def fit_caption(
    lines: Sequence[str],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    width: float,
    max_lines: int = MAX_LINES,
) -> list[str]:
    """Wrap each caption line on spaces to ``width`` px; at most ``max_lines`` lines, all fitting."""
    out: list[str] = []
    for line in lines:
        cur = ""
        for word in line.split():
            trial = f"{cur} {word}" if cur else word
            if text_width(trial, font) <= width:
                cur = trial
                continue
            if cur:
                out.append(cur)
            cur = word
        if cur:
            out.append(cur)
    if len(out) > max_lines:
        out = out[:max_lines]
        out[-1] = out[-1] + " " + ELLIPSIS  # there was more
    return [ellipsize(line, font, width) for line in out]


def contact_sheet(
    images: Sequence[Image.Image],
    captions: Sequence[Sequence[str] | str],
    cols: int = 8,
    cell: int = 96,
) -> Image.Image:
    """Lay ``images`` out ``cols`` wide, each scaled to ``cell`` px with its caption below."""
    font = _font()
    left, top, right, bottom = font.getbbox("Ag")
    line_h = int(bottom - min(top, 0)) + 2
    fitted = [fit_caption([c] if isinstance(c, str) else list(c), font, cell) for c in captions]
    lines_per = max((len(f) for f in fitted), default=0)
    cols = max(1, min(cols, len(images) or 1))
    rows = max(1, -(-len(images) // cols))
    gap = 6
    ch = cell + lines_per * line_h + gap
    sheet = Image.new("RGB", (cols * (cell + gap) + gap, rows * ch + gap), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (img, lines) in enumerate(zip(images, fitted, strict=True)):
        x, y = gap + (i % cols) * (cell + gap), gap + (i // cols) * ch
        im = img.convert("RGB")
        if im.size != (cell, cell):
            im = im.resize(
                (cell, cell), Image.Resampling.NEAREST if im.width < cell else Image.Resampling.LANCZOS
            )
        sheet.paste(im, (x, y))
        for k, line in enumerate(lines):
            draw.text((x, y + cell + 1 + k * line_h), line, fill=(0, 0, 0), font=font)
    return sheet
