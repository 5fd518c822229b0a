"""`accelerate launch ganscale ...` runs `python ganscale`, putting ganscale/ on sys.path[0]:
no module in the package may shadow a stdlib module or an installed distribution."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "ganscale"


def _top_level_names() -> set[str]:
    names = set(sys.stdlib_module_names)
    for dist in importlib.metadata.distributions():
        top = dist.read_text("top_level.txt")
        if top:
            names.update(t.strip() for t in top.split() if t.strip())
        names.add((dist.metadata["Name"] or "").replace("-", "_").lower())
    names.discard("ganscale")
    return names


def test_no_module_shadows_stdlib_or_dependency():
    taken = _top_level_names()
    ours = {p.stem for p in PKG.glob("*.py")} | {
        p.name for p in PKG.iterdir() if (p / "__init__.py").exists()
    }
    clash = sorted(ours & taken - {"__init__", "__main__"})
    assert not clash, f"rename these modules, they shadow installed names under `python ganscale`: {clash}"


def test_python_ganscale_folder_runs_like_accelerate_launch():
    # exactly what `accelerate launch ganscale ...` executes
    out = subprocess.run([sys.executable, str(PKG), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "train" in out.stdout and "sample" in out.stdout and "data" in out.stdout


def _import_graph() -> dict[str, set[str]]:
    """Module -> the ganscale modules it imports at import time (module-level statements).

    A package is not a dependency of its own submodules (Python starts the package first, and
    the submodule needs only what it names; ``from a.b import c`` of a submodule ``c`` needs
    ``a.b.c``, not the rest of ``a.b``); importing ``a.b.c`` from elsewhere runs ``a.b``.
    """
    import ast

    mods = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        named = set()
        for node in ast.parse(path.read_text()).body:
            if (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").startswith("ganscale")
            ):
                subs = {f"{node.module}.{a.name}" for a in node.names} & set(mods)
                named |= subs
                if len(subs) < len(node.names):  # a name defined by the module itself
                    named.add(node.module)
            elif isinstance(node, ast.Import):
                named |= {a.name for a in node.names if a.name.startswith("ganscale")}
        deps = set()
        for m in named:
            parts = m.split(".")
            deps.add(m)
            deps |= {
                ".".join(parts[:i])
                for i in range(1, len(parts))
                if not name.startswith(".".join(parts[:i]) + ".")
            }
        graph[name] = {m for m in deps if m in mods and m != name}
    return graph


def test_no_import_cycle():
    graph = _import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_runtime_and_config_read_the_environment():
    """Values from os.environ reach the rest of the package as parameters (ganscale.runtime.env)."""
    import ast

    owners = ("runtime", "config")
    found = []
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG)
        if rel.parts[0].removesuffix(".py") in owners:
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            hit = (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
                and node.attr in ("environ", "getenv", "putenv", "unsetenv")
            ) or (
                isinstance(node, ast.ImportFrom)
                and node.module == "os"
                and any(a.name in ("environ", "getenv", "putenv") for a in node.names)
            )
            if hit:
                found.append(f"{rel}:{node.lineno}")
    assert not found, f"read the environment through ganscale.runtime.env instead: {found}"


def test_no_module_is_too_long_to_read_in_one_sitting():
    """Small modules, each owning one thing: none in ganscale/ over ~400 lines (STYLE.md)."""
    long = {
        str(p.relative_to(PKG)): n
        for p in sorted(PKG.rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > 420
    }
    assert not long, f"split these modules along what they do: {long}"
