"""The exported generator: ``generator.safetensors`` + ``generator.json``.

The JSON holds everything needed to rebuild G (architecture, attribute vocabularies, z size
and sigma) so sampling needs neither the training code's config nor DeepSpeed. Loading
never unpickles: weights come from safetensors, and a JSON/tensor disagreement is refused
with the mismatch named.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganscale.errors import ConfigError, GanscaleError

if TYPE_CHECKING:  # torch is imported where it is used: the ONNX path reads META without it
    import torch
    from torch import nn

    from ganscale.config import Config

EXPORT_FORMAT = "ganscale-generator"
EXPORT_VERSION = 1
WEIGHTS = "generator.safetensors"
META = "generator.json"
FOLDER_WEIGHTS = "model.safetensors"
"""A model folder (``ganscale export RUN``, Hugging Face layout) holds these two instead."""
FOLDER_CONFIG = "config.json"


def generator_meta(cfg: Config, attributes: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "model": dataclasses.asdict(cfg.model),
        "attributes": {k: list(v) for k, v in attributes.items()},
        "num_classes": [len(v) for v in attributes.values()],
        "z_dim": cfg.model.z_dim,
        "z_sigma": cfg.model.z_sigma,
        "image_size": cfg.model.image_size,
        "run_name": cfg.name,
    }


def export_generator(G: nn.Module, meta: dict[str, Any], out_dir: Path, stem: str = "generator") -> Path:
    """Write ``out_dir/<stem>.safetensors`` and ``<stem>.json`` atomically."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    weights, meta_path = out_dir / f"{stem}.safetensors", out_dir / f"{stem}.json"
    tmp_w, tmp_m = weights.with_name(weights.name + ".tmp"), meta_path.with_name(meta_path.name + ".tmp")
    tensors = {k: v.detach().contiguous().cpu() for k, v in G.state_dict().items()}
    save_file(tensors, str(tmp_w), metadata={"format": EXPORT_FORMAT})
    tmp_m.write_text(json.dumps(meta, indent=1))
    tmp_w.replace(weights)
    tmp_m.replace(meta_path)
    return weights


def find_export(path: Path) -> tuple[Path, Path]:
    """(weights, json) for a run folder, a checkpoint folder, or a .safetensors/.json path.

    A run folder means its best generator when there is one (``RUN/best/``), else
    ``RUN/generator.safetensors``, else the EMA generator of its latest checkpoint.
    """
    path = Path(path)
    if path.name in (FOLDER_WEIGHTS, FOLDER_CONFIG):
        return path.with_name(FOLDER_WEIGHTS), path.with_name(FOLDER_CONFIG)
    if path.suffix in (".safetensors", ".json"):
        return path.with_suffix(".safetensors"), path.with_suffix(".json")
    if not path.exists():
        raise GanscaleError(f"{path}: no such run folder or generator file")
    for weights, meta in (
        (path / FOLDER_WEIGHTS, path / FOLDER_CONFIG),
        (path / "best" / WEIGHTS, path / "best" / META),
        (path / WEIGHTS, path / META),
        (path / "G_ema.safetensors", path / META),
    ):
        if weights.is_file():
            return weights, meta
    from ganscale.run_layout import latest_checkpoint

    ref = latest_checkpoint(path)
    if ref is not None:
        return ref.path / "G_ema.safetensors", ref.path / META
    raise GanscaleError(
        f"{path}: no generator found (no {WEIGHTS} and no checkpoint); "
        f"train first or pass an exported .safetensors"
    )


def load_generator(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild G from an export (or run/checkpoint folder) and load its weights, in eval mode."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ganscale.config import config_from_dict
    from ganscale.models import build_generator

    weights, meta_path = find_export(path)
    if not weights.is_file():
        raise GanscaleError(f"{weights}: generator weights not found")
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise GanscaleError(
            f"{meta_path}: generator description missing (it is written beside {weights.name})"
        ) from None
    except json.JSONDecodeError as e:
        raise GanscaleError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise GanscaleError(f"{meta_path}: not a ganscale generator description")
    try:
        # typed like a config file (z_dim: 1.0 or "8" is refused, not passed on to torch)
        model_cfg = config_from_dict({"model": meta["model"]}).model
        attributes = meta["attributes"]
        num_classes = [len(v) for v in attributes.values()]
    except (KeyError, TypeError, AttributeError, ConfigError) as e:
        raise GanscaleError(f"{meta_path}: malformed generator description ({e})") from None
    # Shapes first, on the meta device (no memory): a garbled JSON (g_channels: 1000000) must be
    # refused by the comparison, not by allocating a giant network (found by the export fuzz).
    try:
        with torch.device("meta"):
            expected = build_generator(model_cfg, num_classes).state_dict()
    except (ValueError, TypeError, RuntimeError, OverflowError) as e:  # e.g. g_channels: 1e308
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]  # torch adds C++ frames
        raise GanscaleError(f"{meta_path}: malformed generator description ({first})") from None
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise GanscaleError(f"{weights}: not a readable safetensors file ({e})") from None
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    shape = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or extra or shape:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:3]}")
        if extra:
            parts.append(f"unexpected tensors {extra[:3]}")
        if shape:
            k = shape[0]
            parts.append(
                f"{k} has shape {tuple(tensors[k].shape)}, {meta_path.name} implies "
                f"{tuple(expected[k].shape)}"
            )
        raise GanscaleError(f"{weights}: does not match {meta_path.name}: {'; '.join(parts)}")
    G = build_generator(model_cfg, num_classes)
    G.load_state_dict(tensors)
    return G.to(device).eval().requires_grad_(False), meta
