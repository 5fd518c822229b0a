"""FID, KID and precision/recall on feature arrays, and the Inception opt-in (no weights here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ganscale.errors import GanscaleError
from ganscale.evaluation.features import INCEPTION_ENV, InceptionFeatures, load_inception
from ganscale.evaluation.fid import fid, frechet_distance, kid, precision_recall
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
