"""`ganscale data synth`: layout, exact labels, determinism, colours that can be told apart."""

import hashlib

import numpy as np
import typer
from PIL import Image
from typer.testing import CliRunner

from ganscale.corpus.cli import data_app
from ganscale.corpus.synth import EYE_RGB, HAIR_RGB, face_labels, iter_faces, write_synthetic
from ganscale.shardformat.vocab import EYE_COLOURS, HAIR_COLOURS, MLDS_ATTRIBUTES, parse_tags


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted((folder / "images").iterdir()):
        h.update(p.name.encode() + p.read_bytes())
    h.update((folder / "tags.csv").read_bytes())
    return h.hexdigest()


def test_layout_and_tags(tmp_path):
    write_synthetic(tmp_path, 40, size=24, seed=5)
    rows = (tmp_path / "tags.csv").read_text().splitlines()
    assert len(rows) == 40
    for i, row in enumerate(rows):
        rid, tags = row.split(",")
        assert rid == str(i)
        hair, eyes = parse_tags(tags, MLDS_ATTRIBUTES)
        assert tags == f"{HAIR_COLOURS[hair]} hair {EYE_COLOURS[eyes]} eyes"
        assert (hair, eyes) == face_labels(5, i)[1:]
        with Image.open(tmp_path / "images" / f"{i}.png") as im:
            assert im.size == (24, 24) and im.mode == "RGB"


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write_synthetic(a, 12, 32, seed=1)
    write_synthetic(b, 12, 32, seed=1)
    write_synthetic(c, 12, 32, seed=2)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_images_vary():
    arrays = [np.asarray(img, dtype=np.float32) for _, img, _, _ in iter_faces(8, 32, 0)]
    for i in range(1, 8):
        assert np.abs(arrays[0] - arrays[i]).mean() > 5


def _nearest(rgb, palette):
    names = list(palette)
    d = [np.sum((np.array(palette[n], dtype=float) - rgb) ** 2) for n in names]
    return names[int(np.argmin(d))]


def test_label_colours_are_present_and_distinct():
    # The palette entries are far apart, and each image contains its hair colour (the fringe)
    # and its eye colour (the irises) as pixels near the named colour.
    for palette in (HAIR_RGB, EYE_RGB):
        cols = np.array(list(palette.values()), dtype=float)
        dist = np.sqrt(((cols[:, None] - cols[None]) ** 2).sum(-1)) + np.eye(len(cols)) * 1e9
        assert dist.min() > 40
    for _, img, hair, eyes in iter_faces(60, 64, 11):
        px = np.asarray(img, dtype=float).reshape(-1, 3)
        hd = np.sqrt(((px - HAIR_RGB[HAIR_COLOURS[hair]]) ** 2).sum(-1))
        ed = np.sqrt(((px - EYE_RGB[EYE_COLOURS[eyes]]) ** 2).sum(-1))
        assert (hd < 30).sum() >= 40, HAIR_COLOURS[hair]
        assert (ed < 40).sum() >= 4, EYE_COLOURS[eyes]


def test_cli_synth(tmp_path):
    app = typer.Typer()
    app.add_typer(data_app, name="data")
    res = CliRunner().invoke(
        app,
        ["data", "synth", str(tmp_path / "s"), "--n", "10", "--size", "16", "--seed", "3", "--no-progress"],
    )
    assert res.exit_code == 0, res.output
    assert "images/s" in res.output
    assert len(list((tmp_path / "s" / "images").glob("*.png"))) == 10
