"""`ganscale data pack --format raw`: decode-free shards, bit-exact, read by plain WebDataset both ways."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from ganscale.cli import main
from ganscale.config import DataConfig
from ganscale.corpus.pack import pack
from ganscale.corpus.synth import write_synthetic
from ganscale.data.decode import image_bytes, pixels, record_meta
from ganscale.data.info import read_corpus_info
from ganscale.data.loader import build_loader
from ganscale.data.sources import iter_records
from ganscale.errors import GanscaleError
from ganscale.shardformat.vocab import EYE_COLOURS, HAIR_COLOURS

N, S = 40, 16


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("raw")
    write_synthetic(root / "src", N, size=S, seed=11)
    pack(root / "src", root / "png", size=S, per_shard=5)
    pack(root / "src", root / "raw", size=S, per_shard=5, fmt="raw")
    return root / "png", root / "raw"


def _png_pixels(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for r in iter_records(sorted(str(p) for p in folder.glob("*.tar"))):
        with Image.open(io.BytesIO(r["png"])) as im:
            out[r["__key__"]] = np.asarray(im.convert("RGB"))
    return out


def test_raw_round_trips_bit_exactly_and_plain_webdataset_reads_it(packed):
    png, raw = packed
    manifest = json.loads((raw / "dataset.json").read_text())
    assert manifest["image_format"] == "raw" and manifest["num_samples"] == N
    truth = _png_pixels(png)
    urls = sorted(str(p) for p in raw.glob("*.tar"))
    ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node)  # plain code, no decoder
    seen = 0
    for s in ds:
        meta = json.loads(s["json"])
        assert (
            meta["shape"] == [S, S, 3]
            and meta["dtype"] == "uint8"
            and set(meta["labels"]) == {"hair", "eyes"}
        )
        arr = np.frombuffer(s["u8"], np.uint8).reshape(meta["shape"])
        assert np.array_equal(arr, truth[s["__key__"]])
        seen += 1
    assert seen == N


def test_loader_reads_raw_exactly_as_png(packed):
    """Decode-free: the same batches (uint8 pixels, labels, augmentation parameters) as PNG."""
    png, raw = packed

    def stream(path):
        cfg = DataConfig(source="shards", path=str(path), shuffle_buffer=16, pin_memory=False)
        return build_loader(cfg, image_size=S, batch_size=8, seed=2, rank=0, world_size=1).iter_uint8()

    a, b = stream(png), stream(raw)
    for _ in range(N // 8 + 2):  # into the second epoch
        x, y = next(a), next(b)
        assert [k.rsplit("#", 1)[1] for k in x.keys] == [k.rsplit("#", 1)[1] for k in y.keys]
        assert (
            torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels) and torch.equal(x.aug, y.aug)
        )


def test_plain_tarwriter_raw_shards_feed_the_loader(tmp_path):
    """Shards written by plain webdataset code in the documented keys (no dataset.json)."""
    rng = np.random.default_rng(0)
    names = [("aqua", "red"), ("white", "yellow"), ("brown", "blue")]
    images = {}
    for shard in range(2):
        with wds.TarWriter(str(tmp_path / f"ext-{shard:06d}.tar")) as w:
            for i in range(shard * 8, shard * 8 + 8):
                arr = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
                images[f"r{i:03d}"] = arr
                hair, eyes = names[i % 3]
                meta = {"shape": [S, S, 3], "dtype": "uint8", "hair": hair, "eyes": eyes}
                w.write({"__key__": f"r{i:03d}", "u8": arr.tobytes(), "json": meta})
    pattern = str(tmp_path / "ext-{000000..000001}.tar")
    info = read_corpus_info(pattern)
    assert info.image_size == S and info.num_records == 16 and list(info.attributes) == ["hair", "eyes"]
    cfg = DataConfig(source="shards", path=pattern, hflip=False, rotate_degrees=0, pin_memory=False)
    s = build_loader(cfg, image_size=S, batch_size=4, seed=0, rank=0, world_size=1)
    it = s.iter_uint8()
    for _ in range(4):
        b = next(it)
        assert b.aug is None  # augmentation off: nothing left for the device
        for img, lab, k in zip(b.images, b.labels.tolist(), b.keys, strict=True):
            key = k.rsplit("#", 1)[1]
            assert np.array_equal(img.permute(1, 2, 0).numpy(), images[key])
            i = int(key[1:])
            assert lab == [HAIR_COLOURS.index(names[i % 3][0]), EYE_COLOURS.index(names[i % 3][1])]


def test_raw_records_decode_everywhere_and_bad_shapes_are_corrupt(packed):
    _, raw = packed
    record = next(iter(iter_records([str(raw / "data-000000.tar")])))
    meta = record_meta(record)
    with Image.open(io.BytesIO(image_bytes(record))) as im:  # inspection/eval see a PPM
        assert im.size == (S, S) and np.array_equal(np.asarray(im.convert("RGB")), pixels(record, meta, S))
    assert pixels(record, meta, 8).shape == (8, 8, 3)  # resized on the fly like PNG
    with pytest.raises(ValueError, match="does not match"):
        pixels(record, {**meta, "shape": [S, S + 1, 3]}, S)
    with pytest.raises(ValueError, match="dtype"):
        pixels(record, {**meta, "dtype": "float32"}, S)


def test_pack_cli_format_raw(tmp_path, capsys):
    write_synthetic(tmp_path / "src", 6, size=S, seed=1)
    with pytest.raises(SystemExit) as e:
        main(
            ["data", "pack", str(tmp_path / "src"), str(tmp_path / "out"), "--format", "raw", "--no-progress"]
        )
    assert e.value.code == 0 and "packed 6 images" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["image_format"] == "raw"
    with pytest.raises(GanscaleError, match="png, jpg or raw"):
        pack(tmp_path / "src", tmp_path / "o", fmt="tiff")
