"""Tiny end-to-end training runs on CPU (single process)."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from PIL import Image
from safetensors.torch import load_file

from ganscale.config import load_config
from ganscale.outputs.tracking import read_metrics
from ganscale.train.checkpoint import list_checkpoints
from ganscale.train.trainer import train


def _train(tmp_path, overrides, name="run", resume=None):
    cfg = load_config(REPO / "configs/tiny.yaml", overrides)
    return train(cfg, tmp_path / name, resume=resume), tmp_path / name


CKPT_FILES = ("G.safetensors", "D.safetensors", "G_ema.safetensors")


def _straight_vs_split(tmp_path, over, steps, files=CKPT_FILES, between=None, label=""):
    """Train ``over`` for ``steps`` in one go ("straight") and in two halves ("split": stopped at
    steps // 2, then ``--resume latest``); every tensor of the last checkpoint's ``files`` must
    be equal. Returns (the resumed half's result, its run folder, {file: (straight, split)})."""
    _train(tmp_path, over, name="straight")
    _train(tmp_path, [*over, f"train.max_steps={steps // 2}"], name="split")
    if between is not None:
        between()
    result, run = _train(tmp_path, over, name="split", resume="latest")
    assert result.step == steps
    step = f"checkpoints/step-{steps:07d}"
    pairs = {
        f: (load_file(str(tmp_path / "straight" / step / f)), load_file(str(run / step / f))) for f in files
    }
    for f, (a, b) in pairs.items():
        for k in a:
            assert torch.equal(a[k], b[k]), f"{f}:{k} differs after resume{label}"
    return result, run, pairs


@pytest.mark.parametrize("arch,conditional", [("dcgan", False), ("dcgan", True), ("resnet", True)])
def test_tiny_run_trains_and_writes_everything(tmp_path, tiny_overrides, arch, conditional):
    result, run = _train(
        tmp_path, [*tiny_overrides, f"model.arch={arch}", f"model.conditional={conditional}"]
    )
    assert result.step == 6
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "loss/d" in r]
    assert [r["step"] for r in rows] == [2, 4, 6]
    for r in rows:
        assert all(isinstance(r[k], float) and abs(r[k]) < 1e6 for k in ("loss/d", "loss/g"))
        assert r["images_per_s"] > 0 and 0 <= r["data_wait_fraction"] <= 1
    if conditional:
        assert {"acc/real/hair", "acc/real/eyes", "acc/fake/hair", "acc/fake/eyes"} <= set(rows[-1])
    # checkpoints: every 3 steps, keep 2 -> steps 3 and 6
    assert [c.step for c in list_checkpoints(run)] == [3, 6]
    first = load_file(str(run / "checkpoints/step-0000003/G.safetensors"))
    last = load_file(str(run / "checkpoints/step-0000006/G.safetensors"))
    assert any(not torch.equal(first[k], last[k]) for k in first if first[k].is_floating_point())
    assert (run / "generator.safetensors").is_file()
    meta = json.loads((run / "generator.json").read_text())
    assert meta["z_dim"] == 16 and meta["image_size"] == 16
    assert bool(meta["attributes"]) == conditional
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["step-0000003.png", "step-0000006.png"]
    assert (run / "losses.png").is_file() and (run / "config.yaml").is_file()


def test_resume_is_exact(tmp_path, tiny_overrides):
    over = [*tiny_overrides, "train.max_steps=6", "checkpoint.every=3", "data.num_workers=0"]
    _, _, pairs = _straight_vs_split(tmp_path, over, 6)
    assert all(a.keys() == b.keys() for a, b in pairs.values())
    oa = torch.load(tmp_path / "straight/checkpoints/step-0000006/optim_D.pt", weights_only=True)
    ob = torch.load(tmp_path / "split/checkpoints/step-0000006/optim_D.pt", weights_only=True)
    for k in oa["state"]:
        assert torch.equal(oa["state"][k]["exp_avg"], ob["state"][k]["exp_avg"])


def test_bf16_on_cpu(tmp_path, tiny_overrides):
    result, run = _train(tmp_path, [*tiny_overrides, "train.mixed_precision=bf16"])
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "loss/d" in r]
    assert result.step == 6 and all(r["loss/d"] == r["loss/d"] for r in rows)  # not NaN


@pytest.mark.parametrize("loss", ["hinge", "wgan-gp", "r1", "dragan"])
def test_other_losses_run(tmp_path, tiny_overrides, loss):
    over = {
        "hinge": ["loss.adversarial=hinge"],
        "wgan-gp": ["loss.adversarial=wgan", "loss.penalty=gp", "train.n_critic=2"],
        "r1": ["loss.penalty=r1", "loss.penalty_weight=1"],
        "dragan": ["loss.penalty=dragan"],
    }[loss]
    result, run = _train(tmp_path, [*tiny_overrides, *over, "train.grad_accum=2"])
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "loss/d" in r]
    assert result.step == 6 and rows
    if loss != "hinge":
        assert "loss/penalty" in rows[-1]


def test_wandb_offline_run_holds_images(tmp_path, tiny_overrides, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    _, run = _train(tmp_path, [*tiny_overrides, "log.tracker=wandb"])
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    media = list(offline[0].glob("files/media/images/*.png"))
    assert len(media) >= 2
    assert Image.open(media[0]).size[0] > 16
    assert list(offline[0].glob("*.wandb"))


def test_tensorboard_tracker(tmp_path, tiny_overrides):
    _, run = _train(tmp_path, [*tiny_overrides, "log.tracker=tensorboard"])
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_cli_bad_key_is_one_line(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ganscale",
            "train",
            str(REPO / "configs/tiny.yaml"),
            "--set",
            "train.batchsize=2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: unknown config key train.batchsize; did you mean train.batch_size?"
    ]


def test_cli_debug_shows_traceback(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ganscale",
            "--debug",
            "train",
            str(REPO / "configs/tiny.yaml"),
            "--set",
            "x=1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_resume_is_exact_with_spectral_norm_and_cbn(tmp_path, tiny_overrides):
    """Spectral norm's power-iteration vectors and CBN's embeddings resume exactly; the export loads."""
    from ganscale.outputs.export import load_generator

    over = [
        *tiny_overrides,
        "train.max_steps=6",
        "checkpoint.every=3",
        "model.spectral_norm=both",
        "model.g_condition=cbn",
        "model.head=projection",
        "loss.adversarial=hinge",
    ]
    _, run, pairs = _straight_vs_split(tmp_path, over, 6)
    for a, b in pairs.values():
        assert a.keys() == b.keys() and any(k.endswith("weight.0._u") for k in a)
    assert any(k.endswith("gain_embed") for k in load_file(str(run / "generator.safetensors")))
    G, meta = load_generator(run)
    assert meta["model"]["spectral_norm"] == "both" and meta["model"]["g_condition"] == "cbn"
    z = torch.randn(2, meta["z_dim"])
    y = torch.zeros(2, len(meta["num_classes"]), dtype=torch.long)
    assert torch.equal(G(z, y), G(z, y))


def test_resume_is_exact_with_accumulation_and_critic_updates(tmp_path, tiny_overrides):
    """Every (critic update, micro-batch) draw has its own noise counter, derived from the step:
    a run split at step 2 continues bit-exactly with grad_accum 2 and n_critic 2."""
    over = [
        *tiny_overrides,
        "train.max_steps=4",
        "checkpoint.every=2",
        "train.grad_accum=2",
        "train.n_critic=2",
    ]
    _straight_vs_split(tmp_path, over, 4)
    state = json.loads((tmp_path / "split/checkpoints/step-0000004/state.json").read_text())
    assert state["format_version"] == 2 and state["noise"] == "packed-v2"


@pytest.mark.parametrize("penalty", ["gp", "dragan"])
def test_resume_is_exact_with_a_random_penalty(tmp_path, tiny_overrides, penalty):
    """gp's and dragan's random mixing comes from the step's PENALTY noise draw, not the global
    RNG (which checkpoints do not hold): a run split at step 2 continues bit-exactly."""
    over = [
        *tiny_overrides,
        "train.max_steps=4",
        "checkpoint.every=2",
        "data.num_workers=0",
        "loss.adversarial=wgan",
        f"loss.penalty={penalty}",
    ]
    files = ("G.safetensors", "D.safetensors")
    # the global RNG moves between the halves: it must not matter
    _straight_vs_split(tmp_path, over, 4, files=files, between=lambda: torch.rand(7), label=f" ({penalty})")
