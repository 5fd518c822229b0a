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
