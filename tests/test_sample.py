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
