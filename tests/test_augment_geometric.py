"""The study's flip + rotation on the device: the PIL geometry, the CPU path's parameters, exact resume."""

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image
from safetensors.torch import load_file

from ganscale.augment import RealBatchAugment
from ganscale.augment.geometric import affine_theta, to_unit_range, warp
from ganscale.config import DataConfig, load_config
from ganscale.corpus.pack import pack
from ganscale.corpus.synth import write_synthetic
from ganscale.data.decode import ANGLE_EPS_RAD, apply_augment, augment, augment_params, draw_params
from ganscale.data.loader import build_loader
from ganscale.train.trainer import train

S = 32
LEVEL = 1 / 127.5  # one uint8 level in [-1, 1]


def smooth_image(size: int = S) -> np.ndarray:
    """Slow sinusoids in every channel: bilinear resampling of it is well defined everywhere."""
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.stack(
        [
            127.5 + 100 * np.sin(xx / 5.0 + yy / 7.0),
            127.5 + 100 * np.cos(yy / 4.0),
            127.5 + 90 * np.sin((xx - yy) / 6.0),
        ],
        -1,
    )
    return img.round().astype(np.uint8)


def device_warp(img: np.ndarray, flip: bool, angle: float) -> np.ndarray:
    """float [0, 255] HWC of the device path for one image."""
    x = to_unit_range(torch.from_numpy(img).permute(2, 0, 1)[None])
    out = warp(x, torch.tensor([[float(flip), angle]]))
    return ((out[0].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.float64)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("angle", [-5.0, -2.3, 0.8, 4.99, 17.0])
def test_device_warp_matches_pil(flip, angle):
    """Tolerance: PIL rounds its bilinear result down to uint8, the device keeps float; so the
    device image is within one level of PIL's everywhere and, away from the borders (3 px),
    on average half a level above it (the truncation), with PIL == floor(device) nearly always."""
    img = smooth_image()
    ref = np.asarray(apply_augment(Image.fromarray(img), flip, angle), dtype=np.float64)
    got = device_warp(img, flip, angle)
    diff = got - ref
    assert np.abs(diff).max() <= 1.0 + 1e-3
    inner = diff[3:-3, 3:-3]
    assert 0.3 < inner.mean() < 0.7
    assert np.mean(np.floor(got[3:-3, 3:-3] + 1e-3) == ref[3:-3, 3:-3]) > 0.97


def test_flip_only_and_identity_are_exact():
    img = smooth_image()
    x = to_unit_range(torch.from_numpy(np.stack([img, img])).permute(0, 3, 1, 2))
    out = warp(x, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))  # no rotation in the batch: indexing
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])
    tiny = math.degrees(ANGLE_EPS_RAD) / 2  # below the CPU path's threshold: not rotated
    assert torch.equal(warp(x, torch.tensor([[0.0, tiny], [1.0, -tiny]])), torch.stack([x[0], x[1].flip(-1)]))
    assert torch.equal(warp(x, torch.zeros(2, 2)), x)
    theta = affine_theta(torch.tensor([[0.0, 0.0], [1.0, 0.0]]), S, S)
    assert torch.equal(theta, torch.tensor([[[1.0, 0, 0], [0, 1, 0]], [[-1.0, 0, 0], [0, 1, 0]]]))


def test_one_warp_for_a_batch_equals_per_image():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, S, S, 3), dtype=np.uint8)
    params = torch.tensor([[1, 3.0], [0, -4.5], [0, 0.0], [1, 0.0], [1, -1.0], [0, 2.0]])
    x = to_unit_range(torch.from_numpy(imgs).permute(0, 3, 1, 2))
    batch = warp(x, params)
    for i in range(6):
        assert torch.allclose(batch[i : i + 1], warp(x[i : i + 1], params[i : i + 1]), atol=1e-6)


def test_parameters_are_the_cpu_paths_and_distributed_as_before():
    """The loader draws exactly what the PIL path drew (same generator, same order), so the
    distribution is the study's: fair flips, angles uniform on [-d, d]."""
    d, n = 5.0, 6000
    params = [augment_params(7, 2, 0, f"/x/data-{i % 9:06d}.tar", f"k{i}", True, d) for i in range(n)]
    for i in range(0, n, 600):  # the historical draw: a random.Random per record, flip then angle
        rng = random.Random(f"aug:7:2:0:data-{i % 9:06d}.tar#k{i}")
        flip = rng.random() < 0.5
        angle = rng.uniform(-d, d)
        assert params[i] == (flip, angle)
    flips = np.array([p[0] for p in params], float)
    angles = np.array([p[1] for p in params])
    assert abs(flips.mean() - 0.5) < 0.03
    assert angles.min() >= -d and angles.max() <= d and angles.min() < -0.95 * d and angles.max() > 0.95 * d
    hist, _ = np.histogram(angles, bins=10, range=(-d, d))
    assert hist.min() > 0.8 * n / 10 and hist.max() < 1.2 * n / 10
    assert augment_params(7, 2, 0, "u", "k", False, 0.0) == (False, 0.0)
    # PIL's augment() with an rng draws the same, so a loader-mode image is what it was
    img = Image.fromarray(smooth_image())
    r1, r2 = random.Random("s"), random.Random("s")
    a = np.asarray(augment(img, r1, True, d))
    b = np.asarray(apply_augment(img, *draw_params(r2, True, d)))
    assert np.array_equal(a, b)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("geo")
    write_synthetic(root / "src", 48, size=S, seed=5)
    pack(root / "src", root / "shards", size=S, per_shard=6)
    return root / "shards"


def _stream(corpus, **kw):
    cfg = DataConfig(
        source="shards", path=str(corpus), shuffle_buffer=16, rotate_degrees=8.0, pin_memory=False, **kw
    )
    return build_loader(cfg, image_size=S, batch_size=8, seed=3, rank=0, world_size=1)


def test_device_and_loader_paths_give_the_same_batches(corpus):
    """Same records, same parameters; images within one uint8 level (PIL's truncation)."""
    dev, cpu, raw = (
        _stream(corpus).iter_with_keys(),
        _stream(corpus, augment_on="loader").iter_with_keys(),
        _stream(corpus).iter_uint8(),
    )
    for _ in range(3):
        (x, y, kx), (u, v, ku), b = next(dev), next(cpu), next(raw)
        assert kx == ku == b.keys and torch.equal(y, v)
        assert b.images.dtype == torch.uint8 and b.images.shape == (8, 3, S, S) and b.aug.shape == (8, 2)
        for k, (flip, angle) in zip(b.keys, b.aug.tolist(), strict=True):
            url, key = k.rsplit("#", 1)
            want = augment_params(3, 0, 0, url, key, True, 8.0)
            assert flip == float(want[0]) and angle == pytest.approx(want[1], abs=1e-5)
        assert (x - u).abs().max() <= LEVEL + 1e-5
        assert (x - u).mean() > 0  # the device path does not truncate


def test_real_batch_augment_moves_converts_and_lays_out():
    img = torch.from_numpy(np.stack([smooth_image()] * 2)).permute(0, 3, 1, 2)  # NCHW over NHWC memory
    out = RealBatchAugment(torch.device("cpu"), torch.channels_last)(img, torch.tensor([[1.0, 2.0], [0, 0]]))
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    assert out.min() >= -1 and out.max() <= 1
    f = torch.rand(2, 3, S, S) * 2 - 1
    same = RealBatchAugment(torch.device("cpu"), torch.contiguous_format)(f)
    assert torch.equal(same, f)  # float batches fed in directly: moved as they are


@pytest.mark.slow
def test_trainer_resumes_exactly_with_device_augmentation_in_memory(tmp_path, corpus_cache):
    over = [
        f"data.cache_dir={corpus_cache}",
        "data.augment_on=device",
        "data.in_memory=true",
        "data.rotate_degrees=10",
        "train.max_steps=6",
        "checkpoint.every=3",
    ]

    def run(name, extra=(), resume=None):
        cfg = load_config(REPO / "configs/tiny.yaml", [*over, *extra])
        return train(cfg, tmp_path / name, resume=resume)

    run("straight")
    run("split", ["train.max_steps=3"])
    assert run("split", resume="latest").step == 6
    for f in ("G.safetensors", "D.safetensors"):
        a = load_file(str(tmp_path / "straight/checkpoints/step-0000006" / f))
        b = load_file(str(tmp_path / "split/checkpoints/step-0000006" / f))
        assert all(torch.equal(a[k], b[k]) for k in a), f


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_warp_on_cuda_sends_its_parameters_without_a_blocking_copy():
    """The flip mask and the warp's matrices go to the GPU from pinned memory, asynchronously
    (issue 21, item 6): under sync debug mode "error" a blocking host-to-device copy raises.
    The result is the CPU's (float rounding of grid_sample apart)."""
    rng = np.random.default_rng(0)
    x = to_unit_range(torch.from_numpy(rng.integers(0, 256, (6, 3, S, S), dtype=np.uint8)))
    params = torch.tensor([[1, 3.0], [0, -4.5], [0, 0.0], [1, 0.0], [1, -1.0], [0, 2.0]])
    flips = torch.tensor([[1, 0.0], [0, 0.0], [1, 0.0], [0, 0.0], [1, 0.0], [0, 0.0]])
    xc = x.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        rotated, flipped = warp(xc, params), warp(xc, flips)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(rotated.cpu(), warp(x, params), rtol=1e-5, atol=1e-5)
    assert torch.equal(flipped.cpu(), warp(x, flips))
