"""`data.in_memory`: decoded once per rank, then the same batches, order and positions as streaming."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import webdataset as wds
from conftest import REPO
from PIL import Image

from ganscale.config import DataConfig, load_config
from ganscale.corpus.pack import pack
from ganscale.corpus.synth import write_synthetic
from ganscale.data.loader import build_loader
from ganscale.errors import ConfigError, GanscaleError

N, SHARDS, B, S = 60, 10, 8, 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mem")
    write_synthetic(root / "src", N, size=S, seed=9)
    pack(root / "src", root / "shards", size=S, per_shard=N // SHARDS)
    return root / "shards"


def stream(path, rank=0, world=1, in_memory=False, **kw):
    base = dict(source="shards", path=str(path), shuffle_buffer=20, rotate_degrees=6.0, pin_memory=False)
    cfg = DataConfig(**{**base, **kw, "in_memory": in_memory})
    return build_loader(cfg, image_size=S, batch_size=B, seed=4, rank=rank, world_size=world, output="uint8")


def take(s, n):
    it = iter(s)
    return [next(it) for _ in range(n)]


def same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys == y.keys
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
        assert (x.aug is None and y.aug is None) or torch.equal(x.aug, y.aug)


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_sees_what_streaming_gives(corpus, world):
    """2 ranks: 5 shards each; 3 ranks: 4/3/3 shards, the short ranks pad from a second pass."""
    keys = []
    for rank in range(world):
        mem = stream(corpus, rank, world, in_memory=True)
        assert mem.memory is not None and mem.memory.images.shape[1:] == (S, S, 3)
        assert len(mem.memory.keys) == mem.rank_records  # exactly this rank's shard split
        n = 2 * mem.batches_per_epoch + 1  # two epochs (and a padding pass) and a bit
        got = take(mem, n)
        same(got, take(stream(corpus, rank, world), n))
        keys += [k for b in got[: mem.batches_per_epoch] for k in b.keys]
    assert {k.rsplit("#", 1)[1] for k in keys} == {str(i) for i in range(N)}


@pytest.mark.parametrize("split", [2, 7, 8])
def test_resumes_exactly_and_across_modes(corpus, split):
    straight = take(stream(corpus, in_memory=True), 10)
    first = stream(corpus, in_memory=True)
    part = take(first, split)
    state = json.loads(json.dumps(first.state_dict()))
    again = stream(corpus, in_memory=True)
    again.load_state_dict(state)
    same(part + take(again, 10 - split), straight)
    # a streaming checkpoint resumes in memory (and back): the position means the same
    streaming = stream(corpus)
    take(streaming, split)
    mem = stream(corpus, in_memory=True)
    mem.load_state_dict(streaming.state_dict())
    same(take(mem, 10 - split), straight[split:])


def test_too_large_is_refused_on_every_rank_naming_the_size(corpus):
    for rank in range(2):
        with pytest.raises(GanscaleError, match=r"rank \d would hold \d+ images of 16 px = [\d.]+ GB") as e:
            stream(corpus, rank, 2, in_memory=True, in_memory_max_gb=1e-5)
        msg = str(e.value)
        assert "\n" not in msg and "data.in_memory_max_gb" in msg and "data.in_memory: false" in msg
    assert stream(corpus, in_memory=True, in_memory_max_gb=1e-3).memory is not None  # 60 x 768 B fits


def test_corrupt_records_are_skipped_and_counted_as_when_streaming(corpus, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(corpus, bad)
    (bad / "dataset.json").unlink()
    with wds.TarWriter(str(bad / "data-000000.tar")) as w:
        for i in range(6):
            img = Image.new("RGB", (S, S), (i * 30, 0, 0))
            w.write(
                {"__key__": f"x{i}", "png": b"\x89PNG garbage" if i == 2 else img, "json": {"hair": "aqua"}}
            )
    mem, streaming = stream(bad, in_memory=True), stream(bad)
    n = 2 * mem.batches_per_epoch
    same(take(mem, n), take(streaming, n))
    assert mem.stats()["corrupt_skipped"] == streaming.stats()["corrupt_skipped"] == 2  # once per epoch


def test_config_keys_are_validated():
    with pytest.raises(ConfigError, match="data.in_memory_max_gb"):
        DataConfig(in_memory_max_gb=0)
    with pytest.raises(ConfigError, match="data.augment_on"):  # refused where configs are loaded
        load_config(REPO / "configs/tiny.yaml", ["data.augment_on=gpu"])
    assert DataConfig().augment_on == "device" and not DataConfig().in_memory


@pytest.mark.slow
def test_virtual_workers_match_real_workers(corpus):
    """With 2 workers streaming merges their chunks round-robin; memory replays that merge."""
    mem = stream(corpus, in_memory=True, num_workers=2)
    n = mem.batches_per_epoch + 2
    same(take(mem, n), take(stream(corpus, num_workers=2), n))
