"""Device placement without a GPU (issue 21, item 2): a static check of the training-step code.

An unconditional model crashed at its first metrics row on CUDA because ``losses.class_loss``
built its zero on the CPU (``torch.zeros(())`` without a device) and ``torch.stack`` in the
metrics row refused to mix devices; the DeepSpeed backend built its ZeRO-1/2 gradient norm on
the CPU the same way. On a CPU-only machine every tensor is on the CPU, so no run can show it.

This test reads the source instead: in the modules a training step runs, every call of a
tensor factory (``torch.zeros``, ``torch.tensor``, ``torch.rand``...) must name a device
(``device=...``, not ``None``); tensors derived from another one (``*_like``, ``x.new_*``)
inherit its device and pass. The few calls that are meant to stay on the host are listed in
``HOST_ON_PURPOSE`` with the reason.

(``torch._subclasses.FakeTensorMode`` was tried first: it does fake CUDA tensors on a CPU-only
build, but it lets ``torch.stack`` mix a CPU 0-dim tensor with a CUDA one, the very call that
fails on a GPU, and ``.to("cuda")`` raises "not linked with support for cuda devices".)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

FACTORIES = {
    "zeros", "ones", "full", "empty", "tensor", "as_tensor", "arange", "range", "linspace", "logspace",
    "eye", "rand", "randn", "randint", "randperm", "normal", "scalar_tensor", "empty_strided",
}  # fmt: skip
PACKAGES = ["train", "runtime", "augment", "bench", "models"]


def _maybe_none(fn: ast.FunctionDef) -> set[str]:
    """Names in ``fn`` that may hold None: parameters defaulting to None, and names assigned
    from a conditional with a None branch (``labels.device if labels is not None else None``)."""
    args = fn.args
    names = set()
    positional = args.posonlyargs + args.args
    for arg, default in zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True):
        if isinstance(default, ast.Constant) and default.value is None:
            names.add(arg.arg)
    for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        if isinstance(default, ast.Constant) and default.value is None:
            names.add(arg.arg)
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.IfExp):
            branches = (node.value.body, node.value.orelse)
            if any(isinstance(b, ast.Constant) and b.value is None for b in branches):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _factory_calls(path: Path) -> list[tuple[int, str, str]]:
    """(line, factory, source) of every ``torch.<factory>(...)`` call whose device is missing,
    None, or a name that may hold None (see :func:`_maybe_none`)."""
    text = path.read_text()
    tree, source = ast.parse(text), text.splitlines()
    scopes: list[tuple[ast.AST, set[str]]] = [(tree, set())]
    scopes += [(fn, _maybe_none(fn)) for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef)]
    found = {}
    for scope, maybe_none in scopes:  # innermost scope last: its names decide
        for node in ast.walk(scope):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            f = node.func
            if not (isinstance(f.value, ast.Name) and f.value.id == "torch" and f.attr in FACTORIES):
                continue
            device = next((k.value for k in node.keywords if k.arg == "device"), None)
            missing = device is None or (isinstance(device, ast.Constant) and device.value is None)
            if missing or (isinstance(device, ast.Name) and device.id in maybe_none):
                found[node.lineno] = (node.lineno, f.attr, source[node.lineno - 1].strip())
            else:
                found.pop(node.lineno, None)
    return sorted(found.values())


def test_the_scan_finds_the_bug_it_is_for(tmp_path) -> None:
    """The check itself: today's class_loss zero and a device=None are found; derived ones pass."""
    src = tmp_path / "m.py"
    src.write_text(
        "import torch\n"
        "def f(x, labels):\n"
        "    a = torch.zeros(())\n"
        "    b = torch.zeros((), device=None)\n"
        "    c = torch.zeros((), device=x.device)\n"
        "    d = torch.zeros_like(x) + x.new_zeros(())\n"
        "    device = labels.device if labels is not None else None\n"
        "    e = torch.zeros((), device=device)\n"
        "    return torch.stack([a, b, c, d, e])\n"
        "def g(x, device=None):\n"
        "    return torch.ones(2, device=device)\n"
    )
    found = [(line, name) for line, name, _ in _factory_calls(src)]
    assert found == [(3, "zeros"), (4, "zeros"), (8, "zeros"), (11, "ones")]


# path relative to ganscale/ -> {factory: why it is meant to stay on the host}
HOST_ON_PURPOSE = {
    "augment/geometric.py": {"zeros": "identity_params: the loader's CPU parameters (pinned, sent async)"},
    "bench/data_bench.py": {"rand": "augmentation parameters made on the host, as the loader makes them"},
    "bench/measure.py": {
        "rand": "the bench's in-memory batches are made on the host and moved like the loader's",
        "randint": "labels of those host batches",
        "zeros": "empty labels of those host batches",
    },
    "models/layers.py": {"zeros": "nn.Parameter at construction: moved with the module by .to()"},
}


@pytest.mark.parametrize("package", PACKAGES)
def test_training_step_tensors_name_their_device(package: str) -> None:
    bad, used = [], set()
    for path in sorted((REPO / "ganscale" / package).glob("*.py")):
        rel = str(path.relative_to(REPO / "ganscale"))
        allowed = HOST_ON_PURPOSE.get(rel, {})
        for line, name, text in _factory_calls(path):
            if name not in allowed:
                bad.append(f"ganscale/{rel}:{line}: {text}")
            used.add((rel, name))
    listed = {(rel, name) for rel, names in HOST_ON_PURPOSE.items() for name in names}
    stale = {(rel, name) for rel, name in listed if rel.startswith(package + "/")} - used
    assert not stale, f"HOST_ON_PURPOSE lists calls that are gone: {sorted(stale)}"
    assert not bad, "tensor factories without device= (on CUDA they land on the CPU):\n" + "\n".join(bad)
