"""FID, KID and precision/recall on feature arrays, and the Inception opt-in (no weights here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ganscale.errors import GanscaleError
from ganscale.evaluation.classifier import accuracy
from ganscale.evaluation.features import INCEPTION_ENV, InceptionFeatures, load_inception
from ganscale.evaluation.fid import fid, frechet_distance, kid, precision_recall
from ganscale.evaluation.scoring import per_value_accuracy, uniform_conditions
from ganscale.runtime.env import inception_weights


def gaussian(n: int, d: int = 16, shift: float = 0.0, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, scale, size=(n, d))


def test_fid_of_a_set_against_itself_is_zero_and_against_noise_large():
    x = gaussian(500)
    assert fid(x, x) == pytest.approx(0.0, abs=1e-6)
    noise = np.random.default_rng(1).uniform(-6, 6, size=x.shape)
    same = fid(x, gaussian(500, seed=2))  # same distribution, another draw: small
    assert same < 2
    assert fid(x, noise) > 50 > 25 * same  # 16 * (1 + 12 - 2 sqrt(12)) = 97 in theory


def test_frechet_distance_matches_the_closed_form():
    # N(0, I) vs N(mu, 4I) in d dims: |mu|^2 + d * (1 + 4 - 2 * 2)
    d = 8
    mu = np.arange(d, dtype=float)
    value = frechet_distance(np.zeros(d), np.eye(d), mu, 4 * np.eye(d))
    assert value == pytest.approx(mu @ mu + d, rel=1e-9)
    # non-commuting covariances: compare with the eigenvalues of S1 S2 directly
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + np.eye(d), b @ b.T + np.eye(d)
    tr_sqrt = np.sqrt(np.linalg.eigvals(s1 @ s2).real.clip(0)).sum()
    expected = np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(np.zeros(d), s1, np.zeros(d), s2) == pytest.approx(expected, rel=1e-6)


def test_kid_is_unbiased_on_equal_distributions():
    # Many independent pairs of equal-distribution sets: the unbiased estimate averages ~0
    # (a biased one, with the diagonal kept, would sit clearly above 0), and it is clearly
    # positive once the distributions differ.
    values = [kid(gaussian(100, seed=2 * i), gaussian(100, seed=2 * i + 1), subsets=1)[0] for i in range(40)]
    mean, se = float(np.mean(values)), float(np.std(values) / np.sqrt(len(values)))
    assert abs(mean) < 3 * se + 1e-4
    assert min(values) < 0 < max(values)  # unbiased: it straddles zero
    shifted = kid(gaussian(100), gaussian(100, shift=0.5, seed=9), subsets=1)[0]
    assert shifted > mean + 10 * se


def test_kid_subsets_report_a_spread():
    m, s = kid(gaussian(300), gaussian(300, seed=1), subsets=10, subset_size=100)
    assert s > 0 and abs(m) < 0.05


def test_precision_recall():
    real = gaussian(400, d=4)
    p, r = precision_recall(real, gaussian(400, d=4, seed=1))
    assert p > 0.8 and r > 0.8
    collapsed = gaussian(400, d=4, scale=0.05, seed=2)  # all fakes near the mode: precise, no coverage
    p, r = precision_recall(real, collapsed)
    assert p > 0.9 and r < 0.2
    p, r = precision_recall(real, gaussian(400, d=4, shift=50, seed=3))
    assert p == 0.0 and r == 0.0


def test_missing_inception_weights_give_one_line(monkeypatch):
    extractor, message = load_inception(None, env_value=None)
    assert extractor is None
    assert "\n" not in message and INCEPTION_ENV in message and "Inception" in message
    with pytest.raises(GanscaleError, match=f"{INCEPTION_ENV}=.*file not found"):
        load_inception(None, env_value="/nonexistent/inception.pt")
    with pytest.raises(GanscaleError, match="eval.inception=.*file not found"):
        load_inception("/nonexistent/inception.pt", env_value=None)
    # the variable is read by ganscale.runtime.env, and its value passed in by the caller
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    assert inception_weights() is None and load_inception(None, env_value=inception_weights())[0] is None
    monkeypatch.setenv(INCEPTION_ENV, "/nonexistent/inception.pt")
    assert inception_weights() == "/nonexistent/inception.pt"
    with pytest.raises(GanscaleError, match="file not found"):
        load_inception(None, env_value=inception_weights())


class _StyleganLike(torch.nn.Module):
    """Same calling convention as stylegan2-ada's TorchScript detector (uint8-range input)."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        feats = torch.stack([x.mean((2, 3)), x.std((2, 3))], 1).flatten(1)
        return feats if return_features else feats.sum(1, keepdim=True)


def test_local_torchscript_inception_is_used(tmp_path, monkeypatch):
    path = tmp_path / "inception.pt"
    torch.jit.script(_StyleganLike()).save(str(path))
    monkeypatch.setenv(INCEPTION_ENV, str(path))
    extractor, message = load_inception(None, env_value=inception_weights())
    assert isinstance(extractor, InceptionFeatures) and message == ""
    assert extractor.path == path
    # eval.inception / --inception wins over the variable
    monkeypatch.setenv(INCEPTION_ENV, "/nonexistent/inception.pt")
    assert load_inception(path, env_value=inception_weights())[0].path == path
    feats = extractor(torch.zeros(5, 3, 16, 16))
    assert feats.shape == (5, 6)
    assert torch.allclose(feats[:, :3], torch.full((5, 3), 127.5))  # [-1, 1] -> [0, 255]


def test_uniform_conditions_cover_every_combination_equally():
    sizes = [12, 10]
    rows = uniform_conditions(360, sizes, seed=0)  # 3 x each of the 120 combinations
    combos = torch.bincount(rows[:, 0] * 10 + rows[:, 1], minlength=120)
    assert rows.shape == (360, 2) and set(combos.tolist()) == {3}
    assert not torch.equal(rows, uniform_conditions(360, sizes, seed=1))  # order follows the seed
    assert torch.equal(rows, uniform_conditions(360, sizes, seed=0))
    # a remainder is spread: combinations 2 or 3 times, each colour as evenly as it can be
    rows = uniform_conditions(250, sizes, seed=3)
    combos = torch.bincount(rows[:, 0] * 10 + rows[:, 1], minlength=120)
    assert set(combos.tolist()) == {2, 3} and int(combos.sum()) == 250
    for a, k in enumerate(sizes):
        per_value = torch.bincount(rows[:, a], minlength=k)
        assert int(per_value.max() - per_value.min()) <= 1, (a, per_value.tolist())
    few = uniform_conditions(7, [3], seed=0)  # one attribute, fewer than two rounds
    assert sorted(torch.bincount(few[:, 0], minlength=3).tolist()) == [2, 2, 3]


def test_per_value_accuracy_weighted_mean_is_the_overall_accuracy():
    attributes = {"hair": ["aqua", "blue", "pink"], "eyes": ["red", "green"]}
    gen = torch.Generator().manual_seed(0)
    requested = torch.stack(
        [torch.randint(0, 2, (50,), generator=gen), torch.randint(0, 2, (50,), generator=gen)], 1
    )
    pred = requested.clone()
    pred[::3, 0] = (pred[::3, 0] + 1) % 3  # some wrong hair
    pred[requested[:, 1] == 1, 1] = 0  # green eyes never recognised
    acc, counts = per_value_accuracy(pred, requested, attributes)
    overall = accuracy(pred, requested, attributes)
    assert acc["hair"]["pink"] is None and counts["hair"]["pink"] == 0  # never asked for
    assert acc["eyes"]["green"] == 0.0 and acc["eyes"]["red"] == 1.0
    for name, values in attributes.items():
        assert sum(counts[name].values()) == 50
        mean = sum(acc[name][v] * counts[name][v] for v in values if counts[name][v]) / 50
        assert mean == pytest.approx(overall[name], abs=1e-6)  # float32 means
