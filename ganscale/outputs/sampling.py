"""`ganscale sample`: grids, single images and interpolation GIFs from a trained generator."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from ganscale.errors import GanscaleError
from ganscale.outputs.images import make_grid, save_png, to_uint8


def pick_device(device: str | None) -> torch.device:
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
    from ganscale.corpus.vocab import parse_tags

    return torch.tensor([parse_tags(c, attributes) for c in conditions], dtype=torch.long)


def all_conditions(attributes: dict[str, list[str]]) -> list[str]:
    """Every combination of attribute values, as tag strings."""
    import itertools

    names = list(attributes)
    return [
        " ".join(f"{v} {a}" for a, v in zip(names, combo, strict=True))
        for combo in itertools.product(*(attributes[a] for a in names))
    ]


def noise(n: int, meta: dict[str, Any], seed: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, meta["z_dim"], generator=gen) * meta["z_sigma"]).to(device)


@torch.no_grad()
def generate(
    G: nn.Module,
    meta: dict[str, Any],
    conditions: list[str] | None,
    per_condition: int,
    seed: int,
    device: torch.device,
    rows: int = 4,
) -> torch.Tensor:
    """Images [R*per_condition, 3, S, S]: one row per condition, the same z down each column
    (so a column shows one face under every condition)."""
    was_training = G.training
    G.eval()
    try:
        if conditions is None:
            z = noise(rows * per_condition, meta, seed, device)
            return G(z, None).float()
        z = noise(per_condition, meta, seed, device).repeat(len(conditions), 1)
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
) -> Path:
    """What `ganscale sample` does; returns the path written."""
    from ganscale.outputs.export import load_generator

    dev = pick_device(device)
    G, meta = load_generator(Path(run), dev)
    out_str = str(out) if out is not None else ""
    if interpolate is not None:
        return _interpolate(
            G, meta, tags, interpolate, n or 16, seed, dev, Path(out_str or "interpolation.gif")
        )
    if all_conditions:
        if not meta["attributes"]:
            raise GanscaleError("--all-conditions: this generator is unconditional")
        conditions: list[str] | None = _all(meta)
        per, count = n or 8, None
    else:
        conditions = parse_conditions(tags, meta)
        count = n or 64
        per = count if conditions is None or len(conditions) == 1 else max(1, count // len(conditions))
    if conditions is None:
        images = generate(G, meta, None, count, seed, dev, rows=1)
    else:
        images = generate(G, meta, conditions, per, seed, dev)
    if out_str.endswith("/") or (out is not None and Path(out).is_dir()):
        folder = Path(out_str)
        folder.mkdir(parents=True, exist_ok=True)
        for i, arr in enumerate(to_uint8(images)):
            save_png(arr, folder / f"{i:05d}.png")
        return folder
    path = Path(out_str or "samples.png")
    ncol = per if conditions is not None and len(conditions) > 1 else int(math.ceil(math.sqrt(len(images))))
    save_png(make_grid(images, ncol=ncol), path)
    return path


def _all(meta: dict[str, Any]) -> list[str]:
    return all_conditions(meta["attributes"])


def one_hot_code(labels: torch.Tensor, attributes: dict[str, list[str]]) -> torch.Tensor:
    """[B, A] class indices -> the concatenated one-hot code G is conditioned on."""
    import torch.nn.functional as F

    sizes = [len(v) for v in attributes.values()]
    return torch.cat([F.one_hot(labels[:, i], n).float() for i, n in enumerate(sizes)], dim=1)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between two latent vectors (keeps the norm typical of z)."""
    an, bn = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((an * bn).sum(-1, keepdim=True).clamp(-1, 1))
    so = torch.sin(omega)
    if float(so.abs().min()) < 1e-6:
        return (1 - t) * a + t * b
    return torch.sin((1 - t) * omega) / so * a + torch.sin(t * omega) / so * b


@torch.no_grad()
def _interpolate(
    G: nn.Module,
    meta: dict[str, Any],
    tags: str | None,
    target: str,
    frames: int,
    seed: int,
    device: torch.device,
    out: Path,
) -> Path:
    """A GIF walking z (slerp between two draws) and, for conditional G, the condition from
    --tags to --interpolate (continuously, through mixed one-hot codes)."""
    z0, z1 = noise(2, meta, seed, device).chunk(2)
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
