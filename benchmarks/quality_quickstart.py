"""Quality bar: the quick-start ACGAN on 2 CPU cores within 15 minutes reaches attribute
accuracy >= 90% (hair) and >= 80% (eyes), judged by the corpus's attribute classifier.

    python benchmarks/quality_quickstart.py                    # the bar: 15 minutes, n=2000
    python benchmarks/quality_quickstart.py --minutes 1 --steps 20 --n 200   # a smoke run

The run is the one cell of configs/sweeps/quickstart.yaml, run by `ganscale sweep`'s local
runner: at the time budget the trainer gets SIGUSR1, checkpoints, exports its EMA generator
and stops, so the generator evaluated is whatever the budget bought. Prints the numbers and
the times; exit code 0 when both bars are met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "configs" / "sweeps" / "quickstart.yaml"
BARS = {"hair": 0.90, "eyes": 0.80}


def main(argv: list[str] | None = None) -> int:
    from ganscale.evaluation.evaluate import summary
    from ganscale.sweep.local import cell_status, read_cell_file, run_local
    from ganscale.sweep.spec import load_spec, write_manifest

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None, help="Sweep folder (default: the spec's).")
    p.add_argument("--minutes", type=float, default=15.0, help="Training time budget (the bar: 15).")
    p.add_argument("--steps", type=int, default=0, help="Override train.max_steps (0: the config's).")
    p.add_argument("--n", type=int, default=2000, help="Generated images for the evaluation.")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="Extra config override.")
    p.add_argument("--keep", action="store_true", help="Reuse --out if it exists (else it is replaced).")
    args = p.parse_args(argv)

    extra = [*args.overrides] + ([f"train.max_steps={args.steps}"] if args.steps else [])
    spec = load_spec(SPEC, extra)
    spec.out = args.out or spec.out
    spec.minutes, spec.eval_n = args.minutes, args.n
    if spec.out.exists() and not args.keep:
        shutil.rmtree(spec.out)
    (cell,) = spec.cells()
    write_manifest(spec, [cell])
    run_local(spec, [cell])

    run = spec.out / cell.folder
    result = json.loads((run / "eval.json").read_text())
    info = read_cell_file(run)
    steps = cell_status(spec, cell).step
    acc = result["accuracy"] or {}
    print()
    print(summary(result))
    print()
    print("| attribute | accuracy | bar | real images (ceiling) | ok |")
    print("|---|---|---|---|---|")
    ok = True
    for attr, bar in BARS.items():
        value = acc.get(attr, float("nan"))
        passed = value >= bar
        ok &= passed
        ceiling = result["real_accuracy"].get(attr, float("nan"))
        print(f"| {attr} | {value:.1%} | >= {bar:.0%} | {ceiling:.1%} | {'yes' if passed else 'NO'} |")
    stopped = bool(info.get("stopped_by_budget"))
    train_s = float(info.get("train_seconds", 0.0))
    print(
        f"\ntraining: {train_s / 60:.1f} min ({steps} steps{', stopped at the budget' if stopped else ''}); "
        f"evaluation: {result['seconds']:.0f} s (n={args.n}); FID (classifier space) "
        f"{result['fid_classifier']:.3f}, real-vs-real {result['real_vs_real']['fid_classifier']:.3f}"
    )
    bench = {
        "run": str(run),
        "train_seconds": train_s,
        "stopped_by_budget": stopped,
        "steps": steps,
        "eval_seconds": result["seconds"],
        "accuracy": acc,
        "bars": BARS,
        "passed": ok,
        "minutes": args.minutes,
        "n": args.n,
    }
    (spec.out / "bench.json").write_text(json.dumps(bench, indent=1))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
