"""`ganscale data pack --layout hf`: datasets written by the real `datasets` library
(`save_to_disk`, DatasetDict splits, parquet), read through it; ClassLabel names kept in their
order. `datasets` is the optional extra `ganscale[hf]`: skipped without it, except under CI=true
(the dev extra installs it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from ganscale.cli import main

if os.environ.get("CI") == "true":
    import datasets  # CI installs the dev extra: a missing datasets fails here
else:
    datasets = pytest.importorskip("datasets")

ANIMALS = ["zebra", "ant", "cat"]  # not sorted: ClassLabel order is kept


def _dataset(n: int = 12):
    feats = datasets.Features(
        {
            "image": datasets.Image(),
            "animal": datasets.ClassLabel(names=ANIMALS),
            "colour": datasets.Value("string"),
            "tags": datasets.Sequence(datasets.Value("string")),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "image": [Image.new("RGB", (10, 12), (i * 20, 0, 0)) for i in range(n)],
            "animal": [i % 3 for i in range(n)],
            "colour": ["red" if i % 4 else "blue" for i in range(n)],
            "tags": [["x"] for _ in range(n)],
        },
        features=feats,
    )


def run(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(["data", "pack", *args, "--no-progress", "--size", "8"])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def manifest(out: Path) -> dict:
    return json.loads((out / "dataset.json").read_text())


def test_save_to_disk_classlabel_names_kept(tmp_path, capsys):
    _dataset().save_to_disk(str(tmp_path / "ds"))
    code, text, err = run([str(tmp_path / "ds"), str(tmp_path / "out")], capsys)
    assert code == 0, err
    m = manifest(tmp_path / "out")
    assert m["layout"] == "hf" and m["num_samples"] == 12
    assert m["attributes"] == {"animal": ANIMALS, "colour": ["blue", "red"]}
    assert m["class_counts"] == {"animal": {a: 4 for a in ANIMALS}, "colour": {"blue": 3, "red": 9}}
    assert "layout hf" in text and "image column image" in text and "tags (not scalar)" in text
    code, _, err = run([str(tmp_path / "ds"), str(tmp_path / "o2"), "--attributes", "animal"], capsys)
    assert code == 0, err
    assert manifest(tmp_path / "o2")["attributes"] == {"animal": ANIMALS}


def test_dataset_dict_split_and_parquet(tmp_path, capsys):
    dd = datasets.DatasetDict({"train": _dataset(12), "test": _dataset(6)})
    dd.save_to_disk(str(tmp_path / "dd"))
    code, _, err = run([str(tmp_path / "dd"), str(tmp_path / "a"), "--split", "test"], capsys)
    assert code == 0, err
    assert manifest(tmp_path / "a")["num_samples"] == 6
    code, _, err = run([str(tmp_path / "dd"), str(tmp_path / "b"), "--split", "nope"], capsys)
    assert code == 2 and "train, test" in err and "--split" in err
    pq = tmp_path / "pq" / "train.parquet"
    pq.parent.mkdir()
    _dataset(9).to_parquet(str(pq))
    code, _, err = run([str(pq.parent), str(tmp_path / "c")], capsys)
    assert code == 0, err
    m = manifest(tmp_path / "c")
    assert m["layout"] == "hf" and m["attributes"]["animal"] == ANIMALS and m["num_samples"] == 9


def test_image_column_and_rejects(tmp_path, capsys):
    ds = _dataset(8)
    masks = datasets.Dataset.from_dict(
        {"mask": [Image.new("L", (4, 4)) for _ in range(8)]},
        features=datasets.Features({"mask": datasets.Image()}),
    )
    ds = datasets.concatenate_datasets([ds, masks], axis=1)
    ds = ds.map(lambda r, i: {"colour": None if i == 2 else r["colour"]}, with_indices=True)
    ds.save_to_disk(str(tmp_path / "ds"))
    code, _, err = run([str(tmp_path / "ds"), str(tmp_path / "a")], capsys)
    assert code == 2 and "image columns image, mask" in err and "--image-column" in err
    code, _, err = run([str(tmp_path / "ds"), str(tmp_path / "b"), "--image-column", "image"], capsys)
    assert code == 0, err
    m = manifest(tmp_path / "b")
    assert m["num_samples"] == 7 and m["rejects"] == {"missing_label": 1}
