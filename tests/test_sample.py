"""`ganscale sample`: grids, per-image folders, all conditions, GIFs, and clear errors."""

import json
import subprocess
import sys

import pytest
from conftest import REPO
from PIL import Image
from safetensors.torch import load_file, save_file

from ganscale.config import load_config
from ganscale.errors import GanscaleError
from ganscale.outputs.export import load_generator
from ganscale.outputs.sampling import sample_command
from ganscale.train.trainer import train


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus_cache):
    run = tmp_path_factory.mktemp("sample") / "run"
    cfg = load_config(REPO / "configs/tiny.yaml", [f"data.cache_dir={corpus_cache}", "train.max_steps=2"])
    train(cfg, run)
    return run


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "ganscale", "sample", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_grid_has_n_images_of_the_right_size(run, tmp_path):
    out = sample_command(run, tags="aqua hair orange eyes", n=9, out=tmp_path / "g.png")
    w, h = Image.open(out).size
    # 3x3 grid of 16 px images with 2 px padding
    assert (w, h) == (3 * 18 + 2, 3 * 18 + 2)


def test_folder_output_writes_one_png_per_image(run, tmp_path):
    r = _cli(run, "--tags", "Aqua Hair  orange eyes", "--n", "5", "--out", f"{tmp_path}/imgs/")
    assert r.returncode == 0, r.stderr
    files = sorted((tmp_path / "imgs").glob("*.png"))
    assert len(files) == 5 and all(Image.open(f).size == (16, 16) for f in files)


def test_all_conditions_matrix(run, tmp_path):
    out = sample_command(run, all_conditions=True, n=2, out=tmp_path / "all.png")
    w, h = Image.open(out).size
    assert (w, h) == (2 * 18 + 2, 120 * 18 + 2)  # 12 hair x 10 eyes rows


def test_interpolation_gif(run, tmp_path):
    out = sample_command(
        run, tags="blue hair red eyes", interpolate="pink hair green eyes", n=6, out=tmp_path / "walk.gif"
    )
    im = Image.open(out)
    assert im.n_frames == 6 and im.size == (16, 16)


def test_same_seed_same_images(run, tmp_path):
    a = sample_command(run, tags="blue hair red eyes", n=4, seed=3, out=tmp_path / "a.png")
    b = sample_command(run, tags="blue hair red eyes", n=4, seed=3, out=tmp_path / "b.png")
    c = sample_command(run, tags="blue hair red eyes", n=4, seed=4, out=tmp_path / "c.png")
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_unknown_tag_is_one_line_with_valid_names(run):
    r = _cli(run, "--tags", "teal hair blue eyes")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "teal" in lines[0] and "aqua" in lines[0]


def test_export_whose_json_disagrees_is_refused(run, tmp_path):
    meta = json.loads((run / "generator.json").read_text())
    meta["model"]["g_channels"] = 12
    (tmp_path / "generator.json").write_text(json.dumps(meta))
    save_file(load_file(str(run / "generator.safetensors")), str(tmp_path / "generator.safetensors"))
    with pytest.raises(GanscaleError, match="does not match generator.json"):
        load_generator(tmp_path / "generator.safetensors")


def test_export_loads_without_training_code_paths(run):
    G, meta = load_generator(run / "generator.safetensors")
    assert not G.training and meta["num_classes"] == [12, 10]


# --------------------------------------------------------------------------- truncation (psi)

PSIS = (1.0, 0.7, 0.4, 0.1)
TWO = ["blue hair red eyes", "pink hair green eyes"]


def _untruncated(G, meta, conditions, per, seed):
    """The images of the z as drawn (N(0, z_sigma^2) from the seed, same z per column), no psi."""
    import numpy as np
    import torch

    from ganscale.outputs.latents import condition_labels, draw_z

    z = torch.from_numpy(np.tile(draw_z(per, meta, seed), (len(conditions), 1)))
    labels = torch.from_numpy(condition_labels(conditions, meta["attributes"]).repeat(per, 0))
    with torch.no_grad():
        return G(z, labels).float()


def test_truncation_pulls_faces_toward_the_mean_face(run):
    import torch

    from ganscale.outputs.latents import condition_labels, draw_z
    from ganscale.outputs.sampling import generate

    G, meta = load_generator(run)
    cpu = torch.device("cpu")
    z = draw_z(32, meta, 5)
    for psi in PSIS:
        assert (draw_z(32, meta, 5, psi=psi) == (z * psi if psi != 1 else z)).all()
    labels = torch.from_numpy(condition_labels(TWO, meta["attributes"]).repeat(32, 0))
    with torch.no_grad():
        mean_face = G(torch.zeros(64, meta["z_dim"]), labels).float()  # psi = 0
    dist = [float((generate(G, meta, TWO, 32, 5, cpu, psi=p) - mean_face).abs().mean()) for p in PSIS]
    assert all(a > b for a, b in zip(dist, dist[1:], strict=False)), dist
    assert dist[-1] < 0.5 * dist[0], dist
    # psi = 1 is no truncation at all: exactly the images of the z as drawn
    assert torch.equal(generate(G, meta, TWO, 8, 3, cpu, psi=1.0), _untruncated(G, meta, TWO, 8, 3))
    assert torch.equal(generate(G, meta, TWO, 8, 3, cpu), _untruncated(G, meta, TWO, 8, 3))


def test_truncation_on_the_engine_path_is_the_same_psi(run, tmp_path):
    import numpy as np

    from ganscale.outputs.engines import TorchEngine
    from ganscale.outputs.latents import draw_z

    engine = TorchEngine(run)
    meta = engine.meta
    before = (np.random.default_rng(4).standard_normal((16, meta["z_dim"])) * meta["z_sigma"]).astype(
        np.float32
    )
    assert np.array_equal(draw_z(16, meta, 4), before) and np.array_equal(
        draw_z(16, meta, 4, psi=1.0), before
    )
    labels = np.array([[3, 8]] * 16)
    mean_face = engine.raw(np.zeros_like(before), labels)
    dist = []
    for psi in PSIS:
        z = draw_z(16, meta, 4, psi=psi)
        assert np.allclose(z, before * psi, rtol=1e-6, atol=1e-7)
        dist.append(float(np.abs(engine.raw(z, labels) - mean_face).mean()))
    assert all(a > b for a, b in zip(dist, dist[1:], strict=False)), dist
    a = sample_command(run, tags=TWO[0], n=4, seed=2, out=tmp_path / "a.png", truncation=1.0)
    b = sample_command(run, tags=TWO[0], n=4, seed=2, out=tmp_path / "b.png")
    c = sample_command(run, tags=TWO[0], n=4, seed=2, out=tmp_path / "c.png", truncation=0.4)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_training_grid_draws_the_faces_sample_draws(run, tmp_path):
    """The training-time sample grid (`generate`, G in memory) and `ganscale sample` (an engine)
    draw the same z and conditions from a seed: the same pixels."""
    import numpy as np
    import torch

    from ganscale.outputs.images import to_uint8
    from ganscale.outputs.sampling import generate

    G, meta = load_generator(run)
    folder = sample_command(run, tags="; ".join(TWO), n=6, seed=3, out=f"{tmp_path}/f/", device="cpu")
    written = np.stack([np.asarray(Image.open(folder / f"{i:05d}.png")) for i in range(6)])
    grid = to_uint8(generate(G, meta, TWO, 3, seed=3, device=torch.device("cpu")))
    assert np.array_equal(written, grid)
    assert not np.array_equal(grid[:3], grid[3:])  # two conditions, same z: other faces


@pytest.mark.parametrize("psi", [0.0, -0.5, 1.5, float("nan")])
def test_truncation_outside_0_1_is_refused(run, tmp_path, psi):
    with pytest.raises(GanscaleError, match=r"--truncation .*\(0, 1\]"):
        sample_command(run, tags=TWO[0], n=4, out=tmp_path / "x.png", truncation=psi)
    assert not (tmp_path / "x.png").exists()


def test_truncation_cli_error_is_one_line(run, tmp_path):
    r = _cli(run, "--tags", TWO[0], "--truncation", "1.5", "--out", tmp_path / "x.png")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--truncation 1.5" in lines[0] and "(0, 1]" in lines[0]


# --------------------------------------------------------------------------- readable grids


def test_labelled_upscaled_grid_shows_the_faces_and_one_label_per_row(run, tmp_path):
    import numpy as np

    tags = "; ".join([*TWO, "aqua hair orange eyes"])
    plain = sample_command(run, tags=tags, n=18, out=tmp_path / "plain.png")
    assert Image.open(plain).size == (6 * 18 + 2, 3 * 18 + 2)  # the library default: as before
    big = sample_command(run, tags=tags, n=18, out=tmp_path / "big.png", labels=True, min_cell=60)
    im = np.asarray(Image.open(big).convert("RGB")).astype(int)
    cell = 64  # 16 px x 4, the smallest whole factor reaching 60 px
    body_w, body_h = 6 * (cell + 2) + 2, 3 * (cell + 2) + 2  # wider than the caption
    top, left = im.shape[0] - body_h, im.shape[1] - body_w
    assert left > 60 and top > 8  # room for the tags at the left and a caption above
    small = np.asarray(Image.open(plain).convert("RGB")).astype(int)
    for r in range(3):
        for c in range(6):
            face = small[2 + r * 18 : 18 + r * 18, 2 + c * 18 : 18 + c * 18]
            y, x = top + 2 + r * (cell + 2), left + 2 + c * (cell + 2)
            assert np.array_equal(im[y : y + cell, x : x + cell], face.repeat(4, 0).repeat(4, 1))
        band = im[top + 2 + r * (cell + 2) : top + 2 + r * (cell + 2) + cell, :left]
        assert (band.max(2) < 100).sum() > 20, f"no text beside row {r}"
    gaps = im[top + 2 + cell : top + 4 + cell, :left]  # between rows 0 and 1: white
    assert (gaps > 240).all()
    assert (im[:top, left:].max(2) < 100).any()  # the caption (seed, same z down each column)


def test_cli_labels_several_condition_grids_by_default(run, tmp_path):
    from typer.testing import CliRunner

    from ganscale.cli import _register_groups, app

    _register_groups()
    sizes = {}
    for name, extra in {"auto": [], "off": ["--no-labels"], "one": []}.items():
        tags = TWO[0] if name == "one" else "; ".join(TWO)
        out = tmp_path / f"{name}.png"
        r = CliRunner().invoke(
            app, ["sample", str(run), "--tags", tags, "--n", "4", "--out", str(out), *extra]
        )
        assert r.exit_code == 0, r.output
        sizes[name] = Image.open(out).size
    assert sizes["off"] == (2 * 18 + 2, 2 * 18 + 2) == sizes["one"]
    assert sizes["auto"][0] > sizes["off"][0] + 60 and sizes["auto"][1] > sizes["off"][1]
    r = CliRunner().invoke(app, ["sample", str(run), "--tags", TWO[0], "--min-cell", "64", "--n", "4",
                                 "--out", str(tmp_path / "m.png")])  # fmt: skip
    assert r.exit_code == 0 and Image.open(tmp_path / "m.png").size == (2 * 66 + 2, 2 * 66 + 2)


# --------------------------------------------------------------------------- conditions: --cond, values alone


def test_cond_flags_and_values_alone_name_the_same_condition(run, tmp_path):
    tags = sample_command(run, tags="blonde hair yellow eyes", n=4, seed=1, out=tmp_path / "t.png")
    cond = sample_command(run, cond=["hair=blonde", "EYES=Yellow"], n=4, seed=1, out=tmp_path / "c.png")
    alone = sample_command(run, tags="blonde yellow", n=4, seed=1, out=tmp_path / "v.png")
    assert tags.read_bytes() == cond.read_bytes() == alone.read_bytes()
    r = _cli(run, "--cond", "hair=blue", "--cond", "eyes=red", "--n", "4", "--out", tmp_path / "cli.png")
    assert r.returncode == 0, r.stderr
    same = sample_command(run, tags="blue hair red eyes", n=4, out=tmp_path / "same.png")
    assert (tmp_path / "cli.png").read_bytes() == same.read_bytes()
    walks = [
        sample_command(run, interpolate="pink hair green eyes", n=3, out=tmp_path / f"{i}.gif", **start)
        for i, start in enumerate([{"tags": "blue hair red eyes"}, {"cond": ["hair=blue", "eyes=red"]}])
    ]
    assert walks[0].read_bytes() == walks[1].read_bytes() and Image.open(walks[0]).n_frames == 3


def test_all_conditions_with_a_fixed_attribute(run, tmp_path):
    out = sample_command(run, all_conditions=True, cond=["hair=blue"], n=2, out=tmp_path / "blue.png")
    assert Image.open(out).size == (2 * 18 + 2, 10 * 18 + 2)  # blue hair x the 10 eye colours


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"tags": "aqua red"}, ["'aqua'", "hair and eyes", "--cond"]),  # aqua is a hair and an eye colour
        ({"tags": "blonde"}, ["no value of eyes"]),
        ({"cond": ["hair=blue"]}, ["no value for eyes", "--cond eyes=VALUE", "--all-conditions"]),
        ({"cond": ["hair=teal", "eyes=red"]}, ["hair is one of", "aqua"]),
        ({"cond": ["skin=green", "eyes=red"]}, ["ATTR one of hair, eyes"]),
        ({"cond": ["hair=blue", "eyes=red"], "tags": "blue hair red eyes"}, ["use one of them"]),
    ],
)
def test_bad_conditions_are_one_line_errors(run, tmp_path, kwargs, words):
    with pytest.raises(GanscaleError) as e:
        sample_command(run, n=4, out=tmp_path / "x.png", **kwargs)
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "x.png").exists()


def test_all_conditions_refused_past_the_limit():
    from ganscale.outputs.latents import MAX_ALL_CONDITIONS, all_conditions

    big = {"a": [f"a{i}" for i in range(20)], "b": [f"b{i}" for i in range(20)]}
    with pytest.raises(GanscaleError, match=f"20 x 20 = 400 combinations, over {MAX_ALL_CONDITIONS}"):
        all_conditions(big)
    assert all_conditions(big, {"a": 3}).tolist() == [[3, j] for j in range(20)]
