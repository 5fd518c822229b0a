"""The study's sweep: class-loss weight lambda x discriminator head x architecture, at a
fixed step budget, judged by attribute accuracy and classifier-space FID side by side.

    python benchmarks/lambda_sweep.py                              # the full grid (24 runs)
    python benchmarks/lambda_sweep.py --archs dcgan --steps 600    # a subset
    python benchmarks/lambda_sweep.py --steps 20 --n 200 --lambdas 1 --heads shared,projection \\
        --archs dcgan --out runs/sweep-smoke                     # a smoke run

Each cell trains `configs/quickstart.yaml` (32 px, the built-in corpus) with
``--set loss.class_weight=L --set model.head=H --set model.arch=A --set train.max_steps=S`` in a
subprocess, then runs `ganscale eval` on it. Finished cells (with eval.json) are skipped, so
an interrupted sweep continues where it stopped. Writes OUT/results.md (the table),
OUT/results.json and OUT/grids.png (one sample grid per cell: rows arch x head, columns lambda).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAMBDAS = ["1", "2", "5"]
HEADS = ["shared", "separate", "classifier", "projection"]
ARCHS = ["dcgan", "resnet"]


def cell_name(arch: str, head: str, lam: str) -> str:
    return f"{arch}-{head}-lambda{lam}"


def run_cell(args: argparse.Namespace, arch: str, head: str, lam: str) -> dict:
    from ganscale.evaluation.evaluate import evaluate_run

    run = args.out / cell_name(arch, head, lam)
    done = run / "eval.json"
    info_path = run / "sweep.json"
    if done.is_file() and info_path.is_file():
        print(f"{run.name}: done already, reading {done}", flush=True)
        return json.loads(info_path.read_text()) | {"eval": json.loads(done.read_text())}
    overrides = [
        f"loss.class_weight={lam}", f"model.head={head}", f"model.arch={arch}",
        f"train.max_steps={args.steps}", "log.tracker=none", "log.progress=false",
        f"checkpoint.every={args.steps}", *args.overrides,
    ]  # fmt: skip
    if arch == "resnet":
        overrides.append(f"model.g_blocks={args.resnet_blocks}")
    cmd = [sys.executable, "-m", "ganscale", "train", str(args.config), "--out", str(run)]
    for o in overrides:
        cmd += ["--set", o]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)  # own group: see below
    proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # a data-loader worker was seen to outlive the trainer
    if proc.returncode:
        raise SystemExit(f"{run.name}: training failed with exit code {proc.returncode}")
    train_s = time.perf_counter() - t0
    result = evaluate_run(run, n=args.n, out=done)
    info = {
        "arch": arch,
        "head": head,
        "lambda": float(lam),
        "steps": args.steps,
        "train_seconds": train_s,
        "command": " ".join(cmd[1:]),
    }
    info_path.write_text(json.dumps(info, indent=1))
    return info | {"eval": result}


def table(rows: list[dict]) -> str:
    lines = [
        "| arch | head | lambda | hair acc | eyes acc | joint acc | FID (classifier) | KID (classifier) "
        "| precision | recall | train min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e = r["eval"]
        acc = e["accuracy"] or {}
        lines.append(
            f"| {r['arch']} | {r['head']} | {r['lambda']:g} | {acc.get('hair', float('nan')):.1%} "
            f"| {acc.get('eyes', float('nan')):.1%} | {acc.get('joint', float('nan')):.1%} "
            f"| {e['fid_classifier']:.3f} | {e['kid_classifier']:.4f} | {e['precision_classifier']:.3f} "
            f"| {e['recall_classifier']:.3f} | {r['train_seconds'] / 60:.1f} |"
        )
    if rows:
        e = rows[0]["eval"]
        floor, real = e["real_vs_real"], e["real_accuracy"]
        lines.append(
            f"| real images | | | {real['hair']:.1%} | {real['eyes']:.1%} | {real['joint']:.1%} "
            f"| {floor['fid_classifier']:.3f} | {floor['kid_classifier']:.4f} "
            f"| {floor['precision_classifier']:.3f} | {floor['recall_classifier']:.3f} | |"
        )
    return "\n".join(lines)


def grids_png(rows: list[dict], out: Path, lambdas: list[str]) -> Path:
    """One labelled sample grid per cell: rows arch x head, columns lambda."""
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    from ganscale.outputs.export import load_generator
    from ganscale.outputs.images import make_grid, save_png
    from ganscale.outputs.sampling import generate
    from ganscale.train.trainer import STUDY_CONDITIONS

    cells: dict[tuple[str, str, float], np.ndarray] = {}
    for r in rows:
        G, meta = load_generator(Path(r["eval"]["run"]), "cpu")
        with torch.no_grad():
            images = generate(G, meta, STUDY_CONDITIONS, 4, seed=0, device=torch.device("cpu"))
        cells[(r["arch"], r["head"], r["lambda"])] = make_grid(images, ncol=4)
    keys = sorted({(a, h) for a, h, _ in cells}, key=lambda k: (ARCHS.index(k[0]), HEADS.index(k[1])))
    lams = [float(x) for x in lambdas]
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
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=REPO / "configs/quickstart.yaml")
    p.add_argument("--out", type=Path, default=REPO / "runs/lambda-sweep")
    p.add_argument("--steps", type=int, default=600, help="Fixed budget: G steps per cell.")
    p.add_argument("--n", type=int, default=2000, help="Generated images per evaluation.")
    p.add_argument("--lambdas", default=",".join(LAMBDAS))
    p.add_argument("--heads", default=",".join(HEADS))
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--resnet-blocks", type=int, default=4, help="model.g_blocks for the ResNet cells.")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="Extra config override.")
    args = p.parse_args(argv)
    lambdas, heads, archs = (s.split(",") for s in (args.lambdas, args.heads, args.archs))
    for h in heads:
        if h not in HEADS:
            p.error(f"--heads: {h!r} is not one of {', '.join(HEADS)}")
    for a in archs:
        if a not in ARCHS:
            p.error(f"--archs: {a!r} is not one of {', '.join(ARCHS)}")
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    rows = [run_cell(args, a, h, lam) for a in archs for h in heads for lam in lambdas]
    text = table(rows)
    command = "python benchmarks/lambda_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.out / "results.md").write_text(
        f"{text}\n\nMade by: `{command}` ({args.steps} steps per cell, "
        f"n={args.n}); {(time.perf_counter() - t0) / 3600:.2f} h\n"
    )
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    png = grids_png(rows, args.out / "grids.png", lambdas)
    print()
    print(text)
    print(f"\nwrote {args.out / 'results.md'}, {args.out / 'results.json'}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
