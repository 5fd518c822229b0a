"""`ganscale export RUN`: a Hugging Face-style model folder that loads in a fresh process."""

import json
import re
import subprocess
import sys

import pytest
import torch
import typer
import yaml
from conftest import REPO
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from ganscale.config import load_config
from ganscale.outputs.export import load_generator
from ganscale.outputs.sampling import sample_command
from ganscale.serve.cli import register
from ganscale.train.trainer import train

TRAINING_MODULES = ["ganscale.train", "ganscale.data", "accelerate", "deepspeed", "webdataset", "wandb"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus_cache):
    run = tmp_path_factory.mktemp("folder") / "run"
    cfg = load_config(REPO / "configs/tiny.yaml", [f"data.cache_dir={corpus_cache}", "train.max_steps=4"])
    train(cfg, run)
    r = subprocess.run(
        [sys.executable, "-m", "ganscale", "eval", str(run), "--n", "64"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return run


@pytest.fixture(scope="module")
def folder(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny-acgan"
    app = typer.Typer()
    register(app)
    r = CliRunner().invoke(app, ["export", str(run), "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def probe(run, tmp_path_factory):
    """A batch and PyTorch's answer for it, in a file a child process can read."""
    G, meta = load_generator(run)
    z = torch.randn(6, meta["z_dim"], generator=torch.Generator().manual_seed(1)) * meta["z_sigma"]
    labels = torch.tensor([[3, 8], [0, 0], [11, 9], [3, 8], [5, 1], [2, 2]])
    with torch.no_grad():
        want = G(z, labels)
    path = tmp_path_factory.mktemp("probe") / "probe.safetensors"
    save_file({"z": z, "labels": labels, "want": want.contiguous()}, str(path))
    return path


def test_layout_front_matter_and_sample(folder):
    names = {p.name for p in folder.iterdir()}
    assert names >= {
        "README.md",
        "config.json",
        "model.safetensors",
        "sample.png",
        "training.json",
        "eval.json",
    }
    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "ganscale" and "gan" in front["tags"]
    config = json.loads((folder / "config.json").read_text())
    assert config["attributes"]["hair"][3] == "blue" and config["z_dim"] == 16
    assert Image.open(folder / "sample.png").size == (8 * 18 + 2, 8 * 18 + 2)


def test_card_says_architecture_data_budget_eval_and_loading(folder, run):
    card = (folder / "README.md").read_text()
    for words in (
        "## Architecture",
        "dcgan",
        "## Data",
        "synthetic",
        "## Training budget",
        "4 steps, 32 images",
    ):
        assert words in card, words
    ev = json.loads((run / "eval.json").read_text())
    assert "## Evaluation" in card and "64 generated images" in card
    assert f"{ev['accuracy']['hair']:.1%}" in card and "hair, per value: aqua" in card
    assert "fid_classifier" in card and "real-vs-real" in card
    assert "load_generator" in card and "```python" in card
    for name in ("README.md", "training.json", "training_config.yaml", "config.json"):
        assert str(run.parent) not in (folder / name).read_text(), f"{name} carries a local path"


def test_folder_loads_in_a_fresh_process_without_training_modules(folder, probe):
    code = (
        "import sys, torch\n"
        "from safetensors.torch import load_file\n"
        "from ganscale.outputs.export import load_generator\n"
        f"G, meta = load_generator({str(folder)!r})\n"
        f"p = load_file({str(probe)!r})\n"
        "with torch.no_grad():\n"
        "    err = (G(p['z'], p['labels']) - p['want']).abs().max().item()\n"
        f"loaded = [m for m in {TRAINING_MODULES!r}\n"
        "          if any(k == m or k.startswith(m + '.') for k in sys.modules)]\n"
        "print('err', err, 'loaded', loaded)\n"
        "assert err < 1e-6 and not loaded\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]


def test_card_snippet_loads_it_without_ganscale(folder, probe):
    card = (folder / "README.md").read_text()
    snippet = re.findall(r"```python\n(.*?)```", card, re.S)[-1]
    assert len(snippet.strip().splitlines()) <= 22
    code = (
        snippet
        + "import sys\n"
        + f"p = load_file({str(probe)!r})\n"
        + "err = (generate(p['z'], p['labels']) - p['want']).abs().max().item()\n"
        + "print('err', err)\n"
        + "assert err < 1e-5 and not any(m.startswith('ganscale') for m in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=folder)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]


def test_sample_and_serve_take_the_folder(folder, tmp_path):
    from fastapi.testclient import TestClient

    from ganscale.serve.cli import build_app

    out = sample_command(folder, tags="blue hair red eyes", n=4, out=tmp_path / "g.png")
    assert Image.open(out).size == (2 * 18 + 2, 2 * 18 + 2)
    info = TestClient(build_app(folder), base_url="http://127.0.0.1").get("/api/info").json()
    assert info["facts"]["step"] == 4 and info["facts"]["eval"]["n"] == 64


def test_every_sample_command_of_the_card_runs(folder, tmp_path):
    """The card's `ganscale sample` lines (one --cond per attribute, --tags, --all-conditions)
    run as written, through the CLI, on the folder."""
    import shlex

    from ganscale.cli import main

    card = (folder / "README.md").read_text()
    lines = [line.split("#")[0].strip() for line in card.splitlines() if line.startswith("ganscale sample ")]
    assert len(lines) == 3 and "--cond hair=" in lines[0] and "--all-conditions" in lines[2]
    assert '--tags "white hair yellow eyes"' in lines[1]  # colours shared by hair and eyes: named
    for i, line in enumerate(lines):
        args = shlex.split(line.replace("path/to/this/folder", str(folder)))[1:]
        with pytest.raises(SystemExit) as e:
            main([*args, "--n", "2", "--out", str(tmp_path / f"{i}.png")])
        assert e.value.code == 0, line
        assert (tmp_path / f"{i}.png").is_file()


def test_export_refuses_to_overwrite_its_source(run):
    from ganscale.errors import GanscaleError
    from ganscale.outputs.model_folder import export_model_folder

    with pytest.raises(GanscaleError, match="read from"):
        export_model_folder(run, run)
    assert load_file(str(run / "generator.safetensors"))  # untouched
