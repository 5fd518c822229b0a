"""The study's sweep (lambda x D head x architecture) on top of `ganscale sweep`, plus one
figure `ganscale report` does not draw: a labelled sample grid per cell.

    python benchmarks/lambda_sweep.py                              # the full grid (24 cells x 3 seeds)
    python benchmarks/lambda_sweep.py --archs dcgan --steps 600    # a subset
    python benchmarks/lambda_sweep.py --steps 20 --n 200 --lambdas 1 --heads shared,projection \\
        --archs dcgan --out runs/sweep-smoke                     # a smoke run

The grid is configs/sweeps/lambda.yaml (`ganscale sweep configs/sweeps/lambda.yaml` runs the
same cells; `--slurm` as a job array). This script picks the subset, runs it with the sweep's
local runner (finished cells skipped, unfinished ones resumed), writes `ganscale report`'s
OUT/report.md and OUT/report.png, and OUT/grids.png (rows arch x head, columns lambda).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "configs" / "sweeps" / "lambda.yaml"
LAMBDAS = ["1", "2", "5"]
HEADS = ["shared", "separate", "classifier", "projection"]
ARCHS = ["dcgan", "resnet"]


def axes(overrides: tuple[str, ...]) -> tuple[str, str, float]:
    """(arch, head, lambda) of a cell."""
    d = dict(o.split("=", 1) for o in overrides)
    return d["model.arch"], d["model.head"], float(d["loss.class_weight"])


def grids_png(runs: list[tuple[tuple[str, str, float], Path]], out: Path) -> Path:
    """One labelled sample grid per evaluated cell: rows arch x head, columns lambda."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    from ganscale.outputs.export import load_generator
    from ganscale.outputs.images import make_grid, save_png
    from ganscale.outputs.sampling import generate
    from ganscale.train.trainer import STUDY_CONDITIONS

    cells: dict[tuple[str, str, float], np.ndarray] = {}
    for key, run in runs:
        G, meta = load_generator(run, "cpu")
        with torch.no_grad():
            images = generate(G, meta, STUDY_CONDITIONS, 4, seed=0, device=torch.device("cpu"))
        cells[key] = make_grid(images, ncol=4)
    keys = sorted({(a, h) for a, h, _ in cells}, key=lambda k: (ARCHS.index(k[0]), HEADS.index(k[1])))
    lams = sorted({lam for _, _, lam in cells})
    h, w = next(iter(cells.values())).shape[:2]
    label_w, label_h = 140, 20
    canvas = Image.new("RGB", (label_w + w * len(lams), label_h + h * len(keys)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, lam in enumerate(lams):
        draw.text((label_w + j * w + 4, 4), f"lambda {lam:g}", fill="black")
    for i, (arch, head) in enumerate(keys):
        draw.text((4, label_h + i * h + h // 2 - 6), f"{arch} / {head}", fill="black")
        for j, lam in enumerate(lams):
            if (arch, head, lam) in cells:
                canvas.paste(Image.fromarray(cells[(arch, head, lam)]), (label_w + j * w, label_h + i * h))
    return save_png(np.asarray(canvas), out)


def main(argv: list[str] | None = None) -> int:
    from ganscale.sweep.local import run_local
    from ganscale.sweep.report import report
    from ganscale.sweep.spec import load_spec, write_manifest

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="Sweep folder (default: the spec's).")
    p.add_argument("--steps", type=int, default=0, help="G steps per cell (0: the spec's 600).")
    p.add_argument("--n", type=int, default=0, help="Generated images per evaluation (0: the spec's).")
    p.add_argument("--lambdas", default=",".join(LAMBDAS))
    p.add_argument("--heads", default=",".join(HEADS))
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--set", dest="overrides", action="append", default=[], help="Extra config override.")
    args = p.parse_args(argv)
    lambdas = {float(x) for x in args.lambdas.split(",")}
    heads, archs = set(args.heads.split(",")), set(args.archs.split(","))
    for name, chosen, valid in (("--heads", heads, HEADS), ("--archs", archs, ARCHS)):
        if chosen - set(valid):
            p.error(f"{name}: {', '.join(sorted(chosen - set(valid)))} not in {', '.join(valid)}")

    extra = [*args.overrides]
    if args.steps:
        extra += [f"train.max_steps={args.steps}", f"checkpoint.every={args.steps}"]
    spec = load_spec(SPEC, extra)
    if args.out is not None:
        spec.out = args.out
    if args.n:
        spec.eval_n = args.n
    every = spec.cells()
    cells = [c for c in every if (a := axes(c.overrides))[0] in archs and a[1] in heads and a[2] in lambdas]
    write_manifest(spec, every)
    run_local(spec, cells)
    md, png = report([spec.out])
    evaluated = [(axes(c.overrides), spec.out / c.folder) for c in every]
    grids = grids_png([(k, r) for k, r in evaluated if (r / "eval.json").is_file()], spec.out / "grids.png")
    print(f"wrote {md}, {png}, {grids}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
