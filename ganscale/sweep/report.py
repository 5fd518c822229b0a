"""`ganscale report RUN...`: the runs' eval.json as one table, grouped by cell over seeds.

Arguments are run folders (with eval.json), sweep folders (with sweep.json: its cells, in
spec order) or any folder above runs (every eval.json below it). A run's group is its sweep
cell (RUN/sweep-cell.json or the manifest), else the folder above ``seed-N``, else the run.

Every number in eval.json is a metric except the reference and bookkeeping fields
(:data:`NOT_METRICS`), so keys added to eval.json later (per-value accuracy, accuracy
under uniform conditions...) are columns without a change here, for any attribute names.
Nested keys are dotted: ``accuracy.hair``, ``acc_per_value.hair.red``,
``acc_per_value.vendor.google``. The printed table and report.md show the headline columns
(:func:`headline`: accuracy drawn as in the corpus and uniform, FID, KID, precision, recall,
within-condition ``diversity`` (1.0 = as varied as the real images, ~0 = one image per
condition) and ``fid_div``; per-value accuracy as a second table, one row per attribute
value); ``--all``
shows every column. The "real images" row holds the real-data references (classifier
accuracy on real images, real-vs-real FID...) under the same column names.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ganscale.errors import GanscaleError
from ganscale.sweep.local import CELL_FILE
from ganscale.sweep.spec import MANIFEST, read_manifest

NOT_METRICS = {
    "format", "run", "generator", "n", "image_size", "seed", "corpus", "classifier", "real_accuracy",
    "confusion_matrices", "confusion_counts", "inception", "real_vs_real", "real_cache", "seconds",
}  # fmt: skip
REFERENCES = {"real_accuracy": "accuracy", "real_vs_real": ""}
"""eval.json's reference blocks -> the metric prefix their numbers stand beside."""
_SEED_DIR = re.compile(r"seed-\d+")
NOT_HEADLINE = {"truncation_psi", "diversity_conditions"}
"""Top-level numbers of eval.json that describe the evaluation rather than score the generator."""


@dataclass
class Group:
    name: str
    runs: list[Path]
    metrics: dict[str, list[float]]
    """Metric -> one value per run that has it."""

    def stats(self, key: str) -> tuple[float, float, float] | None:
        values = self.metrics.get(key)
        if not values:
            return None
        return sum(values) / len(values), min(values), max(values)


def flatten(obj: Any, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a JSON object as dotted keys (bools and nulls left out)."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out |= flatten(v, f"{prefix}{k}.")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and math.isfinite(obj):
        out[prefix.rstrip(".")] = float(obj)
    return out


def eval_metrics(result: dict[str, Any]) -> dict[str, float]:
    return flatten({k: v for k, v in result.items() if k not in NOT_METRICS})


def reference_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The real-data numbers of one eval.json, under the metric names they are references for."""
    out: dict[str, float] = {}
    for block, prefix in REFERENCES.items():
        values = result.get(block) or {}
        out |= flatten({k: v for k, v in values.items() if k != "n"}, f"{prefix}." if prefix else "")
    return out


def _group_name(run: Path, root: Path | None) -> str:
    info = run / CELL_FILE
    if info.is_file():
        try:
            return str(json.loads(info.read_text())["name"])
        except (ValueError, KeyError):
            pass
    if _SEED_DIR.fullmatch(run.name):
        run = run.parent
    if root is not None and run != root and run.is_relative_to(root):
        return str(run.relative_to(root))
    return run.name


def find_runs(paths: list[Path]) -> list[tuple[str, Path]]:
    """(group name, run folder) of every evaluated run under ``paths``, in a stable order."""
    found: list[tuple[str, Path]] = []
    for path in paths:
        if (path / MANIFEST).is_file():
            _, cells = read_manifest(path / MANIFEST)
            found += [(c.name, path / c.folder) for c in cells if (path / c.folder / "eval.json").is_file()]
        elif (path / "eval.json").is_file():
            found.append((_group_name(path, None), path))
        elif path.is_dir():
            found += [(_group_name(p.parent, path), p.parent) for p in sorted(path.rglob("eval.json"))]
        else:
            raise GanscaleError(f"{path}: not a run or sweep folder")
    if not found:
        raise GanscaleError(f"no eval.json under {', '.join(map(str, paths))}; run `ganscale eval RUN` first")
    return found


def collect(paths: list[Path]) -> tuple[list[Group], dict[str, float], list[str]]:
    """(groups in first-seen order, the real-data references, metric columns in first-seen order)."""
    groups: dict[str, Group] = {}
    columns: dict[str, None] = {}
    reference: dict[str, float] = {}
    seen: set[Path] = set()
    for name, run in find_runs(paths):
        if run.resolve() in seen:
            continue
        seen.add(run.resolve())
        result = json.loads((run / "eval.json").read_text())
        group = groups.setdefault(name, Group(name, [], {}))
        group.runs.append(run)
        for k, v in eval_metrics(result).items():
            columns.setdefault(k, None)
            group.metrics.setdefault(k, []).append(v)
        if not reference:
            reference = reference_metrics(result)
    return list(groups.values()), reference, list(columns)


def is_accuracy(key: str) -> bool:
    return key.startswith(("accuracy", "acc_uniform", "acc_per_value.")) and not key.endswith("_std")


def fmt(key: str, value: float) -> str:
    """Accuracies as percentages (1 decimal), everything else with 4 significant digits."""
    if is_accuracy(key):
        return f"{value * 100:.1f}%"
    return f"{value:.4g}"


def headline(columns: list[str]) -> list[str]:
    """The columns a reader compares first: accuracy.X and acc_uniform.X, then the top-level
    metrics (FID, KID, precision, recall, diversity, fid_div; no *_std, nothing of
    :data:`NOT_HEADLINE`)."""
    acc = [c for c in columns if c.count(".") == 1 and c.startswith(("accuracy.", "acc_uniform."))]
    top = [c for c in columns if "." not in c and not c.endswith("_std") and c not in NOT_HEADLINE]
    return acc + top


def per_value_rows(groups: list[Group]) -> list[list[str]]:
    """Accuracy per attribute value (acc_per_value.ATTR.VALUE, whatever the run's attributes:
    hair colours, vendors, categories): one row per attribute value, one column per cell; empty
    when no run has it. A value may hold dots itself (``acc_per_value.version.v1.5``)."""
    keys: dict[str, None] = {}
    for g in groups:
        keys |= dict.fromkeys(k for k in g.metrics if k.startswith("acc_per_value.") and k.count(".") >= 2)
    if not keys:
        return []
    out = [["attribute value", *(g.name for g in groups)]]
    out += [[k.removeprefix("acc_per_value."), *(cell_text(g, k) for g in groups)] for k in keys]
    return out


def cell_text(group: Group, key: str) -> str:
    """``mean (min..max)`` over the group's runs; the value alone for one run; "" when absent."""
    s = group.stats(key)
    if s is None:
        return ""
    mean, lo, hi = s
    if len(group.metrics[key]) == 1:
        return fmt(key, mean)
    return f"{fmt(key, mean)} ({fmt(key, lo)}..{fmt(key, hi)})"


def rows(groups: list[Group], reference: dict[str, float], columns: list[str]) -> list[list[str]]:
    """Header, then one row per group, then the real-data row (when eval.json had one)."""
    out = [["cell", "runs", *columns]]
    out += [[g.name, str(len(g.runs)), *(cell_text(g, c) for c in columns)] for g in groups]
    if any(c in reference for c in columns):
        out.append(["real images", "", *(fmt(c, reference[c]) if c in reference else "" for c in columns)])
    return out


def markdown(table: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(table[0]), "|" + "---|" * len(table[0]), *map(line, table[1:])]) + "\n"


def plot_columns(columns: list[str]) -> list[str]:
    """Headline metrics for the plot: top-level ones and accuracy.X (no *_std, no deeper keys)."""
    keep = [c for c in columns if c.count(".") == 0 or (c.startswith("accuracy.") and c.count(".") == 1)]
    return [c for c in keep if not c.endswith("_std") and c not in NOT_HEADLINE]


def plot(groups: list[Group], columns: list[str], path: Path) -> Path:
    """One panel per headline metric: a bar per cell at the mean, whiskers min..max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = plot_columns(columns) or columns[:6]
    ncol = min(3, max(len(keys), 1))
    nrow = max(1, math.ceil(len(keys) / ncol))
    width = max(4.0, 0.35 * len(groups) + 1.5)
    fig, axes = plt.subplots(nrow, ncol, figsize=(width * ncol, 3.2 * nrow), squeeze=False)
    names = [g.name for g in groups]
    for ax, key in zip(axes.flat, keys, strict=False):
        stats = [g.stats(key) or (math.nan, math.nan, math.nan) for g in groups]
        means = [s[0] for s in stats]
        err = [[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]]
        ax.bar(range(len(groups)), means, yerr=err, capsize=3, color="#4C72B0")
        ax.set_title(key, fontsize=9)
        ax.set_xticks(range(len(groups)), names, rotation=60, ha="right", fontsize=6)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def print_table(table: list[list[str]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for i, h in enumerate(table[0]):
        t.add_column(h, overflow="fold", no_wrap=i == 0)
    for r in table[1:]:
        t.add_row(*r)
    Console(width=min(240, max(120, 18 * len(table[0])))).print(t)


def report(
    paths: list[Path], out: Path | None = None, show: bool = True, every_column: bool = False
) -> tuple[Path, Path]:
    """Print the table, write it as Markdown (``out``, default report.md in the one folder
    given, else in the current folder) and the plot beside it; (markdown, png). Headline
    columns and a per-value table, or every metric column with ``every_column``."""
    groups, reference, columns = collect(paths)
    shown = columns if every_column else (headline(columns) or columns)
    table = rows(groups, reference, shown)
    colours = [] if every_column else per_value_rows(groups)
    if out is None:
        out = (paths[0] if len(paths) == 1 and paths[0].is_dir() else Path(".")) / "report.md"
    runs = sum(len(g.runs) for g in groups)
    note = f"\n{runs} run(s) in {len(groups)} cell(s); mean (min..max) over seeds.\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = f"\nAccuracy per attribute value (uniform conditions):\n\n{markdown(colours)}" if colours else ""
    out.write_text(markdown(table) + note + extra)
    png = plot(groups, columns, out.with_suffix(".png"))
    if show:
        print_table(table, f"{runs} run(s), {len(groups)} cell(s)")
        if colours:
            print_table(colours, "accuracy per attribute value (uniform conditions)")
    return out, png
