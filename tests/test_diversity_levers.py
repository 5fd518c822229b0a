"""The levers against one face per condition (issue 23): minibatch standard deviation in D
(model.d_minibatch_std) and mode-seeking regularisation of G (loss.mode_seeking_weight)."""

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

from ganscale.config import load_config
from ganscale.errors import GanscaleError
from ganscale.models.build import build_discriminator
from ganscale.models.layers import minibatch_std
from ganscale.outputs.tracking import read_metrics
from ganscale.train.noise import NoiseSource
from ganscale.train.terms import mode_seeking_term
from ganscale.train.trainer import train


def test_minibatch_std_is_zero_on_a_collapsed_batch_and_follows_stylegans_groups():
    one = torch.randn(1, 10).repeat(8, 1)
    assert minibatch_std(one, 4).abs().max() < 1e-3
    x = torch.randn(8, 10)
    got = minibatch_std(x, 4)
    # sample n is in group n mod 2 (B / group): rows 0, 2, 4, 6 and 1, 3, 5, 7
    want0 = x[0::2].std(0, unbiased=False).mean()
    want1 = x[1::2].std(0, unbiased=False).mean()
    assert torch.allclose(got[0::2, 0], want0.expand(4), atol=1e-4)
    assert torch.allclose(got[1::2, 0], want1.expand(4), atol=1e-4)
    assert minibatch_std(torch.randn(6, 3), 4).shape == (6, 1)  # 6 % 4: one group of 6


def test_d_with_minibatch_std_tells_a_collapsed_batch_by_its_extra_feature():
    cfg = load_config(REPO / "configs/quickstart.yaml", ["model.d_minibatch_std=4"]).model
    D = build_discriminator(cfg, [3, 4], "batch").eval()
    assert D.adv_head[0].in_features == D.trunk.feature_dim + 1
    y = torch.zeros(8, 2, dtype=torch.long)
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    a, _ = D(x, y)
    D.adv_head[0].weight.data.zero_()
    D.adv_head[0].weight.data[0, -1] = 100.0  # read only the std feature
    if D.embeds:
        for e in D.embeds:
            e.weight.data.zero_()
    varied, _ = D(x, y)
    same, _ = D(x[:1].repeat(8, 1, 1, 1), y)
    assert (varied - same).min() > 0.1 and torch.allclose(same, same[0].expand(8))


def test_mode_seeking_pairs_share_labels_and_punish_a_g_that_ignores_z():
    noise = NoiseSource(0, 0, 8, 1.0, [12, 10], torch.device("cpu"), paired=True)
    z, labels = noise.draw(0, 9, "g", 0)
    assert torch.equal(labels[:4], labels[4:8]) and not torch.equal(z[:4], z[4:8])
    unpaired = NoiseSource(0, 0, 8, 1.0, [12, 10], torch.device("cpu"))
    z2, labels2 = unpaired.draw(0, 9, "g", 0)
    assert torch.equal(z, z2) and torch.equal(labels[:4], labels2[:4])  # the same stream
    lc = load_config(REPO / "configs/quickstart.yaml", ["loss.mode_seeking_weight=1"]).loss
    out: dict = {}
    collapsed = mode_seeking_term(lc, z, torch.ones(9, 3, 4, 4), out)
    varied = mode_seeking_term(lc, z, torch.randn(9, 3, 4, 4), out)
    assert collapsed > 1000 * varied and out["loss/mode_seeking"] > 0


def _train(tmp_path, tiny_overrides, extra, name="run", resume=None):
    over = [*tiny_overrides, "model.conditional=true", "train.max_steps=4", "checkpoint.every=2", *extra]
    return train(load_config(REPO / "configs/tiny.yaml", over), tmp_path / name, resume=resume)


def test_the_real_trainer_trains_both_levers_and_resumes_exactly(tmp_path, tiny_overrides):
    levers = ["loss.mode_seeking_weight=1", "model.d_minibatch_std=2"]
    result = _train(tmp_path, tiny_overrides, levers, name="straight")
    assert result.step == 4
    rows = [r for r in read_metrics(tmp_path / "straight" / "metrics.jsonl") if "loss/mode_seeking" in r]
    assert rows and all(r["loss/mode_seeking"] > 0 for r in rows)
    _train(tmp_path, tiny_overrides, [*levers, "train.max_steps=2"], name="split")
    _train(tmp_path, tiny_overrides, levers, name="split", resume="latest")
    step = "checkpoints/step-0000004"
    for f in ("G.safetensors", "D.safetensors"):
        a, b = (load_file(str(tmp_path / r / step / f)) for r in ("straight", "split"))
        assert all(torch.equal(a[k], b[k]) for k in a), f
    d = load_file(str(tmp_path / "straight" / step / "D.safetensors"))
    trunk = sum(v.shape[1] for k, v in d.items() if k.startswith("adv_head.0.weight"))
    assert trunk % 2 == 1  # the trunk's even feature count + the std feature


def test_mode_seeking_with_a_batch_of_one_is_refused_before_anything_is_written(tmp_path, tiny_overrides):
    with pytest.raises(GanscaleError, match="loss.mode_seeking_weight.*batch of 2"):
        _train(tmp_path, tiny_overrides, ["loss.mode_seeking_weight=1", "train.batch_size=1"])
    assert not (tmp_path / "run").exists()
