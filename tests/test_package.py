"""`accelerate launch ganscale ...` runs `python ganscale`, putting ganscale/ on sys.path[0]:
no module in the package may shadow a stdlib module or an installed distribution."""

import ast
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


def _modules(pkg: Path) -> dict[str, Path]:
    mods = {}
    for p in pkg.rglob("*.py"):
        parts = list(p.relative_to(pkg.parent).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, mods: dict) -> set[str]:
    """The ganscale modules one import statement names (relative imports resolved; ``from a.b
    import c`` names the submodule ``a.b.c`` when there is one, else ``a.b`` itself)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.split(".")[0] == "ganscale"}
    base = node.module or ""
    if node.level:
        here = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
    if base.split(".")[0] != "ganscale":
        return set()
    subs = {f"{base}.{a.name}" for a in node.names} & set(mods)
    return subs | ({base} if len(subs) < len(node.names) else set())


def import_graph(pkg: Path = PKG) -> dict[str, set[str]]:
    """Module -> the ganscale modules it imports, by EVERY import statement in it: at module
    level, inside functions and methods, under ``if TYPE_CHECKING`` (ast.walk over the module).
    A function-level import is still a dependency, only a deferred one; counting it is what
    keeps "no import cycle" true of the design and not only of import time.

    Importing ``a.b.c`` runs the packages ``a`` and ``a.b`` first, so they are dependencies of
    whoever names ``a.b.c`` -- but not of ``a.b.c``'s own siblings and children (Python starts
    the package before them, and they need only what they name).
    """
    mods = _modules(pkg)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        named: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                named |= _imported(node, name, path.name == "__init__.py", mods)
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


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import each other, directly or around a loop (the strongly
    connected components with more than one module; Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        for dep in sorted(graph[m]):
            if dep not in index:
                visit(dep)
                low[m] = min(low[m], low[dep])
            elif dep in stack:
                low[m] = min(low[m], index[dep])
        if low[m] == index[m]:
            group = []
            while not group or group[-1] != m:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    return cycles


def _describe(group: list[str], graph: dict[str, set[str]]) -> str:
    edges = [f"{a} -> {b}" for a in group for b in sorted(graph[a] & set(group))]
    return f"{len(group)} modules: " + "; ".join(edges)


def test_no_import_cycle():
    graph = import_graph()
    cycles = import_cycles(graph)
    assert not cycles, "import cycles (each import must point down):\n" + "\n".join(
        _describe(c, graph) for c in cycles
    )


def test_the_cycle_test_reads_imports_inside_functions(tmp_path):
    """The graph sees a cycle made only of function-level and relative imports (the kind the
    old module-level reading let through: outputs/sampling.py <-> outputs/engines.py)."""
    pkg = tmp_path / "ganscale"
    (pkg / "outputs").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "outputs" / "__init__.py").write_text("")
    (pkg / "outputs" / "a.py").write_text("def f():\n    from ganscale.outputs.b import g\n    return g\n")
    (pkg / "outputs" / "b.py").write_text("class G:\n    def m(self):\n        from . import a\n")
    graph = import_graph(pkg)
    assert graph["ganscale.outputs.a"] == {"ganscale.outputs.b"}
    assert graph["ganscale.outputs.b"] == {"ganscale.outputs.a"}
    assert import_cycles(graph) == [["ganscale.outputs.a", "ganscale.outputs.b"]]
    (pkg / "outputs" / "b.py").write_text("def m():\n    return 1\n")
    assert import_cycles(import_graph(pkg)) == []


def test_only_the_runtime_and_config_read_the_environment():
    """Values from os.environ reach the rest of the package as parameters (ganscale.runtime.env)."""

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


MAX_FUNCTION_LINES = 120
"""Two screens of 60 lines; the longest today is ``evaluate_run`` (``evaluation/evaluate.py``, 105)."""
MAX_NESTING = 5
"""The deepest today (``data/loader.py``'s ``_epoch``, ``corpus/pack.py``'s ``write_shards``).
Lower both as the code simplifies; raising one needs a reason in the commit."""
BLOCKS = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try, ast.Match)


def _functions(pkg: Path = PKG):
    for p in sorted(pkg.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{p.relative_to(pkg)}:{node.lineno} {node.name}", node


def body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Source lines of a function's body, its docstring left out."""
    body = fn.body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    if has_doc and isinstance(body[0].value.value, str):
        body = body[1:] or body
    return fn.end_lineno - body[0].lineno + 1


def nesting(node: ast.AST, depth: int = 0) -> int:
    """How deep control blocks nest in ``node`` (an ``elif`` is not a level deeper; a nested
    function or class counts on its own)."""
    deepest = depth
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        is_elif = isinstance(child, ast.If) and isinstance(node, ast.If) and node.orelse == [child]
        deeper = isinstance(child, BLOCKS) and not is_elif
        deepest = max(deepest, nesting(child, depth + 1 if deeper else depth))
    return deepest


def test_functions_are_short_and_shallow():
    """What makes code hard to read is a long or deeply nested function, not a long file: a
    module line cap rewarded splitting files rather than simplifying them. So: no function body
    over MAX_FUNCTION_LINES lines, no control flow nested over MAX_NESTING blocks deep."""
    long = {where: n for where, fn in _functions() if (n := body_lines(fn)) > MAX_FUNCTION_LINES}
    deep = {where: d for where, fn in _functions() if (d := nesting(fn)) > MAX_NESTING}
    assert not long, f"shorten these functions (one job each): {long}"
    assert not deep, f"flatten these functions (return early, name the inner loop): {deep}"


def test_the_function_measures_see_length_and_depth():
    tree = ast.parse(
        "def f():\n"
        '    """Doc."""\n'
        "    for a in b:\n"
        "        if a:\n"
        "            pass\n"
        "        elif c:\n"
        "            while d:\n"
        "                def g():\n"
        "                    if e:\n"
        "                        pass\n"
    )
    f = tree.body[0]
    assert body_lines(f) == 8 and nesting(f) == 3  # for > if/elif > while; g's if is g's own
