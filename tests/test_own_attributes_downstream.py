"""Everything downstream of training speaks a run's own attributes (issue 20 item 5): a tiny
conditional run on ``vendor`` (2 values) x ``category`` (3 values), packed by `ganscale data
pack` from an imagefolder layout built here (PIL images + metadata.csv), trained and evaluated
through the CLI once per module. Then: the training-time grid, `eval`'s per-attribute and
per-value accuracy, `report`'s per-value table, the serve API, the model folder's card and the
ONNX export, none of which may assume hair and eyes."""

import json

import numpy as np
import pytest
from faultlib import cli_ok as _ganscale
from PIL import Image

pytestmark = pytest.mark.slow

VENDORS = {"apple": 0, "google": 90}
CATEGORIES = {"flags": (200, 30, 30), "food": (30, 200, 30), "symbols": (30, 30, 200)}
ATTRIBUTES = {"vendor": sorted(VENDORS), "category": sorted(CATEGORIES)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(run folder, `ganscale eval` stdout): packed, trained 3 steps and evaluated via the CLI."""
    root = tmp_path_factory.mktemp("vendor_category")
    train_dir = root / "src" / "train"
    train_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["file_name,vendor,category"]
    for vendor, shift in VENDORS.items():
        for category, colour in CATEGORIES.items():
            for i in range(6):
                noise = rng.integers(-30, 30, (16, 16, 3))
                pixels = np.clip(np.array(colour) + shift + noise, 0, 255).astype(np.uint8)
                name = f"{vendor}_{category}_{i}.png"
                Image.fromarray(pixels).save(train_dir / name)
                rows.append(f"{name},{vendor},{category}")
    (train_dir / "metadata.csv").write_text("\n".join(rows) + "\n")
    _ganscale("data", "pack", root / "src", root / "shards", "--size", "16", "--no-progress")
    sets = ["data.source=shards", f"data.path={root / 'shards'}", "train.max_steps=3"]
    _ganscale("train", "configs/tiny.yaml", "--out", root / "run", *[a for s in sets for a in ("--set", s)])
    ev = _ganscale("eval", root / "run", "--n", "48", "--device", "cpu")
    return root / "run", ev.stdout


def test_training_grid_has_a_row_per_condition_over_the_vocabulary(run):
    from ganscale.train.reporting import GRID_ROWS, sample_conditions

    folder, _ = run
    meta = json.loads((folder / "generator.json").read_text())
    assert meta["attributes"] == ATTRIBUTES
    rows = sample_conditions(meta["attributes"])
    assert rows.shape == (GRID_ROWS, 2) and len({tuple(r) for r in rows.tolist()}) == GRID_ROWS
    assert set(rows[:, 0]) == {0, 1} and set(rows[:, 1]) == {0, 1, 2}  # every value shown
    grid = np.asarray(Image.open(sorted((folder / "samples").glob("*.png"))[-1]))
    per = 4  # log.samples_per_condition in configs/tiny.yaml
    assert grid.shape[:2] == (GRID_ROWS * 18 + 2, per * 18 + 2)
    cells = [grid[2 + 18 * r : 18 + 18 * r, 2:18] for r in range(GRID_ROWS)]
    assert any(not np.array_equal(cells[0], c) for c in cells[1:]), "the condition changes the row"
    # an MLDS-shaped corpus keeps the study's rows (hair x eyes texts)
    mlds = sample_conditions({"hair": ["aqua", "blue"], "eyes": ["blue", "orange"]})
    assert mlds.tolist() == [[0, 1], [1, 0]]


def test_eval_reports_accuracy_per_attribute_and_per_value(run):
    folder, stdout = run
    result = json.loads((folder / "eval.json").read_text())
    for key in ("accuracy", "acc_uniform", "real_accuracy"):
        assert set(result[key]) == {"vendor", "category", "joint"}, key
    assert {a: sorted(v) for a, v in result["acc_per_value"].items()} == ATTRIBUTES
    counts = {a: sum(v.values()) for a, v in result["acc_per_value_n"].items()}
    assert counts == {"vendor": 48, "category": 48}
    assert set(result["confusion_matrices"]) == {"vendor", "category"}
    assert (folder / "confusion-vendor.png").is_file() and (folder / "confusion-category.png").is_file()
    assert "attribute accuracy: vendor " in stdout and ", category " in stdout
    assert "vendor by value: apple " in stdout and "category by value: flags " in stdout


def test_report_has_a_row_per_attribute_value(run, tmp_path):
    from ganscale.sweep.report import report

    folder, _ = run
    md, _ = report([folder], out=tmp_path / "report.md", show=False)
    text = md.read_text()
    header = text.splitlines()[0]
    assert "accuracy.vendor" in header and "accuracy.category" in header and "diversity" in header
    per_value = text.split("Accuracy per attribute value")[1]
    for attr, values in ATTRIBUTES.items():
        for v in values:
            assert f"| {attr}.{v} |" in per_value


def test_serve_has_one_picker_per_attribute(run):
    from fastapi.testclient import TestClient

    from ganscale.serve.cli import build_app

    folder, _ = run
    client = TestClient(build_app(folder), base_url="http://127.0.0.1")
    info = client.get("/api/info").json()
    assert info["attributes"] == ATTRIBUTES and info["conditional"]
    ev = info["facts"]["eval"]
    assert set(ev["per_value_accuracy"]) == {"vendor", "category"} and "diversity" in ev["metrics"]
    page = client.get("/").text
    assert "Object.entries(INFO.attributes)" in page and 'accuracy per " + (painted' in page
    r = client.post("/api/generate", json={"conditions": {"vendor": "Google", "category": "food"}, "n": 2})
    assert r.status_code == 200 and r.json()["tags"] == ["google vendor food category"] * 2
    r = client.post("/api/generate", json={"conditions": {"hair": "blue"}, "n": 1})
    assert r.status_code == 422 and "this model has vendor, category" in r.json()["error"]
    r = client.post("/api/generate", json={"conditions": {"vendor": "twitter"}, "n": 1})
    assert r.status_code == 422 and "apple, google" in r.json()["error"]


def test_model_folder_card_names_the_attributes_and_how_to_ask(run, tmp_path):
    from ganscale.outputs.model_folder import export_model_folder
    from ganscale.outputs.sampling import sample_command

    folder, _ = run
    out = export_model_folder(folder, tmp_path / "model")
    card = (out / "README.md").read_text()
    assert "conditioned on one-hot codes of: vendor (2); category (3)" in card
    assert "- vendor: apple, google" in card and "- category: flags, food, symbols" in card
    command = next(line for line in card.splitlines() if "--cond vendor=" in line)
    assert command == "ganscale sample path/to/this/folder --cond vendor=apple --cond category=flags"
    assert '--tags "google symbols"' in card and "--all-conditions" in card
    assert "- vendor, per value: apple " in card and "- diversity: " in card
    assert "hair" not in card and "eyes" not in card
    # the card's command works on the folder
    cond = command.split("folder ", 1)[1].replace("--cond ", "").split()
    png = sample_command(out, cond=cond, n=2, out=tmp_path / "s.png")
    assert Image.open(png).size[1] > 16
    # the folder's sample grid: a spread of conditions (3 rows of 8)
    assert Image.open(out / "sample.png").size == (8 * 18 + 2, 3 * 18 + 2)


def test_onnx_export_names_the_label_columns(run, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from ganscale.outputs.onnx_export import export_onnx
    from ganscale.outputs.sampling import sample_command

    folder, _ = run
    path = export_onnx(folder, tmp_path / "onnx")
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["ganscale.attributes"]) == ATTRIBUTES
    assert json.loads(props["ganscale.generator"])["num_classes"] == [2, 3]
    docs = {i.name: i.doc_string for i in model.graph.input}
    assert "column 0 = vendor: apple, google; column 1 = category: flags, food, symbols" in docs["labels"]
    png = sample_command(path, cond=["vendor=google", "category=symbols"], n=2, out=tmp_path / "o.png")
    assert Image.open(png).size[1] > 16
