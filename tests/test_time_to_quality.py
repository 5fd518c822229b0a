"""benchmarks/time_to_quality.py end to end at toy size: a packed corpus of 48 generated images
(two classes), configs/tiny.yaml at 32 px against benchmarks/plain_dcgan.py with tiny widths,
a 15 s budget each, FID on 32 images. Checks what the harness leaves, never the numbers' size."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from distlib import REPO, run
from PIL import Image

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("time_to_quality", REPO / "benchmarks" / "time_to_quality.py")
ttq = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ttq)

SIZE = 32


def make_corpus(tmp_path: Path) -> Path:
    """Class folders red/ and blue/ of discs on white, packed; a quick judge trained on it."""
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for name, colour in (("red", (220, 40, 40)), ("blue", (40, 60, 220))):
        (src / name).mkdir(parents=True)
        for i in range(24):
            img = np.full((SIZE, SIZE, 3), 255, np.uint8)
            x, y, r = rng.integers(6, SIZE - 6, 2).tolist() + [int(rng.integers(3, 8))]
            img[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = colour
            Image.fromarray(img).save(src / name / f"{i:03d}.png")
    corpus = tmp_path / "corpus"
    ganscale = [sys.executable, "-m", "ganscale"]
    run([*ganscale, "data", "pack", src, corpus, "--size", str(SIZE), "--no-progress"], PYTHONPATH=str(REPO))
    # the judge, small and fast (the harness would otherwise train the default one)
    judge = [*ganscale, "classifier", "train", corpus, "--epochs", "2", "--size", "16", "--device", "cpu"]
    run(judge, PYTHONPATH=str(REPO))
    return corpus


def test_time_to_quality_runs_both_loops_and_judges_them_by_one_fid(tmp_path):
    corpus = make_corpus(tmp_path)
    out = tmp_path / "ttq"
    sets = ["model.image_size=32", "checkpoint.every=100000", "log.sample_every=0", "log.every=1000"]
    cmd = [
        sys.executable, REPO / "benchmarks" / "time_to_quality.py", "--corpus", corpus,
        "--config", REPO / "configs" / "tiny.yaml", "--minutes", "0.25", "--seeds", "0", "--n", "32",
        "--out", out, "--plain-args", "--nz 16 --ngf 8 --ndf 8 --batch-size 16 --log-every 0",
        *[a for s in sets for a in ("--set", s)],
    ]  # fmt: skip
    p = run(cmd, timeout=300, PYTHONPATH=str(REPO))
    result = json.loads(p.stdout.strip().splitlines()[-1])
    assert result["budget_s"] == 15.0 and result["n"] == 32 and len(result["seeds"]) == 1
    row = result["seeds"][0]
    for key in ("fid_ganscale", "fid_plain", "ratio"):
        assert math.isfinite(row[key]) and row[key] >= 0, key
    assert row["ratio"] == pytest.approx(row["fid_plain"] / row["fid_ganscale"])
    assert row["ganscale_steps"] > 0 and row["ganscale_stopped_by_budget"]
    # the conditional G's panel rows are conditions of the corpus
    assert len(row["grid_conditions"]) == ttq.GRID_ROWS
    assert {c["class"] for c in row["grid_conditions"]} <= {"red", "blue"}
    # the plain loop: four snapshots in time order, each judged
    snaps = row["plain_snapshots"]
    assert [s["fraction"] for s in snaps] == [0.25, 0.5, 0.75, 1.0]
    assert all(math.isfinite(s["fid"]) for s in snaps)
    assert [s["steps"] for s in snaps] == sorted(s["steps"] for s in snaps) and snaps[-1]["steps"] > 0
    assert snaps[-1]["fid"] == row["fid_plain"] and row["plain_steps"] == snaps[-1]["steps"]
    assert snaps[-1]["elapsed_s"] >= result["budget_s"]
    for k in range(1, 5):
        folder = out / "plain" / "seed-0" / f"snapshot-{k}of4"
        assert {f.name for f in folder.iterdir()} == {"generator.safetensors", "snapshot.json", "grid.png"}
        info = json.loads((folder / "snapshot.json").read_text())
        assert info["elapsed_s"] >= result["budget_s"] * k / 4 and info["size"] == SIZE
    assert (out / "ganscale" / "seed-0" / "generator.safetensors").is_file()
    # the two grids side by side, one band per seed
    with Image.open(out / "side-by-side.png") as im:
        width, height = im.size
    assert width == 2 * ttq.panel_width(SIZE) + ttq.GAP
    assert height == ttq.HEADER + ttq.panel_width(SIZE, ttq.GRID_ROWS)
    assert result["side_by_side_size"] == [width, height]
    saved = json.loads((out / "time-to-quality.json").read_text())
    assert saved["summary"]["ratio"]["mean"] == pytest.approx(row["ratio"])
    assert "| mean (min..max) |" in p.stdout
