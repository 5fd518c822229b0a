"""The real corpus, end to end through the CLI: build one vendor's emoji (../shared/real_corpus/
emoji.sh, npm registry, cached in ~/.cache/emoji-npm), pack its imagefolder layout, train a tiny
conditional model on vendor x category for a few steps.

Skipped where npm, the script or the network is missing; under CI=true a failed build fails.
The images are built into a tmp folder and never committed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _script() -> Path | None:
    for parent in REPO.parents:
        p = parent / "shared" / "real_corpus" / "emoji.sh"
        if p.is_file():
            return p
    return None


def _unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"emoji corpus: {why} (CI must build it: node + npm + ../shared/real_corpus)")
    pytest.skip(f"emoji corpus: {why}")


@pytest.fixture(scope="module")
def emoji(tmp_path_factory) -> Path:
    script = _script()
    if script is None:
        _unavailable("../shared/real_corpus/emoji.sh not found")
    if shutil.which("npm") is None or shutil.which("bash") is None:
        _unavailable("npm not installed")
    out = tmp_path_factory.mktemp("emoji")
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(script), str(out), "google"], capture_output=True, text=True, env=env, timeout=900
    )
    if proc.returncode != 0:
        _unavailable(f"emoji.sh failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-300:]}")
    return out


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}
    return subprocess.run(
        [sys.executable, "-m", "ganscale", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=900,
    )


def test_emoji_pack_and_train_on_vendor_and_category(emoji, tmp_path):
    rows = (emoji / "train" / "metadata.csv").read_text().splitlines()
    assert rows[0] == "file_name,vendor,category" and len(rows) > 1000
    categories = sorted({r.split(",")[2] for r in rows[1:]})
    shards = tmp_path / "shards"
    p = _cli(
        "data",
        "pack",
        str(emoji),
        str(shards),
        "--size",
        "16",
        "--attributes",
        "vendor,category",
        "--no-progress",
    )
    assert p.returncode == 0, p.stderr
    assert "layout imagefolder" in p.stdout and "not read: classes/" in p.stdout
    m = json.loads((shards / "dataset.json").read_text())
    assert m["attributes"] == {"vendor": ["google"], "category": categories}
    assert m["num_samples"] == len(rows) - 1 and m["rejects"] == {}
    assert sum(m["class_counts"]["category"].values()) == m["num_samples"]
    # the class-folder layout of the same images: one attribute, the same count
    p = _cli(
        "data", "pack", str(emoji / "classes"), str(tmp_path / "classes"), "--size", "8", "--no-progress"
    )
    assert p.returncode == 0, p.stderr
    mc = json.loads((tmp_path / "classes" / "dataset.json").read_text())
    assert mc["num_samples"] == m["num_samples"] and list(mc["attributes"]) == ["class"]
    run = tmp_path / "run"
    p = _cli(
        "train",
        "configs/tiny.yaml",
        "--out",
        str(run),
        "--set",
        "data.source=shards",
        "--set",
        f"data.path={shards}",
        "--set",
        "model.conditional=true",
        "--set",
        "train.max_steps=4",
    )
    assert p.returncode == 0, p.stderr[-2000:]
    last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"step"' in x][-1]
    assert last["step"] == 4 and "acc/real/category" in last and "acc/real/vendor" in last
    assert (run / "generator.safetensors").is_file()
