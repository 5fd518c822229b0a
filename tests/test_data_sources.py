"""`ganscale data pack` on the field's formats, through the CLI: imagefolder (metadata.csv /
.jsonl, split folders, class folders), a labels file, a .zip of each, and the user's own
attributes (binary columns, --attributes, --min-count, rejects with reasons, limits); a label
file that would be dropped is refused before anything is written."""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from ganscale.cli import main
from ganscale.corpus.tables import MAX_ATTRIBUTES, MAX_VALUES, Row, Table, choose_attributes, sort_values
from ganscale.errors import GanscaleError

VENDORS = ("google", "twitter")
CATEGORIES = ("flags", "animals-nature", "symbols")


def _img(path: Path, i: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 20), (i * 7 % 256, 80, 160)).save(path)


def run(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(["data", "pack", *args, "--no-progress"])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def manifest(out: Path) -> dict:
    return json.loads((out / "dataset.json").read_text())


def rejects(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]


def read_back(out: Path) -> dict[str, dict]:
    """id -> record json, read with plain webdataset."""
    urls = sorted(str(p) for p in out.glob("*.tar"))
    ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node).decode("pil")
    return {s["json"]["id"]: s["json"] for s in ds}


@pytest.fixture
def imagefolder(tmp_path) -> Path:
    """train/ (24 images, metadata.csv with vendor, category, smiling -1/1, caption) + test/."""
    root = tmp_path / "corpus"
    rows = []
    for i in range(24):
        v, c = VENDORS[i % 2], CATEGORIES[i % 3]
        name = f"{v}_{i:02d}.png" if i % 4 else f"sub/{v}_{i:02d}.png"  # images anywhere below
        _img(root / "train" / name, i)
        rows.append([name, v, c, "1" if i % 5 == 0 else "-1", f"emoji number {i}"])
    rows[3][2] = ""  # missing category -> rejected
    rows.append(["nowhere.png", "google", "flags", "1", "x"])  # a row without its image
    _img(root / "train" / "stray.png", 99)  # an image without a row
    (root / "train" / "broken.png").write_bytes(b"\x89PNG not really")  # corrupt, with a row
    rows.append(["broken.png", "twitter", "symbols", "-1", "y"])
    with open(root / "train" / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "vendor", "category", "smiling", "caption"])
        w.writerows(rows)
    for i in range(3):  # another split: not read unless --split test
        _img(root / "test" / f"t{i}.png", i)
    (root / "test" / "metadata.csv").write_text(
        "file_name,vendor,category,smiling,caption\n"
        + "".join(f"t{i}.png,google,flags,1,c{i}\n" for i in range(3))
    )
    return root


def test_imagefolder_metadata_csv(imagefolder, tmp_path, capsys):
    out = tmp_path / "out"
    code, text, err = run([str(imagefolder), str(out), "--size", "8", "--per-shard", "5"], capsys)
    assert code == 0, err
    m = manifest(out)
    assert m["layout"] == "imagefolder"
    assert m["attributes"] == {
        "vendor": ["google", "twitter"],
        "category": ["animals-nature", "flags", "symbols"],
        "smiling": ["-1", "1"],  # a binary column: two values, numeric order
    }
    kept = 24 - 1  # row 3's category is empty
    assert m["num_samples"] == kept and m["num_shards"] == 5
    assert m["rejects"] == {"missing_label": 1, "missing_image": 1, "missing_row": 1, "unreadable_image": 1}
    by_reason = {r["reason"]: r for r in rejects(out)}
    assert "category" in by_reason["missing_label"]["detail"]
    assert "nowhere.png" in by_reason["missing_image"]["detail"]
    assert by_reason["missing_row"]["item"].endswith("stray.png")
    assert m["class_counts"]["vendor"] == {"google": 12, "twitter": 11}
    assert sum(m["class_counts"]["category"].values()) == kept
    got = read_back(out)
    assert len(got) == kept
    assert got["train/sub/google_00"]["names"] == {"vendor": "google", "category": "flags", "smiling": "1"}
    assert got["train/twitter_07"]["labels"] == {"vendor": 1, "category": 0, "smiling": 0}
    # what was read and chosen is printed: layout, split, columns left out, value counts, totals
    assert "layout imagefolder" in text and "split train" in text and "not read: test/ (3 images" in text
    assert "attributes: vendor, category, smiling" in text and "caption (a different value" in text
    assert "vendor (2 values): google 12, twitter 11" in text
    assert text.strip().splitlines()[-1].startswith(f"packed {kept} images into 5 shards")
    assert "skipped 4" in text


def test_imagefolder_attributes_min_count_and_split(imagefolder, tmp_path, capsys):
    out = tmp_path / "a"
    code, text, err = run(
        [str(imagefolder), str(out), "--size", "8", "--attributes", "category,vendor", "--min-count", "5"],
        capsys,
    )
    assert code == 0, err
    m = manifest(out)
    assert list(m["attributes"]) == ["category", "vendor"]  # the order asked for
    assert "smiling" not in text.split("attributes", 1)[-1].split("\n")[0]
    # 23 labelled rows minus the broken image's row; every value is seen >= 5 times: nothing rare
    assert "rare_value" not in m["rejects"]
    code, text, err = run(
        [str(imagefolder), str(tmp_path / "b"), "--size", "8", "--attributes", "caption", "--min-count", "2"],
        capsys,
    )
    assert code == 2 and "no usable images" in err and "rare_value" in err  # every caption seen once
    code, text, err = run([str(imagefolder), str(tmp_path / "c"), "--size", "8", "--split", "test"], capsys)
    assert code == 0, err
    m = manifest(tmp_path / "c")
    assert m["num_samples"] == 3 and "not read: train/" in text
    # smiling is constant in test: left out, and said so
    assert "smiling (one value" in text and list(m["attributes"]) == ["caption"]  # 3 rows: categorical
    code, _, err = run([str(imagefolder), str(tmp_path / "d"), "--split", "nope"], capsys)
    assert code == 2 and "--split nope" in err and "test, train" in err
    code, _, err = run([str(imagefolder), str(tmp_path / "e"), "--attributes", "colour"], capsys)
    assert code == 2 and "no column 'colour'" in err and err.count("\n") == 1
    assert not (tmp_path / "e").exists()


def test_imagefolder_jsonl_with_booleans(tmp_path, capsys):
    src = tmp_path / "src"
    lines = []
    for i in range(12):
        _img(src / "imgs" / f"{i}.png", i)
        lines.append(
            json.dumps({"file_name": f"imgs/{i}.png", "smiling": i % 3 == 0, "hat": ["a", "b"][i % 2]})
        )
    lines[5] = json.dumps({"file_name": "imgs/5.png", "smiling": [1, 2], "hat": "a"})  # unparsable label
    (src / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    code, text, err = run([str(src), str(tmp_path / "out"), "--size", "8"], capsys)
    assert code == 0, err
    m = manifest(tmp_path / "out")
    assert m["attributes"] == {"smiling": ["false", "true"], "hat": ["a", "b"]}
    assert m["rejects"] == {"unparsable_label": 1} and m["num_samples"] == 11
    assert m["class_counts"]["smiling"] == {"false": 7, "true": 4}


def test_imagefolder_class_folders_become_label(tmp_path, capsys):
    src = tmp_path / "src"
    for cls, n in (("dog", 3), ("cat", 2)):
        for i in range(n):
            _img(src / "train" / cls / f"{i}.png", i)
    code, text, err = run([str(src), str(tmp_path / "out"), "--size", "8"], capsys)
    assert code == 0, err
    m = manifest(tmp_path / "out")
    assert m["layout"] == "imagefolder" and m["attributes"] == {"label": ["cat", "dog"]}
    assert m["class_counts"] == {"label": {"cat": 2, "dog": 3}}
    assert "label (2 values): cat 2, dog 3" in text


def test_labels_file_celeba_style(tmp_path, capsys):
    src = tmp_path / "faces"
    lines = []
    for i in range(10):
        _img(src / f"part{i % 2}" / f"{i:06d}.jpg", i)
        lines.append(f"{i:06d}.jpg,{1 if i % 2 else -1},{1 if i < 6 else -1},{i}")
    labels = tmp_path / "list_attr.csv"
    labels.write_text("image_id,Smiling,Young,score\n" + "\n".join(lines) + "\nghost.jpg,1,1,3\n")
    out = tmp_path / "out"
    code, text, err = run(
        [str(src), str(out), "--size", "8", "--labels", str(labels), "--key-column", "image_id"], capsys
    )
    assert code == 0, err
    m = manifest(out)
    assert m["layout"] == "labels"
    assert m["attributes"] == {"Smiling": ["-1", "1"], "Young": ["-1", "1"]}  # score: unique -> left out
    assert m["class_counts"] == {"Smiling": {"-1": 5, "1": 5}, "Young": {"-1": 4, "1": 6}}
    assert m["rejects"] == {"missing_image": 1}
    assert "score (a different value in every row" in text
    code, _, err = run([str(src), str(tmp_path / "o2"), "--labels", str(labels)], capsys)
    assert code == 2 and "no column 'file_name'" in err and "--key-column" in err
    assert not (tmp_path / "o2").exists()


def _zip(folder: Path, dest: Path, top: str | None) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                rel = p.relative_to(folder).as_posix()
                zf.write(p, f"{top}/{rel}" if top else rel)
    return dest


@pytest.mark.parametrize("top", [None, "corpus"])
def test_zip_packs_like_the_folder(imagefolder, tmp_path, capsys, top):
    z = _zip(imagefolder, tmp_path / "corpus.zip", top)
    code, text, err = run([str(imagefolder), str(tmp_path / "a"), "--size", "8"], capsys)
    assert code == 0, err
    code, text, err = run([str(z), str(tmp_path / "b"), "--size", "8"], capsys)
    assert code == 0, err
    ma, mb = manifest(tmp_path / "a"), manifest(tmp_path / "b")
    for k in ("attributes", "class_counts", "num_samples", "rejects", "layout"):
        assert ma[k] == mb[k], k
    assert {k: v["labels"] for k, v in read_back(tmp_path / "a").items()} == {
        k: v["labels"] for k, v in read_back(tmp_path / "b").items()
    }
    # same records, same shuffle, same pixels: the shards are byte-identical
    assert (tmp_path / "a" / "data-000000.tar").read_bytes() == (
        tmp_path / "b" / "data-000000.tar"
    ).read_bytes()


def test_zip_of_class_folders(tmp_path, capsys):
    src = tmp_path / "src"
    for cls in ("a", "b"):
        for i in range(3):
            _img(src / cls / f"{i}.png", i)
    z = _zip(src, tmp_path / "c.zip", None)
    code, text, err = run([str(z), str(tmp_path / "out"), "--size", "8"], capsys)
    assert code == 0, err
    m = manifest(tmp_path / "out")
    assert m["layout"] == "classes" and m["class_counts"] == {"class": {"a": 3, "b": 3}}


def test_unused_label_files_are_refused_before_writing(imagefolder, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = run([str(imagefolder), str(out), "--layout", "classes"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "metadata.csv is present but --layout classes does not read it" in err
    assert "--layout imagefolder" in err
    code, _, err = run([str(imagefolder / "train"), str(out), "--layout", "plain"], capsys)
    assert code == 2 and "metadata.csv is present" in err
    classes = tmp_path / "classes"
    for cls in ("a", "b"):
        for i in range(2):
            _img(classes / cls / f"{i}.png", i)
    (classes / "labels.csv").write_text("file,colour\na/0.png,red\n")
    code, _, err = run([str(classes), str(out)], capsys)
    assert code == 2 and f"--labels {classes / 'labels.csv'} --key-column" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # nothing written
    code, _, err = run([str(classes), str(out), "--unconditional", "--size", "8"], capsys)
    assert code == 0 and manifest(out)["attributes"] == {}  # labels dropped on purpose: allowed


def test_limits_refused_naming_the_column():
    rows = [Row(f"t:{i}", str(i), {"id": str(i), "kind": "ab"[i % 2]}) for i in range(MAX_VALUES + 1)]
    with pytest.raises(GanscaleError, match=r"column 'id' of t .*more than 1000"):
        choose_attributes(Table("t", ["id", "kind"], rows), ["id"])
    lab = choose_attributes(Table("t", ["id", "kind"], rows), None)
    assert list(lab.attributes) == ["kind"] and "id (" in lab.notes[1]
    cols = [f"a{k}" for k in range(MAX_ATTRIBUTES + 1)]
    rows = [Row(f"t:{i}", str(i), {c: str(i % 2) for c in cols}) for i in range(4)]
    with pytest.raises(GanscaleError, match=rf"column '{cols[-1]}' is one too many"):
        choose_attributes(Table("t", cols, rows), None)


def test_values_sorted_stably():
    assert sort_values({"10", "2", "-1"}) == ["-1", "2", "10"]
    assert sort_values({"b", "B", "a"}) == ["a", "B", "b"]
    assert sort_values(["true", "false"]) == ["false", "true"]


def test_shards_mix_classes_and_order_follows_the_seed(tmp_path, capsys):
    src = tmp_path / "classes"
    classes = ("a", "b", "c", "d")
    for cls in classes:
        for i in range(40):
            _img(src / cls / f"{i}.png", i)
    outs = {}
    for name, seed in (("s0", "0"), ("s0b", "0"), ("s1", "1")):
        code, _, err = run(
            [str(src), str(tmp_path / name), "--size", "4", "--per-shard", "20", "--seed", seed], capsys
        )
        assert code == 0, err
        outs[name] = tmp_path / name
    m = manifest(outs["s0"])
    assert m["num_shards"] == 8 and m["shuffle_seed"] == 0
    for shard in m["shards"]:
        counts = dict.fromkeys(classes, 0)
        for key in _keys(outs["s0"] / shard["url"]):
            counts[key.split("_")[0]] += 1
        n = sum(counts.values())
        tv = 0.5 * sum(abs(c / n - 0.25) for c in counts.values())
        assert tv < 0.3, (shard["url"], counts)  # source order would give 0.75 (one class a shard)
    for s in m["shards"]:  # same seed: same bytes
        assert (outs["s0"] / s["url"]).read_bytes() == (outs["s0b"] / s["url"]).read_bytes()
    k0 = [k for s in m["shards"] for k in _keys(outs["s0"] / s["url"])]
    k1 = [k for s in m["shards"] for k in _keys(outs["s1"] / s["url"])]
    assert k0 != k1 and sorted(k0) == sorted(k1)  # another seed: another order, same records


def _keys(shard: Path) -> list[str]:
    from ganscale.data.sources import shard_keys

    return shard_keys(shard)


def test_pack_then_inspect_stratified(tmp_path, capsys):
    """The contact sheet shows every class, not the first n records."""
    from ganscale.corpus.contact_sheet import fit_caption
    from ganscale.corpus.inspect_corpus import inspect_corpus, stratified

    src = tmp_path / "classes"
    for cls, n in (("first", 30), ("second-class-with-a-very-long-name", 3), ("third", 3)):
        for i in range(n):
            _img(src / cls / f"{i}.png", i)
    code, _, err = run([str(src), str(tmp_path / "out"), "--size", "8"], capsys)
    assert code == 0, err
    picked = stratified({(0,): list(range(30)), (1,): [0, 1, 2], (2,): [0, 1, 2]}, 9)
    assert [k for k, _ in picked].count((1,)) == 3 and [k for k, _ in picked].count((2,)) == 3
    ins = inspect_corpus(str(tmp_path / "out"), n=8)
    assert ins.sheet is not None and ins.class_counts["class"]["third"] == 3
    from PIL import ImageFont

    font = ImageFont.load_default()
    lines = fit_caption(
        ["second-class-with-a-very-long-name", "a b c d e f g h i j k l m n o p q r s"], font, 64
    )
    assert lines and all(font.getlength(line) <= 64 for line in lines) and len(lines) <= 4
    assert lines[0].endswith("...")
    shutil.rmtree(tmp_path / "out")


def test_stylegan_dataset_json_in_a_zip(tmp_path, capsys):
    src = tmp_path / "sg"
    labels = []
    for i in range(9):
        rel = f"{i // 5:05d}/img{i:08d}.png"
        _img(src / rel, i)
        labels.append([rel, i % 3])
    labels[4][1] = [0.0, 1.0]  # a label vector, not a class index: rejected with its reason
    (src / "dataset.json").write_text(json.dumps({"labels": labels}))
    z = _zip(src, tmp_path / "sg.zip", None)
    code, text, err = run([str(z), str(tmp_path / "out"), "--size", "8"], capsys)
    assert code == 0, err
    m = manifest(tmp_path / "out")
    assert m["layout"] == "stylegan" and m["attributes"] == {"label": ["0", "1", "2"]}
    assert m["class_counts"] == {"label": {"0": 3, "1": 2, "2": 3}} and m["rejects"] == {
        "unparsable_label": 1
    }
    code, _, err = run([str(z), str(tmp_path / "o2"), "--layout", "classes"], capsys)
    assert code == 2 and "holds StyleGAN labels" in err and "--layout stylegan" in err


def test_labels_file_inside_the_source_and_its_zip(tmp_path, capsys):
    src = tmp_path / "src"
    for i in range(6):
        _img(src / "a" / f"{i}.png", i)
    (src / "labels.jsonl").write_text(
        "".join(json.dumps({"img": f"a/{i}.png", "colour": "rb"[i % 2]}) + "\n" for i in range(6))
    )
    code, text, err = run(
        [str(src), str(tmp_path / "o1"), "--labels", str(src / "labels.jsonl"), "--key-column", "img"], capsys
    )
    assert code == 0, err  # the labels file is read, so it is not an unused one
    assert manifest(tmp_path / "o1")["class_counts"] == {"colour": {"b": 3, "r": 3}}
    z = _zip(src, tmp_path / "s.zip", None)
    code, text, err = run(
        [str(z), str(tmp_path / "o2"), "--labels", "labels.jsonl", "--key-column", "img"], capsys
    )
    assert code == 0, err  # a labels file inside the zip, named by its path there
    assert manifest(tmp_path / "o2")["class_counts"] == {"colour": {"b": 3, "r": 3}}
