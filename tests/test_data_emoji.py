"""The real corpus, end to end through the CLI: build two vendors' emoji (../shared/real_corpus/
emoji.sh, npm registry, cached in ~/.cache/emoji-npm), pack its imagefolder layout, train a tiny
conditional model on vendor x category for a few steps, sample it by `--cond`, evaluate it per
attribute (`ganscale classifier train` on a subset first, so the judge trains in seconds), and
check the serve API's pickers name vendor and category.

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
VENDORS = ["google", "twitter"]


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
    command = ["bash", str(script), str(out), " ".join(VENDORS)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
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


def test_emoji_pack_train_sample_eval_serve_on_vendor_and_category(emoji, tmp_path):
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
    assert m["attributes"] == {"vendor": VENDORS, "category": categories}
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
    # sample by the run's own attributes
    p = _cli(
        "sample", str(run), "--cond", "vendor=twitter", "--cond", "category=flags", "--n", "4", "--out",
        str(tmp_path / "flags.png"),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "flags.png").is_file()
    p = _cli("sample", str(run), "--cond", "vendor=apple", "--cond", "category=flags")
    assert p.returncode == 2 and "vendor is one of google, twitter" in p.stderr
    # the judge: trained on a subset of the corpus (seconds), then `eval` per attribute
    p = _cli("classifier", "train", str(shards), "--max-images", "768", "--epochs", "3", "--device", "cpu")
    assert p.returncode == 0, p.stderr[-2000:]
    p = _cli("eval", str(run), "--n", "64", "--device", "cpu")
    assert p.returncode == 0, p.stderr[-2000:]
    result = json.loads((run / "eval.json").read_text())
    for key in ("accuracy", "acc_uniform", "real_accuracy"):
        assert {"vendor", "category"} <= set(result[key]), key
    assert sorted(result["acc_per_value"]["vendor"]) == VENDORS
    assert sorted(result["acc_per_value"]["category"]) == categories
    assert "vendor by value: google " in p.stdout and "category by value: activities " in p.stdout
    # serve: one picker per attribute (the page builds them from /api/info's attributes)
    from fastapi.testclient import TestClient

    from ganscale.serve.cli import build_app

    client = TestClient(build_app(run), base_url="http://127.0.0.1")
    info = client.get("/api/info").json()
    assert info["attributes"] == {"vendor": VENDORS, "category": categories}
    assert "Object.entries(INFO.attributes)" in client.get("/").text
    r = client.post("/api/generate", json={"conditions": {"vendor": "google", "category": "flags"}, "n": 2})
    assert r.status_code == 200 and r.json()["tags"] == ["google vendor flags category"] * 2
