"""`ganscale export RUN [--out DIR]`: a self-describing model folder, Hugging Face Hub layout.

    DIR/README.md             model card (YAML front matter + architecture, data, budget, eval, loading)
    DIR/config.json           the generator description (generator.json: architecture, vocabularies)
    DIR/model.safetensors     the EMA generator's weights
    DIR/sample.png            a sample grid
    DIR/training.json         step and images seen when exported
    DIR/training_config.yaml  the run's resolved config (local paths cut to their last part)
    DIR/eval.json             the run's `ganscale eval` result, when there is one

The folder can be uploaded to a Hub model repo as it is; nothing here uploads or downloads.
Loading it needs torch + safetensors: ``load_generator(DIR)``, or the ~20-line snippet in the
card (DCGAN generators), which does not need ganscale at all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ganscale.errors import GanscaleError
from ganscale.outputs.export import FOLDER_CONFIG, FOLDER_WEIGHTS
from ganscale.outputs.facts import EVAL, run_facts, write_facts

SAMPLE = "sample.png"

SNIPPET = """\
import json, math, torch
from torch import nn
from safetensors.torch import load_file

cfg = json.load(open("config.json"))
m, sizes = cfg["model"], cfg["num_classes"] if cfg["model"]["conditional"] else []
n_up = int(math.log2(m["image_size"])) - 2
mult = [min(2 ** (n_up - 1 - i), 16) for i in range(n_up)]
ch = m["g_channels"]
layers = [nn.ConvTranspose2d(m["z_dim"] + sum(sizes), ch * mult[0], 4, 1, 0, bias=False),
          nn.BatchNorm2d(ch * mult[0]), nn.ReLU()]
for a, b in zip(mult, mult[1:]):
    layers += [nn.ConvTranspose2d(ch * a, ch * b, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * b), nn.ReLU()]
layers += [nn.ConvTranspose2d(ch * mult[-1], 3, 4, 2, 1), nn.Tanh()]
G = nn.Sequential(*layers).eval()
G.load_state_dict({k.removeprefix("net."): v for k, v in load_file("model.safetensors").items()})

def generate(z, labels):  # z [B, z_dim] ~ N(0, z_sigma^2); labels [B, A] class indices
    code = [z] + [nn.functional.one_hot(labels[:, i], n).float() for i, n in enumerate(sizes)]
    with torch.no_grad():
        return G(torch.cat(code, 1)[:, :, None, None])  # [B, 3, S, S] in [-1, 1]
"""


def _plain_config(run_dir: Path | None) -> dict[str, Any]:
    import yaml

    path = run_dir / "config.yaml" if run_dir else None
    if path is None or not path.is_file():
        return {}
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}
    data = cfg.get("data") or {}
    for key in ("path", "cache_dir"):  # published folders should not carry this machine's paths
        if data.get(key):
            data[key] = Path(str(data[key])).name
    return cfg


def _sample_grid(G: Any, meta: dict[str, Any], path: Path) -> None:
    import torch

    from ganscale.outputs.images import make_grid, save_png
    from ganscale.outputs.latents import spread_conditions
    from ganscale.outputs.sampling import generate

    attrs = meta["attributes"]
    if attrs:
        rows = spread_conditions(attrs, min(8, max(len(v) for v in attrs.values())))
        images = generate(G, meta, rows, 8, seed=0, device=torch.device("cpu"))
    else:
        images = generate(G, meta, None, 8, seed=0, device=torch.device("cpu"), rows=8)
    save_png(make_grid(images, ncol=8), path)


def export_model_folder(run: Path, out_dir: Path) -> Path:
    """Write the model folder for ``run`` (a run folder or any generator ``load_generator`` takes)."""
    from safetensors.torch import save_file

    from ganscale.models import count_parameters
    from ganscale.outputs.export import find_export, load_generator
    from ganscale.outputs.facts import run_dir_of

    run, out_dir = Path(run), Path(out_dir)
    weights, _ = find_export(run)
    G, meta = load_generator(run, "cpu")
    if out_dir.resolve() == weights.parent.resolve():
        raise GanscaleError(f"--out {out_dir}: that is where the generator is read from; pick another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in G.state_dict().items()}
    tmp = out_dir / (FOLDER_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": meta["format"]})
    tmp.replace(out_dir / FOLDER_WEIGHTS)
    (out_dir / FOLDER_CONFIG).write_text(json.dumps(meta, indent=1) + "\n")
    write_facts(run, weights, out_dir)
    run_dir = run_dir_of(weights)
    cfg = _plain_config(run_dir)
    if cfg:
        import yaml

        (out_dir / "training_config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    _sample_grid(G, meta, out_dir / SAMPLE)
    facts = run_facts(out_dir / FOLDER_WEIGHTS, meta)
    card = model_card(meta, cfg, facts, count_parameters(G, trainable_only=False))
    (out_dir / "README.md").write_text(card)
    if not (out_dir / EVAL).is_file() and run_dir is not None and (run_dir / EVAL).is_file():
        shutil.copyfile(run_dir / EVAL, out_dir / EVAL)
    return out_dir


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "n/a"
    if pct:
        return f"{float(x):.1%}"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def model_card(meta: dict[str, Any], cfg: dict[str, Any], facts: dict[str, Any], params: int) -> str:
    """README.md: YAML front matter the Hub reads, then what a user needs to trust and load it."""
    m, attrs = meta["model"], meta["attributes"]
    train, data, optim = cfg.get("train", {}), cfg.get("data", {}), cfg.get("optim", {})
    kind = "conditional (ACGAN)" if attrs else "unconditional"
    tags = ["gan", "image-generation", "ganscale", m["arch"], "acgan" if attrs else "dcgan"]
    front = ["---", "library_name: ganscale", "tags:"] + [f"- {t}" for t in dict.fromkeys(tags)]
    if not attrs:
        front.append("pipeline_tag: unconditional-image-generation")
    front += ["---", ""]
    name = facts.get("run_name") or "ganscale generator"
    lines = [
        f"# {name}: a {kind} {m['arch'].upper()} generator, {m['image_size']}x{m['image_size']} px",
        "",
        f"![samples]({SAMPLE})",
        "",
        "License: not set. Add a `license:` line to the front matter before you publish.",
        "",
        "## Architecture",
        "",
        f"- `{m['arch']}` generator, {params:,} parameters, output 3x{m['image_size']}x{m['image_size']} "
        "in [-1, 1] (tanh)",
        f"- z: {meta['z_dim']} dims, drawn N(0, {meta['z_sigma']:.4g}^2)",
        f"- width g_channels={m['g_channels']}"
        + (f", g_blocks={m['g_blocks']}" if m["arch"] == "resnet" else ""),
    ]
    if attrs:
        lines.append(
            "- conditioned on one-hot codes of: " + "; ".join(f"{a} ({len(v)})" for a, v in attrs.items())
        )
    lines += ["", "## Data", ""]
    if data:
        src = data.get("source")
        if src == "synthetic":
            lines.append(f"- ganscale's built-in synthetic face corpus: {data.get('synthetic_n')} images")
        else:
            lines.append(f"- WebDataset shards `{data.get('path')}`")
    else:
        lines.append("- not recorded (the run folder had no config.yaml)")
    for a, v in attrs.items():
        lines.append(f"- {a}: {', '.join(v)}")
    lines += [
        "",
        "## Training budget",
        "",
        f"- {_fmt(facts.get('step'))} steps, {_fmt(facts.get('images_seen'))} images seen",
        f"- batch {_fmt(train.get('batch_size'))}, Adam lr G {_fmt(optim.get('g_lr'))} / D "
        f"{_fmt(optim.get('d_lr'))}, EMA decay {_fmt(train.get('ema_decay'))}, precision "
        f"{_fmt(train.get('mixed_precision'))}",
        "- weights: the EMA generator; full resolved config in `training_config.yaml`",
    ]
    if facts.get("best"):
        b = facts["best"]
        lines.append(f"- this is the best step by `{b.get('metric')}` ({_fmt(b.get('value'))})")
    lines += ["", "## Evaluation", ""] + _eval_lines(facts.get("eval"))
    lines += [
        "",
        "## How to load",
        "",
        "With ganscale (`pip install ganscale`; only torch + safetensors are imported):",
        "",
        "```python",
        "from ganscale.outputs.export import load_generator",
        'G, meta = load_generator("path/to/this/folder")  # eval mode; G(z, labels) -> [B, 3, S, S]',
        "```",
        "",
    ]
    lines += _sampling_lines(attrs)
    if m["arch"] == "dcgan":
        lines += [
            "",
            "Without ganscale (torch + safetensors only), from inside this folder:",
            "",
            "```python",
        ]
        lines += [SNIPPET.rstrip("\n"), "```"]
    return "\n".join(front + lines) + "\n"


def _sampling_lines(attrs: dict[str, list[str]]) -> list[str]:
    """How to ask the CLI for images: one ``--cond ATTR=VALUE`` per attribute of this model."""
    folder = "path/to/this/folder"
    if not attrs:
        return ["", f"Or `ganscale sample {folder}` / `ganscale serve {folder}` (one page in a browser)."]
    import math

    from ganscale.outputs.latents import MAX_ALL_CONDITIONS, parse_condition

    cond = " ".join(f"--cond {a}={v[0]}" for a, v in attrs.items())
    words = " ".join(v[-1] for v in attrs.values())
    values = [{x.lower() for x in v} for v in attrs.values()]
    try:  # values alone where each names one attribute; else (shared words) "blue hair red eyes"
        if len(set().union(*values)) < sum(map(len, values)):
            raise GanscaleError("a value shared by two attributes")
        parse_condition(words, attrs)
        note = "values alone, when each names one attribute"
    except GanscaleError:
        words = " ".join(f"{v[-1]} {a}" for a, v in attrs.items())
        note = "each value followed by its attribute"
    every = "--all-conditions"
    if math.prod(map(len, attrs.values())) > MAX_ALL_CONDITIONS:  # refused: hold the first attribute
        first, vals = next(iter(attrs.items()))
        every += f" --cond {first}={vals[0]}"
    return [
        "",
        "Or from the command line, one `--cond ATTR=VALUE` per attribute ("
        + "; ".join(f"{a}: {', '.join(v)}" for a, v in attrs.items())
        + "):",
        "",
        "```bash",
        f"ganscale sample {folder} {cond}",
        f'ganscale sample {folder} --tags "{words}"   # {note}',
        f"ganscale sample {folder} {every}   # one row per combination",
        f"ganscale serve {folder}   # one picker per attribute in a browser page",
        "```",
    ]


def _held_out(acc: Any) -> str:
    if isinstance(acc, dict):
        return ", ".join(f"{k} {_fmt(v, True)}" for k, v in acc.items())
    return _fmt(acc, True) if isinstance(acc, float) else _fmt(acc)


def _eval_lines(ev: dict[str, Any] | None) -> list[str]:
    if not ev:
        return ["Not evaluated yet: run `ganscale eval RUN` and export again."]
    clf = ev.get("classifier") or {}
    out = [
        f"Measured by `ganscale eval` on {_fmt(ev.get('n'))} generated images (seed {_fmt(ev.get('seed'))}, "
        f"generator `{ev.get('measured_on')}`), with conditions drawn like the real data's. Attribute "
        "accuracy: a classifier trained on the corpus itself (held-out accuracy "
        f"{_held_out(clf.get('held_out_accuracy'))}) reads each generated image's attributes. FID/KID/"
        "precision/recall in that classifier's feature space (not Inception's unless listed), with "
        "the real-vs-real floor beside them.",
        "",
    ]
    acc, real = ev.get("accuracy") or {}, ev.get("real_accuracy") or {}
    if acc:
        out += ["| attribute | generated | real images |", "|---|---|---|"]
        out += [f"| {k} | {_fmt(v, True)} | {_fmt(real.get(k), True)} |" for k, v in acc.items()]
        out.append("")
    for attr, per in (ev.get("per_value_accuracy") or {}).items():
        out.append(f"- {attr}, per value: " + ", ".join(f"{v} {_fmt(a, True)}" for v, a in per.items()))
    floor = ev.get("real_vs_real") or {}
    for k, v in (ev.get("metrics") or {}).items():
        out.append(f"- {k}: {_fmt(v)} (real-vs-real {_fmt(floor.get(k))})")
    if "diversity" in (ev.get("metrics") or {}):
        out += [
            "",
            "`diversity`: how much generated images of one condition differ from each other, as a "
            "fraction of how much real images of one condition do (1.0 = as varied as the real "
            "images, near 0 = one image per condition).",
        ]
    return out
