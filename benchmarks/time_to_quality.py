"""Time to quality against the canonical loop: the quick start (configs/quickstart.yaml) and
pytorch/examples' DCGAN (benchmarks/plain_dcgan.py, written independently for this comparison)
trained on the same packed corpus for the same wall-clock budget on this machine, one after the
other, then judged by the same FID.

    PYTHONPATH=. python benchmarks/time_to_quality.py --corpus runs/corpora/emoji32   # 3 seeds, 4 min
    PYTHONPATH=. python benchmarks/time_to_quality.py --corpus C --minutes 0.3 --seeds 0 --n 200 --overwrite

(runs/corpora/emoji32: configs/sweeps/real-levers.yaml says how to build and pack it.)

Per seed:

1. ``ganscale train CONFIG --set data.source=shards --set data.path=CORPUS --set seed=S
   --set train.max_steps=1000000 ...``, started through ganscale's sweep runner
   (:func:`ganscale.sweep.local.run_child`): at the budget, counted from launch, the trainer gets
   SIGUSR1, checkpoints, exports and stops. What it does inside the budget is the config's own
   (the quick start evaluates at every checkpoint to keep RUN/best/: that time is in its budget).
2. ``benchmarks/plain_dcgan.py --seconds BUDGET --seed S`` on the same corpus at the same size,
   in the same environment (threads: PyTorch's default, or OMP_NUM_THREADS, or --threads for
   the plain loop); its budget counts from its own start, corpus reading included. It saves its
   generator at 1/4, 1/2, 3/4 and the end of the budget.
3. The judge, the same for both: the corpus's attribute classifier's feature space
   (:mod:`ganscale.evaluation.scoring`, the ``fid_classifier`` of ``ganscale eval``), n generated
   images against the corpus's real reference (n real images). The quick start is judged on the
   generator ``ganscale eval RUN`` judges (RUN/best/ when the run kept one, else the final
   export; the final export's FID is reported beside it when they differ), with conditions drawn
   from the corpus's label distribution (:func:`draw_conditions`, eval seed 0, z seed 1 as in
   ``ganscale eval``); the plain generator's images (z ~ N(0, 1), seed 1) go through the same
   classifier, at each of its 4 snapshots, so the table says when, if ever within the budget, it
   reaches the quick start's FID. The plain G is sampled with BatchNorm in training mode (batch
   statistics), as pytorch/examples samples it (its G is never put in eval mode);
   ``--plain-bn running`` samples with the running statistics instead.

The classifier and the real reference are made before the first clock starts, so neither run
pays for the judge. Prints a table per seed and mean (min..max) over the seeds, writes
OUT/time-to-quality.json and OUT/side-by-side.png (per seed a band: left the quick start's grid,
one row per condition drawn from the corpus; right the plain DCGAN's grid, as many images), and
prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
PLAIN = Path(__file__).resolve().with_name("plain_dcgan.py")
EVAL_SEED = 0  # as `ganscale eval`: conditions from EVAL_SEED, z from EVAL_SEED + 1
GRID_ROWS, GRID_COLS = 8, 8
CELL = 64
"""Grid images are enlarged (nearest neighbour) to at least this many px."""
PAD, GAP, HEADER = 2, 16, 16
"""Grid padding (ganscale's sample grids'), the gap between the two grids, the text line above."""
PLAIN_FRACTIONS = (1, 2, 3, 4)


def panel_width(size: int, cols: int = GRID_COLS) -> int:
    """Width of one grid of ``cols`` images of ``size`` px, as drawn (enlarged to ``CELL``)."""
    cell = size * max(1, math.ceil(CELL / size))
    return cols * (cell + PAD) + PAD


class PlainAsGanscale(nn.Module):
    """The plain generator behind ganscale's G(z, y) interface (y ignored, z -> [B, nz, 1, 1]).

    ``batch_stats``: keep BatchNorm in training mode whatever ``eval()`` asks (pytorch/examples
    samples its G so); the running statistics change while sampling, on this loaded copy only."""

    def __init__(self, G: nn.Module, batch_stats: bool) -> None:
        super().__init__()
        self.G, self.batch_stats = G, batch_stats

    def train(self, mode: bool = True) -> PlainAsGanscale:
        super().train(mode)
        if self.batch_stats:
            self.G.train(True)
        return self

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.G(z.view(len(z), -1, 1, 1))


def _plain_module() -> Any:
    sys.path.insert(0, str(PLAIN.parent))
    try:
        import plain_dcgan
    finally:
        sys.path.remove(str(PLAIN.parent))
    return plain_dcgan


# --------------------------------------------------------------------------- runs


def ganscale_train_command(config: Path, corpus: Path, out: Path, seed: int, sets: list[str]) -> list[str]:
    """`ganscale train` of the config on the corpus, stopped only by the budget."""
    from ganscale.sweep.local import ganscale_prefix

    cmd = [*ganscale_prefix(), "train", str(config), "--out", str(out)]
    base = [
        "data.source=shards",
        f"data.path={corpus}",
        f"seed={seed}",
        "log.tracker=none",
        "log.progress=false",
        "train.max_steps=1000000",
    ]
    for s in [*base, *sets]:
        cmd += ["--set", s]
    return cmd


def plain_command(args: argparse.Namespace, size: int, seed: int, out: Path) -> list[str]:
    cmd = [
        sys.executable, str(PLAIN), "--corpus", str(args.corpus), "--out", str(out),
        "--seconds", f"{args.minutes * 60:g}", "--seed", str(seed), "--size", str(size),
    ]  # fmt: skip
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return [*cmd, *shlex.split(args.plain_args)]


def train_both(args: argparse.Namespace, size: int, seed: int, fwd: Any) -> dict[str, Any]:
    """The quick start, then the plain loop, each for the budget; what each left."""
    from ganscale.run_layout import latest_checkpoint, read_state
    from ganscale.sweep.local import run_child

    run = args.out / "ganscale" / f"seed-{seed}"
    plain = args.out / "plain" / f"seed-{seed}"
    cmd = ganscale_train_command(args.config, args.corpus, run, seed, args.overrides)
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    code, budget = run_child(cmd, fwd, args.minutes)
    g_seconds = time.perf_counter() - t0
    ref = latest_checkpoint(run) if run.is_dir() else None
    if ref is None or (code != 0 and not budget):
        raise SystemExit(f"ganscale train (seed {seed}) failed with exit code {code}; see its output above")
    state = read_state(ref.path)
    if fwd.received is not None:
        raise SystemExit(f"signal {fwd.received}: stopped")

    cmd = plain_command(args, size, seed, plain)
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    code, _ = run_child(cmd, fwd, args.minutes + 2.0)  # its own clock stops it; this is a safety net
    p_seconds = time.perf_counter() - t0
    if code != 0 or not (plain / "plain.json").is_file():
        raise SystemExit(f"plain_dcgan.py (seed {seed}) failed with exit code {code}; see its output above")
    if fwd.received is not None:
        raise SystemExit(f"signal {fwd.received}: stopped")
    return {
        "seed": seed,
        "ganscale_run": str(run),
        "ganscale_steps": int(state["step"]),
        "ganscale_images_seen": int(state["images_seen"]),
        "ganscale_stopped_by_budget": budget,
        "ganscale_wall_s": round(g_seconds, 1),
        "plain_out": str(plain),
        "plain_wall_s": round(p_seconds, 1),
    }


# --------------------------------------------------------------------------- judging


def judge_ganscale(run: Path, judge: dict[str, Any], n: int, device: torch.device) -> dict[str, Any]:
    """FID (and the other classifier-space numbers) of the generator `ganscale eval RUN` judges,
    and of the final export when that is another file; its side-by-side panel."""
    from ganscale.evaluation.scoring import draw_conditions, generated_features, score
    from ganscale.outputs.export import WEIGHTS, find_export, load_generator
    from ganscale.outputs.latents import draw_z

    clf, ref = judge["clf"], judge["ref"]
    weights, _ = find_export(run)
    out: dict[str, Any] = {"ganscale_generator": str(weights)}
    panel = None
    for key, path in (("", run), ("_final", run / WEIGHTS)):
        if key and (not path.is_file() or path == weights):
            continue
        G, meta = load_generator(path, device)
        attributes = meta["attributes"]
        if attributes and clf.attributes != attributes:
            raise SystemExit(f"{clf.path}: the classifier's attributes are not G's; wrong --corpus?")
        num_classes = [len(v) for v in attributes.values()]
        requested = draw_conditions(ref.labels, n, num_classes, EVAL_SEED) if attributes else None
        feats, pred, _, _ = generated_features(G, meta, requested, n, EVAL_SEED + 1, device, clf)
        metrics = score(feats, pred, requested, ref, attributes)
        out[f"fid_ganscale{key}"] = metrics["fid_classifier"]
        if not key:
            out["ganscale_metrics"] = {k: v for k, v in metrics.items() if k.endswith("_classifier")}
            out["ganscale_accuracy"] = {k: v for k, v in metrics.items() if k.startswith("acc")}
            # the panel: GRID_ROWS conditions drawn from the corpus, GRID_COLS z each
            rows = draw_conditions(ref.labels, GRID_ROWS, num_classes, EVAL_SEED + 2) if attributes else None
            y = rows.repeat_interleave(GRID_COLS, 0).to(device) if rows is not None else None
            z = torch.from_numpy(draw_z(GRID_ROWS * GRID_COLS, meta, EVAL_SEED + 3)).to(device)
            with torch.no_grad():
                panel = G(z, y).float().clamp(-1, 1).cpu()
            out["grid_conditions"] = (
                [
                    {a: attributes[a][int(v)] for a, v in zip(attributes, r, strict=True)}
                    for r in rows.tolist()
                ]
                if rows is not None
                else None
            )
    out["panel"] = panel
    return out


def judge_plain(folder: Path, judge: dict[str, Any], n: int, device: torch.device, bn: str) -> dict[str, Any]:
    """FID of each plain snapshot (1/4 .. 4/4 of the budget) and the end snapshot's panel."""
    from ganscale.evaluation.scoring import generated_features, score
    from ganscale.outputs.latents import draw_z

    plain_dcgan = _plain_module()
    clf, ref = judge["clf"], judge["ref"]
    snapshots, panel, last = [], None, {}
    for k in PLAIN_FRACTIONS:
        snap = folder / f"snapshot-{k}of4"
        if not (snap / "snapshot.json").is_file():
            continue  # a run stopped early by a signal has only its end snapshot
        G0, info = plain_dcgan.load_snapshot(snap, device)
        G = PlainAsGanscale(G0, batch_stats=bn == "batch")
        meta = {"z_dim": info["nz"], "z_sigma": 1.0}
        feats, pred, _, _ = generated_features(G, meta, None, n, EVAL_SEED + 1, device, clf)
        metrics = score(feats, pred, None, ref, {})
        snapshots.append(
            {
                "fraction": k / 4,
                "elapsed_s": info["elapsed_s"],
                "steps": info["steps"],
                "fid": metrics["fid_classifier"],
            }
        )
        last = {"info": info, "metrics": metrics}
        if k == 4:
            z = torch.from_numpy(draw_z(GRID_ROWS * GRID_COLS, meta, EVAL_SEED + 3)).to(device)
            G.eval()
            with torch.no_grad():
                panel = G(z).float().clamp(-1, 1).cpu()
    if not last:
        raise SystemExit(f"{folder}: no snapshot to judge")
    return {
        "plain_steps": last["info"]["steps"],
        "plain_images_seen": last["info"]["images_seen"],
        "plain_load_s": last["info"]["load_s"],
        "plain_elapsed_s": last["info"]["elapsed_s"],
        "fid_plain": last["metrics"]["fid_classifier"],
        "plain_metrics": {k: v for k, v in last["metrics"].items() if k.endswith("_classifier")},
        "plain_snapshots": snapshots,
        "panel": panel,
    }


# --------------------------------------------------------------------------- outputs


def side_by_side(bands: list[tuple[str, Tensor, str, Tensor]], size: int, path: Path) -> tuple[int, int]:
    """Per band (one seed): a text line, then the left grid | the right grid. (width, height)."""
    from PIL import Image, ImageDraw

    from ganscale.outputs.images import tile, to_uint8, upscale

    width = 2 * panel_width(size) + GAP
    pieces = []
    for left_text, left, right_text, right in bands:
        grids = [tile(upscale(to_uint8(x), CELL), GRID_COLS, PAD) for x in (left, right)]
        h = max(g.shape[0] for g in grids)
        band = Image.new("RGB", (width, HEADER + h), "white")
        draw = ImageDraw.Draw(band)
        for i, (text, g) in enumerate(zip((left_text, right_text), grids, strict=True)):
            x0 = i * (panel_width(size) + GAP)
            draw.text((x0 + PAD, 2), text, fill="black")
            band.paste(Image.fromarray(g), (x0, HEADER))
        pieces.append(band)
    canvas = Image.new("RGB", (width, sum(p.height for p in pieces)), "white")
    y = 0
    for p in pieces:
        canvas.paste(p, (0, y))
        y += p.height
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return canvas.size


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def fmt_spread(s: dict[str, float], f: str = ".2f") -> str:
    return f"{s['mean']:{f}} ({s['min']:{f}}..{s['max']:{f}})"


def reaches(snapshots: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first plain snapshot whose FID is at or below ``target``, None if none is."""
    return next((s for s in snapshots if s["fid"] <= target), None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, required=True, help="Packed corpus (`ganscale data pack`).")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.yaml")
    p.add_argument("--minutes", type=float, default=4.0, help="Wall-clock budget of each run.")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("runs/time-to-quality"))
    p.add_argument("--n", type=int, default=2000, help="Generated (and real) images for each FID.")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="Extra ganscale override.")
    p.add_argument("--plain-args", default="", help='Extra plain_dcgan.py flags, e.g. "--ngf 32 --ndf 32".')
    p.add_argument("--threads", type=int, default=0, help="plain_dcgan.py --threads (0: PyTorch's default).")
    p.add_argument("--plain-bn", choices=("batch", "running"), default="batch", help="Plain G's BatchNorm.")
    p.add_argument("--device", default=None, help="Where the judge runs (default: CUDA when there is one).")
    p.add_argument("--overwrite", action="store_true", help="Replace --out if it holds anything.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from ganscale.config import load_config
    from ganscale.evaluation.classifier import ensure_classifier
    from ganscale.evaluation.evaluate import pick_device
    from ganscale.evaluation.scoring import real_reference
    from ganscale.sweep.local import Forwarder

    args = parse_args(argv)
    # everything checked before the first side effect
    if not (args.corpus / "dataset.json").is_file():
        raise SystemExit(f"--corpus {args.corpus}: no dataset.json (pack it with `ganscale data pack`)")
    if args.minutes <= 0 or args.n < 16:
        raise SystemExit("--minutes must be > 0 and --n >= 16")
    cfg = load_config(args.config, ["data.source=shards", f"data.path={args.corpus}", *args.overrides])
    size = cfg.model.image_size
    if size not in (32, 64):
        raise SystemExit(f"model.image_size {size}: the plain DCGAN is built for 32 or 64 px")
    plain_dcgan = _plain_module()
    plain_dcgan.parse_args(
        ["--corpus", "x", "--out", "x", "--seconds", "1", *shlex.split(args.plain_args)]
    )  # its flags, refused now rather than after the first ganscale run
    if args.out.exists() and any(args.out.iterdir()):
        if not args.overwrite:
            raise SystemExit(f"--out {args.out} is not empty; pass --overwrite to replace it")
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    device = pick_device(args.device)

    # the judge, before any clock starts: the classifier (trained once per corpus) and the reals
    clf = ensure_classifier(args.corpus, device)
    judge = {"clf": clf, "ref": real_reference(args.corpus, clf, size, args.n)}
    budget_s = args.minutes * 60
    print(f"budget {budget_s:g} s per run; corpus {args.corpus}; n {args.n}; seeds {args.seeds}", flush=True)

    rows, bands = [], []
    fwd = Forwarder()
    with fwd.installed():
        for seed in args.seeds:
            row = train_both(args, size, seed, fwd)
            g = judge_ganscale(Path(row["ganscale_run"]), judge, args.n, device)
            pl = judge_plain(Path(row["plain_out"]), judge, args.n, device, args.plain_bn)
            bands.append(
                (
                    f"seed {seed}: ganscale {args.config.stem}, FID {g['fid_ganscale']:.2f}",
                    g.pop("panel"),
                    f"plain DCGAN, FID {pl['fid_plain']:.2f}",
                    pl.pop("panel"),
                )
            )
            row |= g | pl
            row["ratio"] = row["fid_plain"] / row["fid_ganscale"]
            hit = reaches(row["plain_snapshots"], row["fid_ganscale"])
            row["plain_reaches_ganscale_fid_at"] = hit and {k: hit[k] for k in ("fraction", "elapsed_s")}
            rows.append(row)
    width, height = side_by_side(bands, size, args.out / "side-by-side.png")

    print()
    print(f"Time to quality: {budget_s:g} s per run, classifier-space FID (n {args.n}), {args.corpus}")
    print("| seed | steps ganscale | steps plain | FID ganscale | FID plain | ratio plain/ganscale "
          "| plain FID at 1/4, 1/2, 3/4, 1 of the budget | plain reaches ganscale's FID |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        hit = r["plain_reaches_ganscale_fid_at"]
        at = f"at {hit['fraction']:g} ({hit['elapsed_s']:.0f} s)" if hit else "not within the budget"
        trail = ", ".join(f"{s['fid']:.2f}" for s in r["plain_snapshots"])
        print(
            f"| {r['seed']} | {r['ganscale_steps']} | {r['plain_steps']} | {r['fid_ganscale']:.2f} | "
            f"{r['fid_plain']:.2f} | {r['ratio']:.2f} | {trail} | {at} |"
        )
    summary = {
        key: spread([float(r[key]) for r in rows])
        for key in ("ganscale_steps", "plain_steps", "fid_ganscale", "fid_plain", "ratio")
    }
    reached = sum(r["plain_reaches_ganscale_fid_at"] is not None for r in rows)
    print(
        f"| mean (min..max) | {fmt_spread(summary['ganscale_steps'], '.0f')} | "
        f"{fmt_spread(summary['plain_steps'], '.0f')} | {fmt_spread(summary['fid_ganscale'])} | "
        f"{fmt_spread(summary['fid_plain'])} | {fmt_spread(summary['ratio'])} | | "
        f"{reached} of {len(rows)} seeds |"
    )
    print(f"side by side: {args.out / 'side-by-side.png'} ({width} x {height})")
    result = {
        "budget_s": budget_s,
        "corpus": str(args.corpus),
        "config": str(args.config),
        "overrides": args.overrides,
        "plain_args": args.plain_args,
        "plain_bn": args.plain_bn,
        "n": args.n,
        "image_size": size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "real_vs_real_fid": judge["ref"].floor.get("fid_classifier"),
        "seeds": rows,
        "summary": summary,
        "plain_reached_ganscale_fid": reached,
        "side_by_side": str(args.out / "side-by-side.png"),
        "side_by_side_size": [width, height],
    }
    (args.out / "time-to-quality.json").write_text(json.dumps(result, indent=1, default=_json) + "\n")
    print(json.dumps(result, default=_json))
    return 0


def _json(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(type(x).__name__)


if __name__ == "__main__":
    sys.exit(main())
