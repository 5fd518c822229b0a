"""``ganscale train CONFIG --init-from RUN_OR_EXPORT``: start a new run from a trained one's weights.

Like StyleGAN's ``--resume=ffhq256``, not like ``--resume``: G and D take every tensor of the
source whose name and shape match, and the run starts at step 0 with fresh optimizers, in a
fresh run folder (the usual ``--out`` rules apply). The conditioning layers
(:mod:`ganscale.models.conditioning`) are matched per attribute: an attribute of the new corpus
with the same name and the same values (in order) as one of the source's keeps its rows of G's
label inputs and its D heads; any other attribute's are left as initialised (re-initialised),
and the one line printed at start names those layers.

The source is a run folder (its latest complete checkpoint's ``G.safetensors`` and
``D.safetensors``; without a checkpoint, its exported generator), a checkpoint folder, or an
exported generator (``ganscale export`` model folder, ``generator.safetensors``): these hold
only G, so D starts fresh, and the line says so. G is the checkpoint's trained G (the EMA starts
as its copy, as in any run).

Two steps, as everywhere in a start: :func:`plan_init` checks everything (the source exists,
holds readable weights, its networks fit this config's) before the run folder is touched, and
reads only the files' headers; :func:`apply_init` loads the weights into the freshly built G
and D once the corpus's attributes are known. Loading is safetensors only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganscale.config import Config
from ganscale.errors import GanscaleError
from ganscale.models.conditioning import (
    attribute_module,
    generator_label_inputs,
    label_input_layers,
)
from ganscale.outputs.export import EXPORT_FORMAT, find_export
from ganscale.train import checkpoint as ckpt
from ganscale.train.run_folder import SHAPE_KEYS

D_CONDITIONAL_ONLY = ("classifier.",)
"""D's modules that exist only in a conditional D (``model.head: classifier``'s own CNN): new
(as initialised) when the source is unconditional, unused when this run is."""
D_HEADS_OF_CONDITIONING = ("adv_head.",)
"""D's modules whose shape follows ``model.conditional`` (a conditional ``separate`` head has
``head_layers`` layers, an unconditional D one): re-initialised where the source's
conditioning differs and they do not match; any other mismatch there is refused."""


class InitFromError(GanscaleError):
    """An ``--init-from`` source that cannot start this run (missing, unreadable, other shapes)."""


@dataclass(frozen=True)
class InitPlan:
    """What ``--init-from`` loads, checked; small (paths and names) so every rank can hold it."""

    source: str
    """The path as given (for the message)."""
    g_weights: Path
    d_weights: Path | None
    """None: the source holds only G (D starts fresh)."""
    attributes: dict[str, list[str]]
    """The source's attributes (its values in order), {} when it is unconditional."""
    no_d: str = ""
    """Why D starts fresh (when ``d_weights`` is None)."""
    skip: str = ""
    """Not applied, and why (``--resume latest`` found the run's own checkpoint)."""


def _fail(source: str, message: str) -> InitFromError:
    return InitFromError(f"--init-from {source}: {message}")


def plan_init(
    cfg: Config,
    source: str | Path,
    *,
    run_dir: Path | None = None,
    resume: str | None = None,
    overwrite: bool = False,
) -> InitPlan:
    """Check ``source`` for a start of ``cfg`` into ``run_dir``; raises :class:`InitFromError`
    (one line) and writes nothing.

    With ``resume``: a checkpoint or run folder (``--resume PATH``) contradicts ``--init-from``
    (two sources of weights) and is refused; ``--resume latest`` continues the run in
    ``run_dir`` when it has a checkpoint (the init is then not applied, and the line says so:
    a requeued fine-tuning job keeps its command line), else the run starts from ``source``.
    """
    name = str(source)
    path = Path(source)
    if resume is not None and resume not in ("latest", "auto", ""):
        raise _fail(
            name,
            f"contradicts --resume {resume}: --resume continues that checkpoint (its weights, "
            "optimizers and step), --init-from starts a new run at step 0 from other weights; pass one",
        )
    if not path.exists():
        raise _fail(name, "no such run folder, checkpoint folder or exported model")
    if run_dir is not None and overwrite and path.resolve().is_relative_to(run_dir.resolve()):
        raise _fail(
            name,
            f"it is inside --out {run_dir}, whose run --overwrite removes first; "
            "export it elsewhere (ganscale export) or train into a new --out",
        )
    g_weights, d_weights, meta_path, no_d = _locate(name, path)
    meta = _read_meta(name, meta_path)
    g_shapes = _header(name, g_weights)
    d_shapes = _header(name, d_weights) if d_weights is not None else None
    _check_shapes(name, cfg, meta, g_shapes, d_shapes)
    plan = InitPlan(name, g_weights, d_weights, meta["attributes"], no_d=no_d)
    if resume is not None and run_dir is not None:
        ref = ckpt.latest_checkpoint(run_dir)
        if ref is not None:
            return InitPlan(
                name,
                g_weights,
                d_weights,
                plan.attributes,
                skip=f"--init-from {name}: not applied, --resume latest continues {run_dir} from its "
                f"step {ref.step}",
            )
    return plan


def _locate(name: str, path: Path) -> tuple[Path, Path | None, Path, str]:
    """(G weights, D weights or None, the generator description, why D starts fresh)."""
    folder = None
    if path.is_dir() and (path / "state.json").is_file():  # a checkpoint folder
        folder = path
    elif path.is_dir() and (path / "checkpoints").is_dir():  # a run folder
        ref = ckpt.latest_checkpoint(path)
        folder = ref.path if ref is not None else None
    if folder is not None:
        g, d = folder / "G.safetensors", folder / "D.safetensors"
        for f in (g, d):
            if not f.is_file():
                raise _fail(name, f"checkpoint {folder} has no {f.name}; pick another checkpoint")
        return g, d, folder / "generator.json", ""
    try:
        weights, meta = find_export(path)
    except GanscaleError:
        raise _fail(
            name,
            "holds no weights (no complete checkpoint, no generator.safetensors, no model.safetensors); "
            "pass a run folder, a checkpoint folder or a `ganscale export` folder",
        ) from None
    if not weights.is_file():
        raise _fail(name, f"{weights} not found")
    return weights, None, meta, f"{weights.name} holds only G"


def _read_meta(name: str, meta_path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(meta_path.read_text())
    except OSError:
        message = f"{meta_path} is missing (the generator's description, written beside its weights)"
        raise _fail(name, message) from None
    except json.JSONDecodeError as e:
        raise _fail(name, f"{meta_path} is not valid JSON ({e})") from None
    ok = (
        isinstance(meta, dict)
        and meta.get("format") == EXPORT_FORMAT
        and isinstance(meta.get("model"), dict)
        and isinstance(meta.get("attributes"), dict)
    )
    if not ok:
        raise _fail(name, f"{meta_path} is not a ganscale generator description")
    return meta


def _header(name: str, weights: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a safetensors file (its header only)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise _fail(name, f"{weights} is not a readable safetensors file ({e})") from None


def _target_shapes(cfg: Config, source_classes: list[int]) -> tuple[nn.Module, nn.Module]:
    """This config's G and D on the meta device (shapes only), with the source's class counts
    (any counts do: the label-indexed dims and per-attribute heads are not compared)."""
    from ganscale.models import build_discriminator, build_generator
    from ganscale.train.plan import d_norm_of

    classes = (source_classes or [2]) if cfg.model.conditional else []
    with torch.device("meta"):
        G = build_generator(cfg.model, classes)
        return G, build_discriminator(cfg.model, classes, norm=d_norm_of(cfg))


def _check_shapes(
    name: str,
    cfg: Config,
    meta: dict[str, Any],
    g_shapes: dict[str, tuple[int, ...]],
    d_shapes: dict[str, tuple[int, ...]] | None,
) -> None:
    """Every tensor of this config's G and D but the conditioning ones must be in the source with
    its shape (else nothing would match: the model keys that differ are named)."""
    source_classes = [len(v) for v in meta["attributes"].values()]
    try:
        G, D = _target_shapes(cfg, source_classes)
    except (ValueError, TypeError) as e:
        raise _fail(name, f"this config's networks cannot be built ({e})") from None
    bad = _generator_mismatch(G, g_shapes, meta.get("z_dim"))
    if bad is None and d_shapes is not None:
        conditioning_changed = bool(meta["model"].get("conditional")) != cfg.model.conditional
        bad = _discriminator_mismatch(D, d_shapes, conditioning_changed)
    if bad is None:
        return
    model = meta["model"]
    changed = [
        f"model.{k} {model.get(k)} -> {getattr(cfg.model, k)}"
        for k in SHAPE_KEYS
        if k != "conditional" and model.get(k) != getattr(cfg.model, k)
    ]
    fix = "; ".join(
        f"--set model.{k}={model.get(k)}"
        for k in SHAPE_KEYS
        if k != "conditional" and model.get(k) != getattr(cfg.model, k)
    )
    what = ", ".join(changed) if changed else bad
    raise _fail(
        name,
        f"its networks have other shapes than this config's ({what}), so its weights would not load; "
        + (f"use the source's model settings ({fix}) or another source" if fix else "use another source"),
    )


def _generator_mismatch(G: nn.Module, source: dict[str, tuple[int, ...]], z_dim: Any) -> str | None:
    labels, layers = generator_label_inputs(G), label_input_layers(G)
    for k, v in G.state_dict().items():
        shape = tuple(v.shape)
        if k not in source:
            return f"G.{k} is not in the source"
        if k in labels:
            li = labels[k]
            if li.offset and z_dim != li.offset:
                return f"model.z_dim {z_dim} -> {li.offset}"
            same_rest = len(source[k]) == len(shape) and all(
                a == b for i, (a, b) in enumerate(zip(source[k], shape, strict=True)) if i != li.dim
            )
            if not same_rest:
                return f"G.{k} has shape {source[k]} in the source, {shape} here"
        elif k.split(".parametrizations.")[0] in layers:
            continue  # a label layer's spectral-norm vectors follow its weight's width
        elif source[k] != shape:
            return f"G.{k} has shape {source[k]} in the source, {shape} here"
    extra = sorted(set(source) - set(G.state_dict()))
    return f"the source's G.{extra[0]} is not in this config's G" if extra else None


def _conditional_only(key: str) -> bool:
    return key.startswith(D_CONDITIONAL_ONLY)


def _discriminator_mismatch(
    D: nn.Module, source: dict[str, tuple[int, ...]], conditioning_changed: bool
) -> str | None:
    state = D.state_dict()
    for k, v in state.items():
        if attribute_module(k) is not None or (_conditional_only(k) and k not in source):
            continue  # per attribute (matched in apply_init), or new for a conditional D
        if conditioning_changed and k.startswith(D_HEADS_OF_CONDITIONING):
            continue  # re-initialised by apply_init where it does not match
        if k not in source:
            return f"D.{k} is not in the source"
        if source[k] != tuple(v.shape):
            return f"D.{k} has shape {source[k]} in the source, {tuple(v.shape)} here"
    extra = [
        k
        for k in source
        if k not in state
        and attribute_module(k) is None
        and not _conditional_only(k)
        and not (conditioning_changed and k.startswith(D_HEADS_OF_CONDITIONING))
    ]
    return f"the source's D.{sorted(extra)[0]} is not in this config's D" if extra else None


# ---------------------------------------------------------------------------------- apply


def attribute_map(source: dict[str, list[str]], target: dict[str, list[str]]) -> dict[int, int]:
    """Target attribute index -> the source's index of the same attribute: same name, same values
    in the same order (only then do the conditioning rows mean the same)."""
    src = {a: (j, list(v)) for j, (a, v) in enumerate(source.items())}
    return {i: src[a][0] for i, (a, v) in enumerate(target.items()) if a in src and src[a][1] == list(v)}


def _offsets(attributes: dict[str, list[str]], start: int) -> list[int]:
    out, at = [], start
    for values in attributes.values():
        out.append(at)
        at += len(values)
    return out


def _load_generator(
    G: nn.Module, src: dict[str, torch.Tensor], plan: InitPlan, target: dict[str, list[str]]
) -> tuple[int, list[str]]:
    """Load G from ``src``: every tensor but the label rows of new attributes. Returns (tensors
    loaded, at least in part; layers whose label rows were re-initialised)."""
    labels, layers = generator_label_inputs(G), label_input_layers(G)
    mapping = attribute_map(plan.attributes, target)
    sizes = [len(v) for v in target.values()]
    state = G.state_dict()
    new: dict[str, torch.Tensor] = {}
    loaded, reinit = 0, []
    for k, fresh in state.items():
        if k in labels:
            li = labels[k]
            t = fresh.detach().clone()
            s = src[k].to(t.dtype)
            got = li.offset > 0
            if got:  # z's rows
                t.narrow(li.dim, 0, li.offset).copy_(s.narrow(li.dim, 0, li.offset))
            t_at, s_at = _offsets(target, li.offset), _offsets(plan.attributes, li.offset)
            for i, n in enumerate(sizes):
                if i in mapping:
                    t.narrow(li.dim, t_at[i], n).copy_(s.narrow(li.dim, s_at[mapping[i]], n))
                    got = True
            if len(mapping) < len(sizes) and li.layer not in reinit:
                reinit.append(li.layer)
            new[k], loaded = t, loaded + got
        elif k.split(".parametrizations.")[0] in layers and src[k].shape != fresh.shape:
            new[k] = fresh  # spectral-norm vectors of a label layer whose width changed
        else:
            new[k], loaded = src[k], loaded + 1
    G.load_state_dict(new)
    return loaded, reinit


def _load_discriminator(
    D: nn.Module, src: dict[str, torch.Tensor], plan: InitPlan, target: dict[str, list[str]]
) -> tuple[int, list[str]]:
    """Load D from ``src``: the trunk and adversarial head, and the per-attribute modules of the
    attributes the source had as they are. Returns (tensors loaded, modules left as initialised)."""
    mapping = attribute_map(plan.attributes, target)
    new: dict[str, torch.Tensor] = {}
    loaded, reinit = 0, []
    for k, fresh in D.state_dict().items():
        part = attribute_module(k)
        key = k
        if part is not None:
            mod, i, rest = part
            key = f"{mod}.{mapping[i]}.{rest}" if i in mapping else ""
        if key in src and src[key].shape == fresh.shape:
            new[k], loaded = src[key], loaded + 1
            continue
        new[k] = fresh
        where = f"{part[0]}.{part[1]}" if part is not None else k.split(".")[0]
        if where not in reinit:
            reinit.append(where)
    D.load_state_dict(new)
    return loaded, reinit


def _layer_names(G: nn.Module, layers: list[str]) -> list[str]:
    """How the line names G's re-initialised layers: each, or a count for cbn's many BNs."""
    labels = generator_label_inputs(G)
    concat = [
        f"G.{x} (label inputs)" for x in layers if any(li.layer == x and li.offset for li in labels.values())
    ]
    cbn = [x for x in layers if not any(li.layer == x and li.offset for li in labels.values())]
    if len(cbn) > 2:
        return [*concat, f"G's {len(cbn)} conditional BatchNorm embeddings"]
    return concat + [f"G.{x}" for x in cbn]


def apply_init(G: nn.Module, D: nn.Module, plan: InitPlan, attributes: dict[str, list[str]]) -> str:
    """Load ``plan``'s weights into the freshly built (and initialised) ``G`` and ``D`` of a run
    whose corpus has ``attributes`` ({} when unconditional); the one line that says what happened."""
    if plan.skip:
        return plan.skip
    from safetensors.torch import load_file

    g_loaded, g_reinit = _load_generator(G, load_file(str(plan.g_weights)), plan, attributes)
    if plan.d_weights is not None:
        d_loaded, d_reinit = _load_discriminator(D, load_file(str(plan.d_weights)), plan, attributes)
        d_part = f"{d_loaded} of D"
    else:
        d_reinit, d_part = [], f"D starts fresh ({plan.no_d})"
    mapping = attribute_map(plan.attributes, attributes)
    new = [a for i, a in enumerate(attributes) if i not in mapping]
    kept = {list(plan.attributes)[j] for j in mapping.values()}
    dropped = [a for a in plan.attributes if a not in kept]
    layers = _layer_names(G, g_reinit) + [f"D.{x}" for x in d_reinit]
    what = (
        f"new conditions: {', '.join(new)}" if new else "conditioning changed" if layers else "new conditions"
    )
    line = f"--init-from {plan.source}: loaded {g_loaded} tensors of G, {d_part}; "
    line += f"re-initialised ({what}): {', '.join(layers) or 'none'}"
    if dropped:
        line += f"; not used (the source's conditions not in this corpus): {', '.join(dropped)}"
    return line
