"""DiffAugment / ADA transforms: what each does, that gradients flow through them to G, and that
the trainer applies the same kind of transform to every image D sees (real and fake, D and G
phases, the gradient penalty)."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO
from torch import nn

from ganscale.augment import diffaugment as da
from ganscale.config import ConfigError, load_config
from ganscale.runtime import build_runtime
from ganscale.train.plan import augment_policy_of
from ganscale.train.trainer import Trainer, plan_for

TINY = REPO / "configs/tiny.yaml"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b: int = 6, size: int = 16) -> torch.Tensor:
    # distinct values everywhere (none exactly 0), in (-1, 1)
    n = b * 3 * size * size
    return (torch.arange(n, dtype=torch.float32) / n * 1.8 - 0.9 + 0.5 / n).reshape(b, 3, size, size)


def test_parse_policy() -> None:
    assert da.parse_policy(" translation, cutout ") == ("translation", "cutout")
    for bad in ("", "flip", "color,color", "translation,,blur"):
        with pytest.raises(ValueError):
            da.parse_policy(bad)


def test_translation_is_a_whole_pixel_shift_with_zero_fill() -> None:
    x = _images()
    y = da.translation(x, _gen(1))
    limit = int(16 * da.TRANSLATION_RATIO + 0.5)
    for i in range(x.shape[0]):
        found = [
            (dx, dy)
            for dx in range(-limit, limit + 1)
            for dy in range(-limit, limit + 1)
            if torch.equal(y[i], _shift(x[i], dx, dy))
        ]
        assert len(found) == 1, f"sample {i} is not a zero-padded shift of its input"
    assert not torch.equal(y, x)


def _shift(img: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """out[:, r, c] = img[:, r + dx, c + dy], 0 outside (the reference code's convention)."""
    out = torch.zeros_like(img)
    h, w = img.shape[1:]
    for r in range(h):
        for c in range(w):
            if 0 <= r + dx < h and 0 <= c + dy < w:
                out[:, r, c] = img[:, r + dx, c + dy]
    return out


def test_translation_gradient_counts_the_kept_pixels() -> None:
    x = _images().requires_grad_(True)
    y = da.translation(x, _gen(2))
    y.sum().backward()
    kept = (y.detach() != 0).flatten(1).sum(1).float()  # the input has no exact zeros
    assert torch.equal(x.grad.flatten(1).sum(1), kept)
    assert set(x.grad.unique().tolist()) <= {0.0, 1.0}


def test_cutout_zeroes_one_box_per_sample() -> None:
    x = _images(b=16)
    y = da.cutout(x, _gen(3))
    zero = (y == 0).all(1)  # [B, H, W]
    side = int(16 * da.CUTOUT_RATIO + 0.5)
    for i in range(16):
        rows, cols = zero[i].nonzero(as_tuple=True)
        assert len(rows) > 0
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert len(rows) == h * w and h <= side and w <= side  # one rectangle, clipped at the border
        assert h >= side // 2 and w >= side // 2
    assert torch.equal(y[~zero.unsqueeze(1).expand_as(y)], x[~zero.unsqueeze(1).expand_as(x)])


def test_color_keeps_geometry_and_changes_values_per_sample() -> None:
    x = _images()
    y = da.augment(x, ("color",), _gen(4))
    assert y.shape == x.shape and not torch.equal(y, x)
    # brightness, saturation and contrast are affine per sample: a constant image stays constant
    flat = torch.full((4, 3, 8, 8), 0.25)
    out = da.augment(flat, ("color",), _gen(5))
    assert torch.allclose(out, out[:, :1, :1, :1].expand_as(out))
    assert out[:, 0, 0, 0].unique().numel() == 4  # a different brightness per sample


def test_same_generator_same_transform_whatever_the_dtype() -> None:
    x = _images()
    policy = ("translation", "cutout", "color")
    a = da.augment(x, policy, _gen(7))
    assert torch.equal(a, da.augment(x, policy, _gen(7)))
    assert not torch.equal(a, da.augment(x, policy, _gen(8)))
    b = da.augment(x.bfloat16(), policy, _gen(7))
    assert b.dtype == torch.bfloat16
    torch.testing.assert_close(b.float(), a, rtol=0.05, atol=0.05)  # same parameters, bf16 rounding


def test_ada_probability_zero_is_the_identity_and_one_applies_everything() -> None:
    x = _images(b=32)
    policy = ("translation", "cutout", "color")
    assert torch.equal(da.augment(x, policy, _gen(9), p=torch.tensor(0.0)), x)
    y = da.augment(x, ("cutout",), _gen(9), p=torch.tensor(1.0))
    assert ((y == 0).all(1).flatten(1).sum(1) > 0).all()
    half = da.augment(x, ("cutout",), _gen(10), p=torch.tensor(0.5))
    cut = ((half == 0).all(1).flatten(1).sum(1) > 0).sum().item()
    assert 4 < cut < 28  # about half the samples (binomial(32, 0.5))


def test_gradcheck_through_every_transform() -> None:
    x = (torch.rand(2, 3, 8, 8, generator=_gen(11), dtype=torch.float64) * 1.8 - 0.9).requires_grad_(True)
    for policy in (("translation",), ("cutout",), ("color",), ("translation", "cutout", "color")):
        assert torch.autograd.gradcheck(lambda t, pol=policy: da.augment(t, pol, _gen(12)), (x,))


def test_gradients_reach_g_through_the_augmentation() -> None:
    G = nn.Sequential(nn.Linear(4, 3 * 16 * 16), nn.Tanh(), nn.Unflatten(1, (3, 16, 16)))
    D = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(1))
    z = torch.randn(8, 4, generator=_gen(13))
    fake = G(z)
    D(fake)  # materialise the lazy layer
    for policy in (("translation",), ("cutout",), ("color",), ("translation", "cutout", "color")):
        G.zero_grad()
        D(da.augment(fake, policy, _gen(14))).mean().backward(retain_graph=True)
        grads = torch.cat([p.grad.flatten() for p in G.parameters()])
        assert torch.isfinite(grads).all() and grads.abs().sum() > 0, policy


# --------------------------------------------------------------------------- in the trainer


def _captured_inputs(tmp_path, corpus_cache, *sets: str) -> dict[str, list[torch.Tensor]]:
    """Run one real step; every input D saw, by where it came from: the D phase (D trains, the
    input has no graph), the gradient penalty (D trains, the input is differentiated) and the G
    phase (D frozen)."""
    cfg = load_config(TINY, [f"data.cache_dir={corpus_cache}", "log.sample_every=0", *sets])
    rt = build_runtime(cfg)
    trainer = Trainer(plan_for(cfg, rt), tmp_path / "run", rt)
    D = rt.module("d")
    seen: dict[str, list[torch.Tensor]] = {"d": [], "g": [], "penalty": []}

    def hook(module, args):
        x = args[0]
        if not next(D.parameters()).requires_grad:
            where = "g"
        else:
            where = "penalty" if x.grad_fn is not None or x.requires_grad else "d"
        seen[where].append(x.detach().clone())

    handle = D.register_forward_pre_hook(hook)
    try:
        trainer.step()
    finally:
        handle.remove()
        trainer.close()
        rt.end()
    return seen


def _boxed(x: torch.Tensor) -> torch.Tensor:
    """Per sample: pixels whose every channel is exactly 0 (a cutout box)."""
    return (x == 0).all(1).flatten(1).sum(1)


def test_the_trainer_cuts_out_every_image_d_sees(tmp_path, corpus_cache):
    seen = _captured_inputs(
        tmp_path, corpus_cache, "augment.kind=diffaugment", "augment.policy=cutout", "loss.penalty=r1"
    )
    # D phase: the real batch and the fake batch; G phase: the fake batch; R1: the real batch
    assert [len(seen[k]) for k in ("d", "g", "penalty")] == [2, 1, 1]
    for where, inputs in seen.items():
        for x in inputs:
            assert (_boxed(x) >= 16).all(), f"{where}: a sample without its cutout box"
    off = _captured_inputs(tmp_path / "off", corpus_cache, "loss.penalty=r1")
    assert all((_boxed(x) == 0).all() for xs in off.values() for x in xs)


def test_conditional_runs_drop_color_by_default_and_warn_when_asked_for_it(tmp_path, corpus_cache):
    auto = load_config(TINY, ["augment.kind=ada"])
    assert auto.augment.policy == "auto" and augment_policy_of(auto) == ("translation", "cutout")
    uncond = augment_policy_of(load_config(TINY, ["augment.kind=ada", "model.conditional=false"]))
    assert uncond == ("translation", "cutout", "color")
    cfg = load_config(
        TINY, [f"data.cache_dir={corpus_cache}", "augment.kind=diffaugment", "augment.policy=color"]
    )
    rt = build_runtime(cfg)
    try:
        with pytest.warns(UserWarning, match="augment.policy has color and model.conditional"):
            Trainer(plan_for(cfg, rt), tmp_path / "run", rt).close()
    finally:
        rt.end()


@pytest.mark.parametrize(
    "override,needle",
    [
        ("augment.kind=stylegan", "augment.kind"),
        ("augment.policy=blur", "augment.policy"),
        ("augment.ada_target=1.5", "augment.ada_target"),
        ("augment.ada_interval=0", "augment.ada_interval"),
        ("augment.ada_kimg=0", "augment.ada_kimg"),
    ],
)
def test_bad_augment_keys_are_one_line(override, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        load_config(TINY, [override, "model.conditional=false"])
    assert "\n" not in str(e.value)
