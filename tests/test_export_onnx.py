"""`ganscale export --format onnx`: parity with PyTorch, the ONNX path of `sample` and `serve`."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import typer
from conftest import REPO
from PIL import Image
from typer.testing import CliRunner

from ganscale.config import load_config
from ganscale.outputs.engines import OnnxEngine, TorchEngine
from ganscale.outputs.export import load_generator
from ganscale.outputs.latents import condition_code, draw_z
from ganscale.outputs.sampling import sample_command
from ganscale.serve.cli import register
from ganscale.train.trainer import train

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus_cache):
    run = tmp_path_factory.mktemp("onnx") / "run"
    cfg = load_config(REPO / "configs/tiny.yaml", [f"data.cache_dir={corpus_cache}", "train.max_steps=4"])
    train(cfg, run)
    return run


def cli(*args):
    app = typer.Typer()
    register(app)
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def onnx_dir(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx-export")
    r = cli("export", run, "--format", "onnx", "--out", out)
    assert r.exit_code == 0, r.output
    return out


def test_files_and_graph_interface(run, onnx_dir):
    assert {p.name for p in onnx_dir.iterdir()} >= {"generator.onnx", "generator.json", "training.json"}
    assert json.loads((onnx_dir / "generator.json").read_text()) == json.loads(
        (run / "generator.json").read_text()
    )
    s = ort.InferenceSession(str(onnx_dir / "generator.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape[1], i.type) for i in s.get_inputs()] == [
        ("z", 16, "tensor(float)"),
        ("labels", 2, "tensor(int64)"),
    ]
    assert [o.name for o in s.get_outputs()] == ["images"]


def test_onnxruntime_matches_pytorch_within_1e_3(run, onnx_dir):
    G, meta = load_generator(run)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(32, meta["z_dim"], generator=gen) * meta["z_sigma"]
    labels = torch.stack([torch.randint(0, n, (32,), generator=gen) for n in meta["num_classes"]], 1)
    s = ort.InferenceSession(str(onnx_dir / "generator.onnx"), providers=["CPUExecutionProvider"])
    got = s.run(None, {"z": z.numpy(), "labels": labels.numpy()})[0]
    with torch.no_grad():
        want = G(z, labels).numpy()
    assert got.shape == (32, 3, 16, 16) and np.abs(got).max() <= 1.0
    assert np.abs(got - want).max() < 1e-3
    # the mixed-condition inputs (interpolation) match the soft one-hot code too
    to = torch.flip(labels, [0])
    t = torch.linspace(0, 1, 32)[:, None]
    got = s.run(None, {"z": z.numpy(), "labels": labels.numpy(), "labels_to": to.numpy(), "t": t.numpy()})[0]
    code = torch.from_numpy(condition_code(labels.numpy(), meta["num_classes"], to.numpy(), t.numpy()))
    with torch.no_grad():
        assert np.abs(got - G(z, code).numpy()).max() < 1e-3


def test_engines_agree_on_images(run, onnx_dir):
    torch_engine, onnx_engine = TorchEngine(run), OnnxEngine(onnx_dir / "generator.onnx")
    z = draw_z(8, torch_engine.meta, seed=3, psi=0.5)
    assert np.allclose(z, 0.5 * draw_z(8, torch_engine.meta, seed=3))
    labels = np.array([[3, 8]] * 8)
    a, b = torch_engine.images(z, labels), onnx_engine.images(z, labels)
    assert a.shape == (8, 16, 16, 3) and np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_sample_accepts_the_onnx_file(onnx_dir, tmp_path):
    onnx = onnx_dir / "generator.onnx"
    out = sample_command(onnx, tags="blue hair red eyes", n=9, out=tmp_path / "g.png")
    assert Image.open(out).size == (3 * 18 + 2, 3 * 18 + 2)
    folder = sample_command(
        onnx_dir, tags="blue hair red eyes; pink hair green eyes", n=4, out=f"{tmp_path}/f/"
    )
    assert len(list(folder.glob("*.png"))) == 4
    gif = sample_command(
        onnx, tags="blue hair red eyes", interpolate="pink hair green eyes", n=5, out=tmp_path / "w.gif"
    )
    assert Image.open(gif).n_frames == 5
    same = [
        sample_command(onnx, tags="blue hair red eyes", n=4, seed=2, out=tmp_path / f"{i}.png") for i in "ab"
    ]
    assert same[0].read_bytes() == same[1].read_bytes()
    r = subprocess.run(
        [sys.executable, "-m", "ganscale", "sample", str(onnx), "--tags", "teal hair red eyes"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "teal" in r.stderr


def test_onnx_sampling_never_imports_torch(onnx_dir, tmp_path):
    code = (
        "import sys\n"
        "from ganscale.outputs.sampling import sample_command\n"
        f"sample_command({str(onnx_dir / 'generator.onnx')!r}, tags='blue hair red eyes', n=4, "
        f"out={str(tmp_path / 'x.png')!r})\n"
        f"sample_command({str(onnx_dir)!r}, tags='blue hair red eyes', interpolate='red hair blue eyes', "
        f"n=3, out={str(tmp_path / 'x.gif')!r})\n"
        "from ganscale.outputs.engines import load_engine\n"
        f"load_engine({str(onnx_dir)!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]
    assert Image.open(tmp_path / "x.png").size == (2 * 18 + 2, 2 * 18 + 2)


def test_serve_runs_the_onnx_export(onnx_dir):
    from fastapi.testclient import TestClient

    from ganscale.serve.cli import build_app

    client = TestClient(build_app(onnx_dir / "generator.onnx"), base_url="http://127.0.0.1")
    info = client.get("/api/info").json()
    assert info["backend"] == "onnx" and info["facts"]["step"] == 4
    r = client.post("/api/generate", json={"conditions": {"hair": "blue", "eyes": "red"}, "n": 4, "seed": 1})
    assert r.status_code == 200 and r.json()["tags"] == ["blue hair red eyes"] * 4


def test_bad_format_and_broken_onnx_are_clear_errors(run, onnx_dir, tmp_path):
    from ganscale.errors import GanscaleError

    r = cli("export", run, "--format", "tflite")
    assert isinstance(r.exception, GanscaleError) and "folder, onnx" in str(r.exception)
    bad = tmp_path / "generator.onnx"
    bad.write_bytes(b"not a model")
    (tmp_path / "generator.json").write_text((onnx_dir / "generator.json").read_text())
    with pytest.raises(GanscaleError, match="not a loadable ONNX"):
        OnnxEngine(bad)
    (tmp_path / "generator.json").write_text("{}")
    with pytest.raises(GanscaleError, match="not a ganscale generator"):
        OnnxEngine(bad)


def test_truncation_on_both_paths(run, onnx_dir, tmp_path):
    from ganscale.errors import GanscaleError

    meta = json.loads((onnx_dir / "generator.json").read_text())
    assert np.allclose(draw_z(64, meta, 0, psi=0.5), 0.5 * draw_z(64, meta, 0))
    for source in (run, onnx_dir):
        a = sample_command(source, tags="blue hair red eyes", n=4, out=tmp_path / "a.png", truncation=0.5)
        b = sample_command(source, tags="blue hair red eyes", n=4, out=tmp_path / "b.png")
        assert a.read_bytes() != b.read_bytes()
        with pytest.raises(GanscaleError, match="truncation"):
            sample_command(source, tags="blue hair red eyes", n=4, out=tmp_path / "c.png", truncation=9.0)
