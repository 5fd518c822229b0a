"""G and D: shapes, ranges, heads, norms, init, gradient flow, bf16, channels_last, compile,
spectral norm, conditional BatchNorm and their exports."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ganscale.config import Config, ConfigError, ModelConfig
from ganscale.models import build_discriminator, build_generator, count_parameters
from ganscale.models.layers import ConditionalBatchNorm2d
from ganscale.models.spectral import bake_spectral_norm, spectral_weights
from ganscale.outputs.export import export_generator, generator_meta, load_generator
from ganscale.train.ema import EMA
from ganscale.train.plan import d_norm_of

CLASSES = [3, 2]  # small stand-in for the study's [12 hair, 10 eye] classes
HEADS = ["shared", "separate", "classifier", "projection"]
# (conditional, head): the unconditional D ignores cfg.head.
VARIANTS = [(False, "shared")] + [(True, h) for h in HEADS]
VARIANT_IDS = ["uncond"] + HEADS


def tiny_cfg(
    arch: str, image_size: int = 16, conditional: bool = True, head: str = "separate", width: int = 8
) -> ModelConfig:
    return ModelConfig(
        arch=arch,
        conditional=conditional,
        head=head,
        image_size=image_size,
        z_dim=16,
        g_channels=width,
        d_channels=width,
        g_blocks=1,
        head_layers=3,
    )


def build(cfg: ModelConfig, norm: str = "batch") -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return build_generator(cfg, CLASSES), build_discriminator(cfg, CLASSES, norm)


def batch(cfg: ModelConfig, b: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(b, cfg.z_dim, generator=g)
    y = torch.stack([torch.randint(0, n, (b,), generator=g) for n in CLASSES], dim=1)
    y[0, 1] = -1  # one unknown label: must not break G, D or the projection
    return z, y


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
@pytest.mark.parametrize("size", [16, 32, 64])
@pytest.mark.parametrize(("conditional", "head"), VARIANTS, ids=VARIANT_IDS)
def test_shapes_and_range(arch: str, size: int, conditional: bool, head: str) -> None:
    cfg = tiny_cfg(arch, size, conditional, head)
    G, D = build(cfg)
    z, y = batch(cfg)
    labels = y if conditional else None
    x = G(z, labels)
    assert x.shape == (4, 3, size, size)
    assert x.min() >= -1 and x.max() <= 1
    adv, logits = D(x, labels)
    assert adv.shape == (4,)
    assert [lg.shape for lg in logits] == ([(4, n) for n in CLASSES] if conditional else [])
    assert G.z_dim == cfg.z_dim
    assert G.num_classes == D.num_classes == (CLASSES if conditional else [])


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_128px_tiny(arch: str) -> None:
    cfg = tiny_cfg(arch, 128, True, "projection", width=4)
    G, D = build(cfg)
    z, y = batch(cfg, b=2)
    x = G(z, y)
    assert x.shape == (2, 3, 128, 128)
    adv, logits = D(x, y)
    assert adv.shape == (2,) and [lg.shape[1] for lg in logits] == CLASSES


def test_unconditional_ignores_labels() -> None:
    cfg = tiny_cfg("dcgan", conditional=False)
    G, D = build(cfg)
    z, y = batch(cfg)
    G.eval()
    assert torch.equal(G(z), G(z, y))
    assert D(G(z))[1] == []


def test_conditional_generator_needs_labels() -> None:
    G, _ = build(tiny_cfg("dcgan"))
    with pytest.raises(ValueError, match="labels"):
        G(torch.randn(2, 16))


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_labels_change_generator_output(arch: str) -> None:
    cfg = tiny_cfg(arch)
    G, _ = build(cfg)
    G.eval()
    z, y = batch(cfg)
    y2 = y.clone()
    y2[:, 0] = (y[:, 0] + 1) % CLASSES[0]
    assert not torch.allclose(G(z, y), G(z, y2))


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
@pytest.mark.parametrize("head", HEADS)
def test_norm_none_has_no_batchnorm(arch: str, head: str) -> None:
    cfg = tiny_cfg(arch, head=head)
    G, D = build(cfg, norm="none")
    bn = torch.nn.modules.batchnorm._BatchNorm
    assert not any(isinstance(m, bn) for m in D.modules())
    assert any(isinstance(m, bn) for m in G.modules())  # G always keeps BatchNorm
    G2, D2 = build(cfg, norm="batch")
    assert any(isinstance(m, bn) for m in D2.modules())


def test_bad_norm_rejected() -> None:
    with pytest.raises(ValueError, match="norm"):
        build_discriminator(tiny_cfg("dcgan"), CLASSES, "auto")


def _grads(module: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
@pytest.mark.parametrize(("conditional", "head"), VARIANTS, ids=VARIANT_IDS)
def test_gradients_reach_every_parameter(arch: str, conditional: bool, head: str) -> None:
    cfg = tiny_cfg(arch, 16, conditional, head)
    G, D = build(cfg)
    z, y = batch(cfg)
    labels = y if conditional else None
    adv, logits = D(G(z, labels), labels)
    w = torch.randn(4)  # random readout so no term cancels under BatchNorm
    loss = (adv * w).sum() + sum(
        torch.nn.functional.cross_entropy(lg, y[:, i].clamp(min=0)) for i, lg in enumerate(logits)
    )
    loss.backward()
    for net in (G, D):
        dead = [n for n, g in _grads(net).items() if g is None or not g.abs().sum() > 0]
        assert not dead, f"{type(net).__name__} params without gradient: {dead}"


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
@pytest.mark.parametrize("head", HEADS)
def test_each_output_reaches_generator(arch: str, head: str) -> None:
    """A dead head (adversarial or class output not connected to the image) fails here."""
    cfg = tiny_cfg(arch, 16, True, head)
    G, D = build(cfg)
    z, y = batch(cfg)
    last = [p for p in G.parameters() if p.dim() == 4][-1]  # G's final conv weight
    adv, logits = D(G(z, y), y)
    outputs = [adv] + logits
    for i, out in enumerate(outputs):
        (g,) = torch.autograd.grad(
            (out * torch.randn_like(out)).sum(), last, retain_graph=True, allow_unused=True
        )
        assert g is not None and g.abs().sum() > 0, f"output {i} of D ({head}) does not depend on G"


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_projection_uses_labels_and_skips_unknown(arch: str) -> None:
    cfg = tiny_cfg(arch, head="projection")
    _, D = build(cfg)
    D.eval()
    x = torch.randn(3, 3, 16, 16)
    y = torch.tensor([[0, 1], [1, 0], [2, 1]])
    y_other = y.clone()
    y_other[:, 0] = (y[:, 0] + 1) % CLASSES[0]
    assert not torch.allclose(D(x, y)[0], D(x, y_other)[0])
    # all labels unknown == no projection term == labels None
    unknown = torch.full_like(y, -1)
    torch.testing.assert_close(D(x, unknown)[0], D(x, None)[0])
    # class logits are returned for accuracy logging
    assert [lg.shape[1] for lg in D(x, y)[1]] == CLASSES


def test_dcgan_init() -> None:
    cfg = tiny_cfg("dcgan", 64, width=16)
    G, D = build(cfg)
    convs = [m.weight for m in G.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    w = torch.cat([c.flatten() for c in convs])
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    bn = torch.cat([m.weight for m in D.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(bn.mean().item() - 1.0) < 0.01 and 0.005 < bn.std().item() < 0.05


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
@pytest.mark.parametrize(
    ("head", "sn"),
    [("separate", "none"), ("projection", "none"), ("classifier", "none"), ("projection", "both")],
)
def test_bf16_autocast(arch: str, head: str, sn: str) -> None:
    cfg = tiny_cfg(arch, 32, True, head)
    if sn == "both":  # with conditional BatchNorm in G, as configs/sngan.yaml trains in bf16
        cfg = dataclasses.replace(cfg, spectral_norm=sn, g_condition="cbn")
    G, D = build(cfg, norm="none" if sn == "both" else "batch")
    z, y = batch(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = G(z, y)
        adv, logits = D(x, y)
    assert x.shape == (4, 3, 32, 32) and adv.shape == (4,)
    assert torch.isfinite(adv.float()).all() and all(torch.isfinite(lg.float()).all() for lg in logits)
    (adv.float().sum() + sum(lg.float().sum() for lg in logits)).backward()


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_channels_last_matches(arch: str) -> None:
    cfg = tiny_cfg(arch, 32, True, "projection")
    G, D = build(cfg)
    z, y = batch(cfg)
    x = G(z, y)
    adv, logits = D(x, y)
    G_cl = G.to(memory_format=torch.channels_last)
    D_cl = D.to(memory_format=torch.channels_last)
    x_cl = G_cl(z, y)
    adv_cl, logits_cl = D_cl(x.contiguous(memory_format=torch.channels_last), y)
    torch.testing.assert_close(x_cl, x, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(adv_cl, adv, rtol=1e-4, atol=1e-5)
    for a, b in zip(logits_cl, logits, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("head", "sn", "cond"),
    [("projection", "none", "concat"), ("classifier", "none", "concat"), ("projection", "both", "cbn")],
)
def test_compile_fullgraph(head: str, sn: str, cond: str) -> None:
    """No graph breaks (no data-dependent Python control flow); eager backend: tracing only."""
    torch._dynamo.reset()
    cfg = dataclasses.replace(tiny_cfg("resnet", 16, True, head), spectral_norm=sn, g_condition=cond)
    G, D = build(cfg)
    z, y = batch(cfg)
    Gc = torch.compile(G, backend="eager", fullgraph=True)
    Dc = torch.compile(D, backend="eager", fullgraph=True)
    adv, logits = Dc(Gc(z, y), y)
    assert adv.shape == (4,) and len(logits) == len(CLASSES)


def test_study_parameter_counts() -> None:
    """The study's 64px DCGAN (ngf = ndf = 64) matches pytorch/examples' DCGAN up to biases."""
    cfg = ModelConfig(arch="dcgan", conditional=False, image_size=64, z_dim=100, g_channels=64, d_channels=64)
    G, D = build_generator(cfg, []), build_discriminator(cfg, [], "batch")
    # pytorch/examples: G 3,576,704 and D 2,765,568; here +3 (RGB conv bias) and
    # +65 (first D conv bias, linear head bias).
    assert count_parameters(G) == 3_576_704 + 3
    assert count_parameters(D) == 2_765_568 + 65


# --- spectral norm (model.spectral_norm) and conditional BatchNorm in G (model.g_condition)

WEIGHT_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)


def variant_cfg(arch: str, sn: str = "none", cond: str = "concat", head: str = "projection") -> ModelConfig:
    return dataclasses.replace(tiny_cfg(arch, head=head), spectral_norm=sn, g_condition=cond)


def _sigma(w: torch.Tensor) -> float:
    """Largest singular value, computed independently of the power iteration."""
    return torch.linalg.matrix_norm(w.detach().flatten(1), ord=2).item()


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
@pytest.mark.parametrize("head", ["separate", "projection"])
def test_spectral_norm_keeps_d_layers_at_one(arch: str, head: str) -> None:
    cfg = variant_cfg(arch, "d", head=head)
    norm = d_norm_of(Config(model=cfg))
    assert norm == "none"  # auto resolves to no BatchNorm in an SN-GAN D
    _, D = build(cfg, norm=norm)
    D = D.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.0, 0.9))
    g = torch.Generator().manual_seed(2)
    for _ in range(40):  # hinge-loss D steps on random "real" and "fake" images
        real, fake = (torch.rand(8, 3, 16, 16, generator=g) * 2 - 1 for _ in range(2))
        y = torch.stack([torch.randint(0, n, (8,), generator=g) for n in CLASSES], dim=1)
        adv_r, adv_f = D(real.contiguous(memory_format=torch.channels_last), y)[0], D(fake, y)[0]
        loss = torch.relu(1 - adv_r).mean() + torch.relu(1 + adv_f).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    D.eval()  # reading .weight in train mode would run one more power iteration
    sigmas = {n: _sigma(m.weight) for n, m in spectral_weights(D)}
    assert len(sigmas) == sum(isinstance(m, WEIGHT_LAYERS) for m in D.modules()) > 0
    off = {n: round(s, 3) for n, s in sigmas.items() if abs(s - 1) > 0.05}
    assert not off, f"layers of D whose largest singular value is not ~1: {off}"
    # the check can fail: without spectral norm the same layers are far from 1
    _, raw = build(variant_cfg(arch, head=head), norm="none")
    assert all(abs(_sigma(m.weight) - 1) > 0.05 for m in raw.modules() if isinstance(m, WEIGHT_LAYERS))
    assert not spectral_weights(raw) and not spectral_weights(build(cfg)[0])  # G only with "both"


def test_spectral_norm_d_norm_choices() -> None:
    both = variant_cfg("dcgan", "both")
    assert both.d_norm == "auto" and d_norm_of(Config(model=both)) == "none"  # resolved, not rewritten
    kept = dataclasses.replace(tiny_cfg("dcgan"), d_norm="batch", spectral_norm="d")
    assert d_norm_of(Config(model=kept)) == "batch"
    assert ModelConfig().d_norm == "auto" and ModelConfig().spectral_norm == "none"
    assert d_norm_of(Config()) == "batch"


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
@pytest.mark.parametrize(("sn", "cond"), [("both", "concat"), ("none", "cbn"), ("both", "cbn")])
def test_variants_train_mode_and_channels_last(arch: str, sn: str, cond: str) -> None:
    """Every parameter gets a gradient; channels_last (on a deep copy, as the EMA makes) matches."""
    cfg = variant_cfg(arch, sn, cond)
    G, D = build(cfg, norm="none" if sn == "both" else "batch")
    assert bool(spectral_weights(G)) == (sn == "both")
    G_cl = copy.deepcopy(G).to(memory_format=torch.channels_last)
    D_cl = copy.deepcopy(D).to(memory_format=torch.channels_last)
    z, y = batch(cfg)
    x, x_cl = G(z, y), G_cl(z, y)
    torch.testing.assert_close(x_cl, x, rtol=1e-4, atol=1e-5)
    adv, logits = D(x, y)
    torch.testing.assert_close(D_cl(x_cl, y)[0], adv, rtol=1e-4, atol=1e-5)
    ((adv * torch.randn(4)).sum() + sum(lg.sum() for lg in logits)).backward()
    for net in (G, D):
        dead = [n for n, g in _grads(net).items() if g is None or not g.abs().sum() > 0]
        assert not dead, f"{type(net).__name__} params without gradient: {dead}"


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_cbn_labels_condition_the_output(arch: str) -> None:
    cfg = variant_cfg(arch, cond="cbn")
    G, _ = build(cfg)
    cbns = [m for m in G.modules() if isinstance(m, ConditionalBatchNorm2d)]
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in G.modules())
    assert len(cbns) == n_bn > 0  # every BatchNorm of G is conditional
    for m in cbns:  # gain 1, bias 0 for every class
        assert not m.gain_embed.any() and not m.bias_embed.any()
        assert torch.equal(m.bn.weight, torch.ones_like(m.bn.weight)) and not m.bn.bias.any()
    z, y = batch(cfg)
    y2 = y.clone()
    y2[:, 0] = (y[:, 0] + 1) % CLASSES[0]
    G.eval()
    torch.testing.assert_close(G(z, y), G(z, y2))  # at init every CBN is plain BatchNorm
    opt = torch.optim.Adam(G.parameters(), lr=1e-2)
    G.train()
    for _ in range(3):  # learn label-dependent images
        loss = (G(z, y) - y[:, :1, None, None].float()).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    G.eval()
    assert not torch.allclose(G(z, y), G(z, y2), atol=1e-4)  # z fixed, label changed
    assert torch.equal(G(z, y), G(z, y))  # label fixed: deterministic
    code = torch.cat(
        [
            nn.functional.one_hot(y[:, i].clamp(min=0), n) * (y[:, i : i + 1] >= 0)
            for i, n in enumerate(CLASSES)
        ],
        1,
    )
    torch.testing.assert_close(G(z, code.float()), G(z, y))  # soft codes take the same path
    with pytest.raises(ValueError, match="labels"):
        G(z)


def test_cbn_refused_without_labels() -> None:
    with pytest.raises(ConfigError, match="model.g_condition") as e:
        ModelConfig(conditional=False, g_condition="cbn")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="cbn"):
        build_generator(variant_cfg("dcgan", cond="cbn"), [])


@pytest.mark.parametrize(("arch", "cond"), [("dcgan", "cbn"), ("resnet", "concat"), ("resnet", "cbn")])
def test_spectral_norm_export_round_trip(tmp_path: Path, arch: str, cond: str) -> None:
    cfg = Config(name="sn", model=variant_cfg(arch, "both", cond))
    G, _ = build(cfg.model)
    z, y = batch(cfg.model)
    opt = torch.optim.Adam(G.parameters(), lr=1e-2)
    for _ in range(2):  # move weights and the power-iteration vectors away from their init
        opt.zero_grad()
        G(z, y).square().mean().backward()
        opt.step()
    ema = EMA(G, 0.5)  # what training exports
    ema.update()
    meta = generator_meta(cfg, {"hair": ["a", "b", "c"], "eyes": ["d", "e"]})
    assert meta["model"]["spectral_norm"] == "both" and meta["model"]["g_condition"] == cond
    export_generator(ema.shadow, meta, tmp_path)
    assert any(
        k.endswith("parametrizations.weight.0._u") for k in load_file(str(tmp_path / "generator.safetensors"))
    )
    loaded, _ = load_generator(tmp_path / "generator.safetensors")
    assert torch.equal(loaded(z, y), ema.shadow(z, y))


def test_export_without_new_keys_still_loads(tmp_path: Path) -> None:
    """An export written before spectral_norm/g_condition existed has neither key."""
    cfg = Config(name="old", model=tiny_cfg("dcgan"))
    G, _ = build(cfg.model)
    meta = generator_meta(cfg, {"hair": ["a", "b", "c"], "eyes": ["d", "e"]})
    del meta["model"]["spectral_norm"], meta["model"]["g_condition"]
    export_generator(G.eval(), meta, tmp_path)
    loaded, _ = load_generator(tmp_path)
    z, y = batch(cfg.model)
    assert torch.equal(loaded(z, y), G(z, y))


def test_bake_spectral_norm_gives_plain_weights() -> None:
    """For ONNX export (torch.vdot has no ONNX op): same outputs, the keys of a net without SN."""
    cfg = variant_cfg("resnet", "both", "cbn")
    G, _ = build(cfg)
    z, y = batch(cfg)
    G(z, y)  # one training-mode power iteration
    G.eval()
    before = G(z, y)
    bake_spectral_norm(G)
    assert not spectral_weights(G) and G.training is False
    assert (
        G.state_dict().keys() == build(dataclasses.replace(cfg, spectral_norm="none"))[0].state_dict().keys()
    )
    torch.testing.assert_close(G(z, y), before, rtol=1e-5, atol=1e-6)
