"""A run conditioned on attributes of its own (a class-folder corpus built here, values with
``_`` and ``-``): `sample --cond`, values alone in `--tags`, and the serve page's pickers."""

import json

import numpy as np
import pytest
from faultlib import cli_ok as _ganscale
from PIL import Image

from ganscale.outputs.sampling import sample_command

pytestmark = pytest.mark.slow

CLASSES = {"flags": (200, 30, 30), "smileys_emotion": (240, 200, 40), "travel-places": (30, 60, 200)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    for name, colour in CLASSES.items():
        (root / "src" / name).mkdir(parents=True)
        for i in range(12):
            noise = rng.integers(-40, 40, (16, 16, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "src" / name / f"{i}.png")
    _ganscale("data", "pack", root / "src", root / "shards", "--size", "16", "--no-progress")
    sets = [
        "data.source=shards",
        f"data.path={root / 'shards'}",
        "model.conditional=true",
        "train.max_steps=2",
    ]
    _ganscale("train", "configs/tiny.yaml", "--out", root / "run", *[a for s in sets for a in ("--set", s)])
    return root / "run"


def test_sample_by_cond_and_by_value_alone(run, tmp_path):
    attributes = json.loads((run / "generator.json").read_text())["attributes"]
    ((name, values),) = attributes.items()  # one attribute: the class folders
    assert values == sorted(CLASSES)
    c = sample_command(run, cond=[f"{name}=smileys_emotion"], n=4, seed=2, out=tmp_path / "c.png")
    t = sample_command(run, tags="Smileys Emotion", n=4, seed=2, out=tmp_path / "t.png")
    assert c.read_bytes() == t.read_bytes()
    every = sample_command(run, all_conditions=True, n=2, out=tmp_path / "all.png")
    assert Image.open(every).size == (2 * 18 + 2, 3 * 18 + 2)
    assert sorted((run / "samples").glob("*.png")), "the training-time grid of a run with its own values"


def test_serve_has_one_picker_per_attribute_and_the_same_faces(run, tmp_path):
    import base64
    import io

    from fastapi.testclient import TestClient

    from ganscale.serve.cli import build_app

    client = TestClient(build_app(run), base_url="http://127.0.0.1")
    info = client.get("/api/info").json()
    ((name, values),) = info["attributes"].items()
    assert values == sorted(CLASSES) and "Object.entries(INFO.attributes)" in client.get("/").text
    data = client.post(
        "/api/generate", json={"conditions": {name: "Travel-Places"}, "n": 1, "seed": 5}
    ).json()
    assert data["tags"] == [f"travel-places {name}"]
    one = sample_command(
        run, cond=[f"{name}=travel-places"], n=1, seed=5, device="cpu", out=f"{tmp_path}/one/"
    )
    grid = np.asarray(Image.open(io.BytesIO(base64.b64decode(data["image"].split(",", 1)[1]))).convert("RGB"))
    assert np.array_equal(grid[2:18, 2:18], np.asarray(Image.open(one / "00000.png")))
