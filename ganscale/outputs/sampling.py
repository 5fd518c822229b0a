"""`ganscale sample`: grids, single images and interpolation GIFs from a trained generator.

torch is imported inside the functions that use it: a ``.onnx`` generator is sampled through
onnxruntime (``ganscale.outputs.engines``) on a machine without torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganscale.errors import GanscaleError

if TYPE_CHECKING:
    import torch
    from torch import nn


def pick_device(device: str | None) -> torch.device:
    import torch

    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise GanscaleError(f"--device {device}: CUDA is not available here; use --device cpu")
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def parse_conditions(text: str | None, meta: dict[str, Any]) -> list[str] | None:
    """``--tags`` may hold several conditions separated by ';' (one grid row each)."""
    attributes = meta["attributes"]
    if not attributes:
        if text:
            raise GanscaleError(f"--tags {text!r}: this generator is unconditional; drop --tags")
        return None
    if not text:
        raise GanscaleError(
            "this generator is conditional: pass --tags, e.g. --tags "
            f'"{" ".join(f"{v[0]} {a}" for a, v in attributes.items())}", or --all-conditions'
        )
    return [t.strip() for t in text.split(";") if t.strip()]


def labels_for(conditions: list[str], attributes: dict[str, list[str]]) -> torch.Tensor:
    import torch

    from ganscale.shardformat.vocab import parse_tags

    return torch.tensor([parse_tags(c, attributes) for c in conditions], dtype=torch.long)


def all_conditions(attributes: dict[str, list[str]]) -> list[str]:
    """Every combination of attribute values, as tag strings."""
    import itertools

    names = list(attributes)
    return [
        " ".join(f"{v} {a}" for a, v in zip(names, combo, strict=True))
        for combo in itertools.product(*(attributes[a] for a in names))
    ]


def noise(
    n: int,
    meta: dict[str, Any],
    seed: int,
    device: torch.device,
    psi: float | None = None,
) -> torch.Tensor:
    """z ~ N(0, z_sigma^2), times ``psi`` (the truncation of every command: z' = psi * z, see
    ``ganscale.outputs.engines``; None or 1 leaves z exactly as drawn)."""
    import torch

    from ganscale.outputs.engines import check_psi

    scale = check_psi(psi)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, meta["z_dim"], generator=gen)
    z = z * meta["z_sigma"]
    if scale != 1.0:
        z = z * scale
    return z.to(device)


def generate(
    G: nn.Module,
    meta: dict[str, Any],
    conditions: list[str] | None,
    per_condition: int,
    seed: int,
    device: torch.device,
    rows: int = 4,
    psi: float | None = None,
) -> torch.Tensor:
    """Images [R*per_condition, 3, S, S]: one row per condition, the same z down each column
    (so a column shows one face under every condition); ``psi``: truncation (see ``noise``)."""
    import torch

    was_training = G.training
    G.eval()
    with torch.no_grad():
        try:
            if conditions is None:
                z = noise(rows * per_condition, meta, seed, device, psi=psi)
                return G(z, None).float()
            z = noise(per_condition, meta, seed, device, psi=psi).repeat(len(conditions), 1)
            labels = labels_for(conditions, meta["attributes"]).to(device).repeat_interleave(per_condition, 0)
            return G(z, labels).float()
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
) -> Path:
    """What `ganscale sample` does; returns the path written. ``run`` may also be a ``.onnx``
    export (or a folder holding only one): then onnxruntime runs it and torch is never imported
    (its z comes from numpy, so seed k there is the same face as seed k in `ganscale serve`,
    not as seed k of the PyTorch path, whose stream is kept for existing runs).

    ``truncation``: psi in (0, 1] (z' = psi * z; None = 1 = none). ``labels``: write each
    row's tags at its left (a grid of several conditions) or a caption above (one condition);
    None = only for a grid of several conditions (the CLI's default). ``min_cell``: enlarge
    faces (nearest, whole factor) to at least this many px. Both are off by default here, so
    the grid stays pixel for pixel what G made, laid out as before."""
    from ganscale.outputs.engines import check_psi, is_onnx

    psi = check_psi(truncation)
    if min_cell < 0 or min_cell > 1024:
        raise GanscaleError(f"--min-cell {min_cell}: use 0 (native size) to 1024 px")

    onnx = is_onnx(Path(run))
    if onnx:
        from ganscale.outputs.engines import load_engine

        engine = load_engine(Path(run), device or "cpu")
        meta: dict[str, Any] = engine.meta
    else:
        from ganscale.outputs.export import load_generator

        dev = pick_device(device)
        G, meta = load_generator(Path(run), dev)
    out_str = str(out) if out is not None else ""
    if interpolate is not None:
        target = Path(out_str or "interpolation.gif")
        if onnx:
            return _interpolate_engine(engine, tags, interpolate, n or 16, seed, target, psi)
        return _interpolate(G, meta, tags, interpolate, n or 16, seed, dev, target, psi)
    if all_conditions:
        if not meta["attributes"]:
            raise GanscaleError("--all-conditions: this generator is unconditional")
        conditions: list[str] | None = _all(meta)
        per, count = n or 8, None
    else:
        conditions = parse_conditions(tags, meta)
        count = n or 64
        per = count if conditions is None or len(conditions) == 1 else max(1, count // len(conditions))
    if onnx:
        arrays = _generate_engine(engine, conditions, count if conditions is None else per, seed, psi)
    else:
        from ganscale.outputs.images import to_uint8

        if conditions is None:
            images = generate(G, meta, None, count, seed, dev, rows=1, psi=psi)
        else:
            images = generate(G, meta, conditions, per, seed, dev, psi=psi)
        arrays = to_uint8(images)
    from ganscale.outputs.images import labelled_grid, upscale

    arrays = upscale(arrays, min_cell)
    if out_str.endswith("/") or (out is not None and Path(out).is_dir()):
        folder = Path(out_str)
        folder.mkdir(parents=True, exist_ok=True)
        for i, arr in enumerate(arrays):
            _save(arr, folder / f"{i:05d}.png")
        return folder
    path = Path(out_str or "samples.png")
    several = conditions is not None and len(conditions) > 1
    ncol = per if several else int(math.ceil(math.sqrt(len(arrays))))
    if not (several if labels is None else labels):
        return _save(labelled_grid(arrays, ncol), path)
    note = f"seed {seed}" + (f", truncation psi {psi:g}" if psi != 1.0 else "")
    if several:
        return _save(labelled_grid(arrays, ncol, conditions, f"{note}; the same z down each column"), path)
    title = f"{conditions[0] if conditions else 'samples'} ({note})"
    return _save(labelled_grid(arrays, ncol, caption=title), path)


def _save(array: Any, path: Path, data: bytes | None = None) -> Path:
    """An HWC uint8 array as PNG (or raw ``data``), atomically, with PIL only."""
    from ganscale.outputs.engines import png_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data if data is not None else png_bytes(array))
    tmp.replace(path)
    return path


def _generate_engine(engine: Any, conditions: list[str] | None, per: int, seed: int, psi: float):  # noqa: ANN202
    """The torch-free twin of :func:`generate`: uint8 [R*per, S, S, 3], same z down each column."""
    import numpy as np

    from ganscale.outputs.engines import draw_z
    from ganscale.shardformat.vocab import parse_tags

    z = draw_z(per, engine.meta, seed, psi=psi)
    if conditions is None:
        return engine.images(z)
    labels = np.array([parse_tags(c, engine.attributes) for c in conditions], dtype=np.int64)
    return engine.images(np.tile(z, (len(conditions), 1)), np.repeat(labels, per, 0))


def _interpolate_engine(
    engine: Any, tags: str | None, target: str, frames: int, seed: int, out: Path, psi: float
) -> Path:
    """The torch-free twin of :func:`_interpolate` (one batch: the frames are the batch)."""
    import numpy as np

    from ganscale.outputs.engines import draw_z, gif_bytes, slerp_np
    from ganscale.shardformat.vocab import parse_tags

    frames = max(2, frames)
    z0, z1 = draw_z(2, engine.meta, seed, psi=psi)
    t = np.linspace(0, 1, frames, dtype=np.float32)[:, None]
    z = slerp_np(np.repeat(z0[None], frames, 0), np.repeat(z1[None], frames, 0), t)
    if engine.attributes:
        start = parse_tags(parse_conditions(tags, engine.meta)[0], engine.attributes)
        end = parse_tags(target, engine.attributes)
        lab = np.array([start] * frames, np.int64)
        images = engine.images(z, lab, np.array([end] * frames, np.int64), t)
    else:
        images = engine.images(z)
    return _save(None, out, gif_bytes(images))


def _all(meta: dict[str, Any]) -> list[str]:
    return all_conditions(meta["attributes"])


def one_hot_code(labels: torch.Tensor, attributes: dict[str, list[str]]) -> torch.Tensor:
    """[B, A] class indices -> the concatenated one-hot code G is conditioned on."""
    import torch
    import torch.nn.functional as F

    sizes = [len(v) for v in attributes.values()]
    return torch.cat([F.one_hot(labels[:, i], n).float() for i, n in enumerate(sizes)], dim=1)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between two latent vectors (keeps the norm typical of z)."""
    import torch

    an, bn = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((an * bn).sum(-1, keepdim=True).clamp(-1, 1))
    so = torch.sin(omega)
    if float(so.abs().min()) < 1e-6:
        return (1 - t) * a + t * b
    return torch.sin((1 - t) * omega) / so * a + torch.sin(t * omega) / so * b


def _interpolate(
    G: nn.Module,
    meta: dict[str, Any],
    tags: str | None,
    target: str,
    frames: int,
    seed: int,
    device: torch.device,
    out: Path,
    psi: float = 1.0,
) -> Path:
    """A GIF walking z (slerp between two draws) and, for conditional G, the condition from
    --tags to --interpolate (continuously, through mixed one-hot codes)."""
    import torch

    with torch.no_grad():
        return _interpolate_torch(G, meta, tags, target, frames, seed, device, out, psi)


def _interpolate_torch(G, meta, tags, target, frames, seed, device, out, psi):  # noqa: ANN001, ANN202
    from PIL import Image

    from ganscale.outputs.images import to_uint8

    z0, z1 = noise(2, meta, seed, device, psi=psi).chunk(2)
    attributes = meta["attributes"]
    if attributes:
        start = labels_for(parse_conditions(tags, meta)[:1], attributes)
        end = labels_for([target], attributes)
        start, end = start.to(device), end.to(device)
    frames = max(2, frames)
    images = []
    for i in range(frames):
        t = i / (frames - 1)
        z = slerp(z0, z1, t)
        if attributes:
            x = G(z, (1 - t) * one_hot_code(start, attributes) + t * one_hot_code(end, attributes))
        else:
            x = G(z, None)
        images.append(Image.fromarray(to_uint8(x.float())[0]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=80, loop=0)
    tmp.replace(out)
    return out
