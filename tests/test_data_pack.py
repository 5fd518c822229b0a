"""`ganscale data pack`: every layout, every defect counted, labels round-trip, atomic output."""

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from ganscale.cli import main
from ganscale.corpus.layouts import detect_layout
from ganscale.corpus.pack import pack
from ganscale.corpus.synth import write_synthetic
from ganscale.errors import GanscaleError
from ganscale.shardformat.vocab import EYE_COLOURS, HAIR_COLOURS

N = 30


@pytest.fixture(scope="module")
def synth_src(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("synth")
    write_synthetic(src, N, size=24, seed=7)
    return src


def _labels(src: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for row in (src / "tags.csv").read_text().splitlines():
        rid, tags = row.split(",")
        w = tags.split()
        out[rid] = (w[0], w[2])
    return out


def _read_plain(out: Path) -> dict[str, dict]:
    """Read shards back with plain webdataset code (interop: our shards, their reader)."""
    urls = sorted(str(p) for p in out.glob("*.tar"))
    ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node).decode("pil")
    got = {}
    for s in ds:
        got[s["json"]["id"]] = s
    return got


def test_extra_layout_with_defects(synth_src, tmp_path):
    src = tmp_path / "extra"
    shutil.copytree(synth_src, src)
    rows = (src / "tags.csv").read_text().splitlines()
    (src / "images" / "0.png").write_bytes(b"")  # empty image
    data = (src / "images" / "1.png").read_bytes()
    (src / "images" / "1.png").write_bytes(data[: len(data) // 2])  # truncated image
    (src / "images" / "2.png").unlink()  # tag row with no image
    rows = [r for r in rows if not r.startswith("3,")]  # image with no tag row
    rows[3] = "4,blue hair red hair green eyes"  # ambiguous (was row of id 4)
    rows[4] = "5,teal hair green eyes"  # unknown colour
    rows[5] = "this row has no comma"  # unparsable (drops id 6 -> its image has no row)
    rows[6] = "7,  PINK   Hair   yellow EYES "  # odd case/spacing: normalised, kept
    (src / "tags.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    res = pack(src, out, size=16, per_shard=8)
    expect = {
        "unreadable_image": 2,
        "missing_image": 1,
        "missing_tags": 2,
        "ambiguous_attribute": 1,
        "unknown_attribute": 1,
        "unparsable_row": 1,
    }
    assert dict(res.rejects) == expect
    kept = N - 2 - 1 - 2 - 1 - 1  # 0,1 unreadable; 2 no image; 3,6 no row; 4 ambiguous; 5 unknown
    assert res.kept == kept
    m = json.loads((out / "dataset.json").read_text())
    assert m["num_samples"] == kept and m["layout"] == "mlds_extra" and m["image_size"] == 16
    assert sum(s["num_samples"] for s in m["shards"]) == kept and m["num_shards"] == -(-kept // 8)
    assert m["attributes"]["hair"] == HAIR_COLOURS and m["attribute_index"]["eyes"]["yellow"] == 9
    assert sum(m["class_counts"]["hair"].values()) == kept
    assert m["rejects"] == expect
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == sum(expect.values()) and all(r["detail"] for r in rejects)
    # labels round-trip exactly, read with plain webdataset
    truth = _labels(synth_src)
    truth["7"] = ("pink", "yellow")
    got = _read_plain(out)
    assert len(got) == kept
    for rid, s in got.items():
        meta = s["json"]
        assert (meta["names"]["hair"], meta["names"]["eyes"]) == truth[rid]
        assert HAIR_COLOURS[meta["labels"]["hair"]] == truth[rid][0]
        assert EYE_COLOURS[meta["labels"]["eyes"]] == truth[rid][1]
        assert s["png"].size == (16, 16) and s["png"].mode == "RGB"
    assert not list(out.glob("*.partial")) and not list(out.glob("*.tmp"))


def test_unconditional_keeps_images_without_rows(synth_src, tmp_path):
    src = tmp_path / "extra"
    shutil.copytree(synth_src, src)
    (src / "tags.csv").write_text("\n".join((src / "tags.csv").read_text().splitlines()[:5]) + "\n")
    res = pack(src, tmp_path / "out", size=16, unconditional=True)
    assert res.kept == N and not res.rejects
    m = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert m["attributes"] == {} and m["unlabelled"] == N


def _faces_layout(synth_src: Path, dst: Path) -> dict[str, tuple[str, str]]:
    dst.mkdir()
    truth = _labels(synth_src)
    rows = []
    for rid, (hair, eyes) in truth.items():
        Image.open(synth_src / "images" / f"{rid}.png").convert("RGB").save(dst / f"{rid}.jpg", quality=95)
        rows.append(f"{rid},long hair:1520\t{hair} hair:3001\tsmile:20\t{eyes} eyes:880\tblush:3")
    rows[0] = "0,long hair:1\tblue hair:3\tred hair:4\tgreen eyes:5"  # two hair colours
    rows[1] = "1,long hair:1\tBlue  Hair:3\tGREEN_eyes:5\t"  # odd case/spacing: kept
    rows[2] = "2,smile:1\tgreen eyes:5"  # no hair colour
    rows[3] = "3,long hair 12"  # unparsable (no ':count')
    rows.append("999,blue hair:1\tred eyes:2")  # row with no image
    (dst / "tags_clean.csv").write_text("\n".join(rows) + "\n")
    truth["1"] = ("blue", "green")
    return truth


def test_faces_layout(synth_src, tmp_path):
    truth = _faces_layout(synth_src, tmp_path / "faces")
    assert detect_layout(tmp_path / "faces") == "mlds_faces"
    res = pack(tmp_path / "faces", tmp_path / "out", size=16, per_shard=10, fmt="jpg")
    assert dict(res.rejects) == {
        "ambiguous_attribute": 1,
        "missing_attribute": 1,
        "unparsable_row": 1,
        "missing_image": 1,
    }
    assert res.kept == N - 3
    got = _read_plain(tmp_path / "out")
    assert set(got) == set(truth) - {"0", "2", "3"}
    for rid, s in got.items():
        assert (s["json"]["names"]["hair"], s["json"]["names"]["eyes"]) == truth[rid]
        assert s["jpg"].size == (16, 16)


def test_class_folders_and_mode_conversion(tmp_path):
    src = tmp_path / "classes"
    for cls, n in (("cats", 3), ("dogs", 2)):
        (src / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (20, 30), (i * 40, 100, 200)).save(src / cls / f"{i}.png")
    Image.new("L", (8, 8), 128).save(src / "cats" / "gray.png")
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(src / "dogs" / "alpha.png")
    Image.new("P", (8, 8), 3).save(src / "dogs" / "pal.gif")
    (src / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    res = pack(src, tmp_path / "out", size=12)
    assert res.kept == 8 and dict(res.rejects) == {"unreadable_image": 1}
    m = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert m["layout"] == "classes" and m["attributes"] == {"class": ["cats", "dogs"]}
    assert m["class_counts"] == {"class": {"cats": 4, "dogs": 4}}
    got = _read_plain(tmp_path / "out")
    assert got["dogs/alpha"]["png"].getpixel((3, 3)) == (255, 255, 255)  # alpha over white
    assert all(s["png"].mode == "RGB" and s["png"].size == (12, 12) for s in got.values())


def test_plain_folder_is_unconditional(tmp_path):
    src = tmp_path / "plain"
    src.mkdir()
    for i in range(5):
        Image.new("RGB", (16, 16), (i, i, i)).save(src / f"img.{i}.png")
    res = pack(src, tmp_path / "out", size=8, per_shard=2)
    assert res.kept == 5 and res.num_shards == 3
    m = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert (
        m["layout"] == "plain"
        and m["attributes"] == {}
        and [s["num_samples"] for s in m["shards"]] == [2, 2, 1]
    )
    with tarfile.open(tmp_path / "out" / "data-000000.tar") as tf:
        names = tf.getnames()
    assert all(n.count(".") == 1 for n in names)  # keys carry no dots


def test_nothing_usable_exits_2_and_summary(tmp_path, capsys):
    src = tmp_path / "bad"
    src.mkdir()
    (src / "a.png").write_bytes(b"not an image")
    with pytest.raises(SystemExit) as e:
        main(["data", "pack", str(src), str(tmp_path / "out"), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no usable images") and err.count("\n") == 1 and "unreadable_image 1" in err
    assert not (tmp_path / "out" / "dataset.json").exists()
    Image.new("RGB", (9, 9)).save(src / "b.png")
    with pytest.raises(SystemExit) as e:
        main(["data", "pack", str(src), str(tmp_path / "out"), "--no-progress", "--size", "8"])
    assert e.value.code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].endswith("skipped 1: unreadable_image 1") and out[-1].startswith("packed 1 images")


def test_interrupted_pack_leaves_no_complete_looking_output(synth_src, tmp_path, monkeypatch):
    out = tmp_path / "out"
    pack(synth_src, out, size=16, per_shard=4)
    assert (out / "dataset.json").exists()
    import ganscale.corpus.pack as packmod

    calls = {"n": 0}
    real = packmod.encode

    def boom(img, fmt, *args):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real(img, fmt, *args)

    monkeypatch.setattr(packmod, "encode", boom)
    before = _hashes(out)
    with pytest.raises(KeyboardInterrupt):
        pack(synth_src, out, size=16, per_shard=4)
    assert calls["n"] == 10  # interrupted after two finished shards of the new pack
    assert _hashes(out) == before  # the previous corpus, byte for byte; nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left


def _hashes(folder):
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_failing_pack_keeps_the_previous_corpus(synth_src, tmp_path, capsys):
    """A pack whose every image is unreadable fails in one line and leaves OUT as it was."""
    out = tmp_path / "out"
    pack(synth_src, out, size=16, per_shard=4)
    (out / "notes.txt").write_text("mine")
    before = _hashes(out)
    assert "dataset.json" in before and len(before) > 3
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"{i}.png").write_bytes(b"not an image")
    with pytest.raises(SystemExit) as e:
        main(["data", "pack", str(bad), str(out), "--no-progress", "--size", "16"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no usable images") and err.count("\n") == 1
    assert "unreadable_image 3" in err and "still holds its previous corpus, unchanged" in err
    assert _hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "out"]  # no staging folder left


def test_bad_arguments(synth_src, tmp_path):
    with pytest.raises(GanscaleError, match="--format"):
        pack(synth_src, tmp_path / "o", fmt="gif")
    with pytest.raises(GanscaleError, match="--layout"):
        pack(synth_src, tmp_path / "o", layout="zip")


def test_jpeg_bytes_decode(tmp_path, synth_src):
    pack(synth_src, tmp_path / "out", size=16, fmt="jpg", per_shard=100)
    with tarfile.open(tmp_path / "out" / "data-000000.tar") as tf:
        m = next(x for x in tf.getmembers() if x.name.endswith(".jpg"))
        assert Image.open(io.BytesIO(tf.extractfile(m).read())).format == "JPEG"


def test_inspect_prints_counts_and_writes_contact_sheet(synth_src, tmp_path, capsys):
    pack(synth_src, tmp_path / "out", size=16, per_shard=7)
    sheet = tmp_path / "sheet.png"
    with pytest.raises(SystemExit) as e:
        main(["data", "inspect", str(tmp_path / "out"), "--out", str(sheet), "--n", "12"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert f"{N} samples, 5 shards" in text and "aqua" in text and "yellow" in text
    with Image.open(sheet) as im:
        assert im.width > 8 * 64 and im.height > 2 * 64
    # raw shard list (no manifest used for counts) and an unpacked source folder work too
    with pytest.raises(SystemExit):
        main(["data", "inspect", f"{tmp_path}/out/data-{{000000..000001}}.tar", "--out", str(sheet)])
    assert "14 samples, 2 shards" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "inspect", str(synth_src), "--out", str(sheet)])
    assert f"{N} samples" in capsys.readouterr().out and "mlds_extra" in text
