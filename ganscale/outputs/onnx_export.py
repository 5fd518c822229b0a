"""`ganscale export RUN --format onnx`: ``generator.onnx`` + the same ``generator.json``.

The graph's inputs are ``z`` (float32 [B, z_dim]) and ``labels`` (int64 [B, A], class indices,
-1 = unknown); its output ``images`` is float32 [B, 3, S, S] in [-1, 1]. Two more inputs,
``labels_to`` (int64) and ``t`` (float32 [B or 1, 1]), are *overridable initializers*: they
have defaults (no second condition, t = 0), so a plain caller sees only ``z`` and ``labels``,
while the interpolation strip feeds them to mix two conditions inside one graph. The columns of
``labels`` are the run's attributes in generator.json's order, whatever their names; the graph
carries them too (:func:`describe`: metadata ``ganscale.attributes`` and the inputs' doc
strings), so a bare ``generator.onnx`` says what each column means.

Exporter: torch 2.13's default (dynamo) exporter needs onnxscript; the TorchScript exporter
(``dynamo=False``, opset 17) handles these convolutional generators exactly, so it is used.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from ganscale.errors import GanscaleError
from ganscale.outputs.engines import ONNX_FILE

OPSET = 17
PARITY_ATOL = 1e-3


def _wrapper(G, num_classes: list[int]):  # noqa: ANN001, ANN202 - torch types stay lazy
    import torch
    from torch import nn

    class ConditionMix(nn.Module):
        """G(z, (1 - t) * onehot(labels) + t * onehot(labels_to)), with comparisons for one_hot
        (so -1 becomes zeros, as in ``concat_one_hot``, with no data-dependent control flow)."""

        def __init__(self) -> None:
            super().__init__()
            self.G = G
            self.sizes = list(num_classes)

        def forward(self, z, labels, labels_to, t):  # noqa: ANN001, ANN202
            parts = []
            for i, n in enumerate(self.sizes):
                ar = torch.arange(n, device=z.device)
                a = (labels[:, i : i + 1] == ar).to(z.dtype)
                b = (labels_to[:, i : i + 1] == ar).to(z.dtype)
                parts.append((1 - t) * a + t * b)
            return self.G(z, torch.cat(parts, 1))

    class Unconditional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.G = G

        def forward(self, z):  # noqa: ANN001, ANN202
            return self.G(z, None)

    return (ConditionMix() if num_classes else Unconditional()).eval()


def export_onnx(run: Path, out_dir: Path, check: bool = True) -> Path:
    """Write ``out_dir/generator.onnx`` and ``generator.json`` (plus ``training.json`` and
    ``eval.json`` when the run has them); with ``check``, verify onnxruntime matches PyTorch
    within ``PARITY_ATOL`` on a batch. Returns the .onnx path."""
    import json

    import numpy as np
    import torch

    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise GanscaleError(
            "--format onnx needs onnx and onnxruntime: pip install 'ganscale[serve]'"
        ) from None
    from ganscale.outputs.export import META, find_export, load_generator
    from ganscale.outputs.facts import write_facts
    from ganscale.outputs.latents import draw_z

    G, meta = load_generator(run, "cpu")
    sizes = [len(v) for v in meta["attributes"].values()]
    wrapper = _wrapper(G, sizes)
    out_dir.mkdir(parents=True, exist_ok=True)
    path, tmp = out_dir / ONNX_FILE, out_dir / (ONNX_FILE + ".tmp")
    z = torch.from_numpy(draw_z(3, meta, seed=0))  # a tracing input: any z of the right shape
    if sizes:
        labels = torch.zeros(3, len(sizes), dtype=torch.long)
        args: tuple = (z, labels, torch.full((1, len(sizes)), -1, dtype=torch.long), torch.zeros(1, 1))
        names = ["z", "labels", "labels_to", "t"]
        axes = {"z": {0: "batch"}, "labels": {0: "batch"}, "labels_to": {0: "rows"}, "t": {0: "rows"}}
    else:
        args, names, axes = (z,), ["z"], {"z": {0: "batch"}}
    with warnings.catch_warnings():  # "legacy TorchScript-based exporter": chosen on purpose, see above
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            args,
            str(tmp),
            dynamo=False,
            opset_version=OPSET,
            input_names=names,
            output_names=["images"],
            dynamic_axes=axes | {"images": {0: "batch"}},
        )
    model = onnx.load(str(tmp))
    if sizes:  # defaults make labels_to/t optional (see the module docstring)
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(np.full((1, len(sizes)), -1, np.int64), "labels_to"),
                numpy_helper.from_array(np.zeros((1, 1), np.float32), "t"),
            ]
        )
    model.producer_name = "ganscale"
    describe(model, meta)
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    tmp.replace(path)
    (out_dir / META).write_text(json.dumps(meta, indent=1))
    weights, _ = find_export(run)
    write_facts(run, weights, out_dir)
    if check:
        err = parity(G, path)
        if err > PARITY_ATOL:
            raise GanscaleError(f"{path}: onnxruntime differs from PyTorch by {err:.2e} (> {PARITY_ATOL})")
    return path


def describe(model, meta: dict) -> None:  # noqa: ANN001 - an onnx.ModelProto (onnx stays lazy)
    """Make the graph self-describing for any attributes: metadata ``ganscale.attributes`` (the
    vocabularies, in the column order of ``labels``) and ``ganscale.generator`` (the whole
    generator.json), and a doc string on ``labels`` naming its columns and their values."""
    import json

    import onnx

    attributes = meta["attributes"]
    onnx.helper.set_model_props(
        model,
        {"ganscale.attributes": json.dumps(attributes), "ganscale.generator": json.dumps(meta)},
    )
    docs = {"z": f"float32 [B, {meta['z_dim']}] ~ N(0, {float(meta['z_sigma']):.4g}^2)"}
    if attributes:
        named = enumerate(attributes.items())
        columns = "; ".join(f"column {i} = {a}: {', '.join(v)}" for i, (a, v) in named)
        docs["labels"] = f"int64 [B, {len(attributes)}] class indices (-1 = unknown): {columns}"
        docs["labels_to"] = "int64 [B or 1, A]: a second condition, mixed in by t (default: none)"
        docs["t"] = "float32 [B or 1, 1]: 0 = labels, 1 = labels_to (default 0)"
    for value in model.graph.input:
        if value.name in docs:
            value.doc_string = docs[value.name]


def parity(G, onnx_path: Path, n: int = 16, seed: int = 0) -> float:  # noqa: ANN001 - an nn.Module
    """Max |onnxruntime - PyTorch| over a batch of ``n`` (z and every condition drawn from
    ``seed``, as ``ganscale sample`` and ``serve`` draw them)."""
    import numpy as np
    import torch

    from ganscale.outputs.engines import OnnxEngine
    from ganscale.outputs.latents import draw_labels, draw_z

    engine = OnnxEngine(Path(onnx_path))
    z = draw_z(n, engine.meta, seed)
    sizes = engine.meta["num_classes"]
    labels = draw_labels({}, engine.attributes, n, seed)[0] if sizes else None
    got = engine.raw(z, labels)
    with torch.no_grad():
        want = G(torch.from_numpy(z), torch.from_numpy(labels) if sizes else None).float().numpy()
    return float(np.abs(got - want).max())
