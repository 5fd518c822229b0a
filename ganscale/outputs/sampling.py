"""`ganscale sample`: grids, single images and interpolation GIFs from a trained generator.

One stack: z and the conditions come from :mod:`ganscale.outputs.latents` (the draw every
command shares, so seed k here is seed k on the serve page), and the generator runs through an
engine of :mod:`ganscale.outputs.engines` (PyTorch, or onnxruntime for a ``.onnx`` export, where
torch is never imported). :func:`generate` is the same draw for a generator already in memory
(the training-time sample grids, the model folder's grid).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ganscale.errors import GanscaleError
from ganscale.outputs.engines import Engine, gif_bytes, load_engine, png_bytes
from ganscale.outputs.latents import (
    all_conditions,
    check_psi,
    condition_labels,
    grid_inputs,
    parse_cond,
    parse_conditions,
    tag_text,
    walk,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

BATCH = 256
"""Images per forward pass when a grid is larger (--all-conditions on a big vocabulary)."""


def generate(
    G: nn.Module,
    meta: dict[str, Any],
    conditions: list[str] | np.ndarray | None,
    per_condition: int,
    seed: int,
    device: torch.device,
    rows: int = 4,
    psi: float | None = None,
) -> torch.Tensor:
    """Images [R*per_condition, 3, S, S] from ``G`` in memory: one row per condition (condition
    texts, or int64 [R, A] class indices), the same z down each column
    (:func:`ganscale.outputs.latents.grid_inputs`); unconditional: ``rows * per_condition``
    faces. ``psi``: truncation."""
    import torch

    count = per_condition if conditions is not None else rows * per_condition
    if conditions is None or isinstance(conditions, np.ndarray):
        label_rows = conditions
    else:
        label_rows = condition_labels(conditions, meta["attributes"])
    z, labels = grid_inputs(label_rows, count, meta, seed, psi=psi)
    was_training = G.training
    G.eval()
    try:
        with torch.no_grad():
            y = torch.from_numpy(labels).to(device) if labels is not None else None
            return G(torch.from_numpy(z).to(device), y).float()
    finally:
        G.train(was_training)


def sample_command(
    run: Path,
    tags: str | None = None,
    n: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    all_conditions: bool = False,
    interpolate: str | None = None,
    device: str | None = None,
    truncation: float | None = None,
    labels: bool | None = False,
    min_cell: int = 0,
    cond: list[str] | None = None,
) -> Path:
    """What `ganscale sample` does; returns the path written. ``run`` may also be a model folder,
    a ``.safetensors`` or a ``.onnx`` export (run by onnxruntime, torch never imported).

    ``truncation``: psi in (0, 1] (z' = psi * z; None = 1 = none). ``labels``: write each
    row's tags at its left (a grid of several conditions) or a caption above (one condition);
    None = only for a grid of several conditions (the CLI's default). ``min_cell``: enlarge
    faces (nearest, whole factor) to at least this many px. Both are off by default here, so
    the grid stays pixel for pixel what G made. ``cond``: ``["ATTR=VALUE", ...]`` (repeated
    ``--cond``), one condition instead of ``tags``; with ``all_conditions``, the attributes held
    fixed while the others take every value."""
    psi = check_psi(truncation)
    if min_cell < 0 or min_cell > 1024:
        raise GanscaleError(f"--min-cell {min_cell}: use 0 (native size) to 1024 px")
    engine = load_engine(Path(run), device)
    out_str = str(out) if out is not None else ""
    if interpolate is not None:
        return _interpolate(
            engine,
            _start(engine.meta, tags, cond),
            interpolate,
            n or 16,
            seed,
            Path(out_str or "interpolation.gif"),
            psi,
        )
    conditions, rows, per = _grid_plan(engine.meta, tags, cond or [], n, all_conditions)
    z, label_rows = grid_inputs(rows, per, engine.meta, seed, psi=psi)
    arrays = _images(engine, z, label_rows)
    from ganscale.outputs.images import labelled_grid, upscale

    arrays = upscale(arrays, min_cell)
    if out_str.endswith("/") or (out is not None and Path(out).is_dir()):
        folder = Path(out_str)
        folder.mkdir(parents=True, exist_ok=True)
        for i, arr in enumerate(arrays):
            _save(folder / f"{i:05d}.png", png_bytes(arr))
        return folder
    path = Path(out_str or "samples.png")
    several = conditions is not None and len(conditions) > 1
    ncol = per if several else int(math.ceil(math.sqrt(len(arrays))))
    if not (several if labels is None else labels):
        return _save(path, png_bytes(labelled_grid(arrays, ncol)))
    note = f"seed {seed}" + (f", truncation psi {psi:g}" if psi != 1.0 else "")
    if several:
        grid = labelled_grid(arrays, ncol, conditions, f"{note}; the same z down each column")
        return _save(path, png_bytes(grid))
    title = f"{conditions[0] if conditions else 'samples'} ({note})"
    return _save(path, png_bytes(labelled_grid(arrays, ncol, caption=title)))


def _grid_plan(
    meta: dict[str, Any], tags: str | None, cond: list[str], n: int | None, every: bool
) -> tuple[list[str] | None, np.ndarray | None, int]:
    """(the grid's condition texts and class indices [R, A], one row each, or None, None; faces
    per row); ``every``: --all-conditions."""
    attributes = meta["attributes"]
    if tags and cond:
        raise GanscaleError("--tags and --cond both name the condition; use one of them")
    if every:
        if not attributes:
            raise GanscaleError("--all-conditions: this generator is unconditional")
        rows = all_conditions(attributes, parse_cond(cond, attributes, partial=True))
        return [tag_text(r, attributes) for r in rows], rows, n or 8
    if cond:
        picked = parse_cond(cond, attributes)
        row = [picked[a] for a in attributes]
        return [tag_text(row, attributes)], np.array([row], np.int64), n or 64
    conditions = parse_conditions(tags, meta)
    count = n or 64
    if conditions is None:
        return None, None, count
    rows = condition_labels(conditions, attributes)
    return conditions, rows, count if len(conditions) == 1 else max(1, count // len(conditions))


def _start(meta: dict[str, Any], tags: str | None, cond: list[str] | None) -> np.ndarray | None:
    """The first condition (class indices [1, A]) of --tags or --cond: where a walk starts."""
    attributes = meta["attributes"]
    if not attributes:
        parse_conditions(tags, meta)  # refuses --tags (and parse_cond --cond) when unconditional
        if cond:
            parse_cond(cond, attributes)
        return None
    return _grid_plan(meta, tags, list(cond or []), 1, False)[1][:1]


def _images(engine: Engine, z: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """uint8 [B, S, S, 3], at most ``BATCH`` per forward."""
    parts = [
        engine.images(z[i : i + BATCH], None if labels is None else labels[i : i + BATCH])
        for i in range(0, len(z), BATCH)
    ]
    return np.concatenate(parts)


def _interpolate(
    engine: Engine, start: np.ndarray | None, target: str, frames: int, seed: int, out: Path, psi: float
) -> Path:
    """A GIF walking z from seed ``seed``'s face to seed ``seed + 1``'s (slerp) and, for a
    conditional G, the condition from ``start`` (class indices [1, A]) to ``target`` (a condition
    text, --interpolate) continuously, through mixed one-hot codes; the frames are one batch."""
    frames = max(2, frames)
    z, t = walk(seed, seed + 1, frames, engine.meta, psi=psi)
    if start is None:
        return _save(out, gif_bytes(engine.images(z)))
    end = condition_labels([target], engine.attributes)
    images = engine.images(z, np.repeat(start, frames, 0), np.repeat(end, frames, 0), t)
    return _save(out, gif_bytes(images))


def _save(path: Path, data: bytes) -> Path:
    """Write ``data`` (PNG or GIF bytes) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path
