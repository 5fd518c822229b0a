"""The streaming loader: exact epochs, seeded order, resume, bad data, interop, errors."""

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import webdataset as wds
from conftest import REPO
from PIL import Image

from ganscale.cli import main
from ganscale.config import DataConfig
from ganscale.corpus.pack import pack
from ganscale.corpus.synth import write_synthetic
from ganscale.data.info import read_corpus_info
from ganscale.data.loader import ShardStream, build_loader
from ganscale.data.sources import iter_records
from ganscale.data.tarscan import read_records
from ganscale.errors import GanscaleError
from ganscale.shardformat.vocab import EYE_COLOURS, HAIR_COLOURS

N, SHARDS, B, S = 64, 8, 16, 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_synthetic(root / "src", N, size=S, seed=3)
    pack(root / "src", root / "shards", size=S, per_shard=N // SHARDS)
    return root / "shards"


def _truth(corpus: Path) -> dict[str, list[int]]:
    rows = (corpus.parent / "src" / "tags.csv").read_text().splitlines()
    out = {}
    for r in rows:
        rid, tags = r.split(",")
        w = tags.split()
        out[rid] = [HAIR_COLOURS.index(w[0]), EYE_COLOURS.index(w[2])]
    return out


def cfg(path, **kw) -> DataConfig:
    base = dict(
        source="shards",
        path=str(path),
        num_workers=0,
        shuffle_buffer=32,
        rotate_degrees=8.0,
        pin_memory=False,
    )
    base.update(kw)
    return DataConfig(**base)


def stream(path, rank=0, world=1, seed=0, batch=B, size=S, **kw) -> ShardStream:
    return build_loader(
        cfg(path, **kw), image_size=size, batch_size=batch, seed=seed, rank=rank, world_size=world
    )


def take(s: ShardStream, n: int):
    it = s.iter_with_keys()
    return [next(it) for _ in range(n)]


def keys_of(batches):
    return [k.rsplit("#", 1)[1] for _, _, ks in batches for k in ks]


def test_one_epoch_exact_labels_and_range(corpus):
    s = stream(corpus)
    assert s.info.num_records == N and s.info.num_shards == SHARDS and s.info.image_size == S
    assert list(s.info.attributes) == ["hair", "eyes"]
    assert s.batches_per_epoch == N // B
    batches = take(s, s.batches_per_epoch)
    keys = keys_of(batches)
    assert sorted(keys) == sorted(str(i) for i in range(N))  # each sample exactly once
    truth = _truth(corpus)
    for images, labels, ks in batches:
        assert images.shape == (B, 3, S, S) and images.dtype == torch.float32
        assert labels.shape == (B, 2) and labels.dtype == torch.int64
        assert images.min() >= -1 and images.max() <= 1 and images.min() < -0.5 and images.max() > 0.5
        for lab, k in zip(labels.tolist(), ks, strict=True):
            assert lab == truth[k.rsplit("#", 1)[1]]
    assert s.stats()["corrupt_skipped"] == 0


def test_same_seed_same_order_new_epoch_new_order(corpus):
    e = N // B
    a, b, c = (
        take(stream(corpus, seed=1), 2 * e),
        take(stream(corpus, seed=1), 2 * e),
        take(stream(corpus, seed=2), e),
    )
    assert keys_of(a) == keys_of(b)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
    assert keys_of(a[:e]) != keys_of(a[e:])  # epoch 1 reshuffled
    assert sorted(keys_of(a[:e])) == sorted(keys_of(a[e:]))
    assert keys_of(a[:e]) != keys_of(c)


def test_a_copied_corpus_gives_the_same_batches(corpus, tmp_path):
    """Augmentation is seeded by shard name and sample key, not by where the corpus lives: a
    copy elsewhere (another machine's mount, another test's cache) reproduces the run."""
    copy = tmp_path / "elsewhere" / "shards"
    shutil.copytree(corpus, copy)
    a, b = take(stream(corpus, seed=1), 3), take(stream(copy, seed=1), 3)
    assert keys_of(a) == keys_of(b)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
    unrotated = take(stream(corpus, seed=1, rotate_degrees=0.0), 3)
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, unrotated, strict=True))  # rotation is on


@pytest.mark.parametrize("split", [1, 3, 4, 6])
def test_resume_is_bit_identical(corpus, split):
    total = 7  # crosses the epoch boundary (4 batches per epoch)
    straight = take(stream(corpus, seed=5), total)
    first = stream(corpus, seed=5)
    it = iter(first)
    part = [next(it) for _ in range(split)]
    state = json.loads(json.dumps(first.state_dict()))
    assert state["epoch"] == split // 4 and state["batch"] == split % 4
    again = stream(corpus, seed=5)
    again.load_state_dict(state)
    it2 = iter(again)
    part += [next(it2) for _ in range(total - split)]
    for (x, y), (u, v, _) in zip(part, straight, strict=True):
        assert torch.equal(x, u) and torch.equal(y, v)


def test_two_ranks_disjoint_union_equal_batches(corpus):
    r0, r1 = stream(corpus, rank=0, world=2), stream(corpus, rank=1, world=2)
    assert r0.batches_per_epoch == r1.batches_per_epoch == N // (2 * B)
    k0 = keys_of(take(r0, r0.batches_per_epoch))
    k1 = keys_of(take(r1, r1.batches_per_epoch))
    assert not set(k0) & set(k1) and sorted(k0 + k1) == sorted(str(i) for i in range(N))


def test_uneven_ranks_get_the_same_number_of_batches(corpus):
    # 8 shards over 3 ranks: 3/3/2 shards; the short rank pads from a second pass.
    ranks = [stream(corpus, rank=r, world=3, batch=10) for r in range(3)]
    bpe = {s.batches_per_epoch for s in ranks}
    assert bpe == {3}  # ceil(24 / 10)
    seen = []
    for s in ranks:
        batches = take(s, s.batches_per_epoch + 1)  # into the next epoch: no rank stalls
        assert all(b[0].shape[0] == 10 for b in batches)
        seen += keys_of(batches[: s.batches_per_epoch])
    assert set(seen) == {str(i) for i in range(N)}
    assert ranks[2].stats()["padding_passes"] >= 1


def test_corrupt_sample_and_truncated_shard_are_skipped(corpus, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(corpus, bad)
    (bad / "dataset.json").unlink()
    with wds.TarWriter(str(bad / "data-000000.tar")) as w:  # replace shard 0: one garbage png
        for i in range(8):
            png = b"\x89PNG garbage" if i == 3 else _png(i)
            w.write({"__key__": f"x{i}", "png": png, "json": {"labels": {"hair": 1, "eyes": 2}}})
    with tarfile.open(bad / "data-000001.tar") as tf:  # truncated mid-shard, inside a member's data
        members = tf.getmembers()
        m = members[len(members) // 2]
        cut = m.offset_data + max(1, m.size // 2)
    data = (bad / "data-000001.tar").read_bytes()
    (bad / "data-000001.tar").write_bytes(data[:cut])
    s = stream(bad, shuffle_buffer=0)
    batches = take(s, s.batches_per_epoch * 2)
    assert all(b[0].shape == (B, 3, S, S) for b in batches)
    st = s.stats()
    assert st["corrupt_skipped"] >= 2 and st["read_errors"] >= 2  # one per epoch at least
    keys = set(keys_of(batches))
    assert "x3" not in keys and {f"x{i}" for i in range(8) if i != 3} <= keys


def _png(i: int) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (S, S), (i * 20, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_missing_shard_is_a_one_line_error_at_build_time(corpus, tmp_path):
    with pytest.raises(GanscaleError, match="nope-000001.tar") as e:
        stream(f"{corpus}/data-000000.tar,{tmp_path}/nope-000001.tar")
    assert "\n" not in str(e.value)
    folder = tmp_path / "c"
    shutil.copytree(corpus, folder)
    (folder / "data-000005.tar").unlink()
    with pytest.raises(GanscaleError, match="data-000005.tar"):
        stream(folder)


def test_pipe_urls_need_allow_pipe(corpus):
    url = f"pipe:cat {corpus}/data-00000{{0..7}}.tar"
    with pytest.raises(GanscaleError, match="data.allow_pipe"):
        stream(url)
    s = stream(url, allow_pipe=True)
    assert s.info.num_shards == 8 and list(s.info.attributes) == ["hair", "eyes"]  # inferred from json
    images, labels = next(iter(s))
    assert images.shape == (B, 3, S, S)


def test_brace_pattern_uses_manifest_beside_it(corpus):
    info = read_corpus_info(f"{corpus}/data-{{000000..000003}}.tar")
    assert info.num_shards == 4 and info.num_records == N // 2 and info.attributes["hair"] == HAIR_COLOURS


def test_fewer_shards_than_readers_switches_to_resampled(corpus, caplog):
    s = stream(f"{corpus}/data-00000{{0..1}}.tar", rank=3, world=4)
    assert s.resampled and "resampled" in s.notice and "2 shards < 4 ranks" in s.notice
    batches = take(s, 3)
    assert all(b[0].shape == (B, 3, S, S) for b in batches)


def test_resize_on_the_fly_and_unconditional(corpus, tmp_path):
    src = tmp_path / "plain"
    shutil.copytree(corpus.parent / "src" / "images", src)
    pack(src, tmp_path / "out", size=S, per_shard=16)
    s = stream(tmp_path / "out", size=8, batch=4)
    assert s.info.attributes == {} and s.notice == ""
    images, labels = next(iter(s))
    assert images.shape == (4, 3, 8, 8) and labels.shape == (4, 0)


def test_shardwriter_shards_are_read(tmp_path):
    """Interop: shards written by webdataset.ShardWriter (png + json) feed the loader."""
    pattern = str(tmp_path / "ext-%06d.tar")
    names = [("aqua", "red"), ("white", "yellow"), ("brown", "blue")]
    with wds.ShardWriter(pattern, maxcount=6) as sink:
        for i in range(24):
            hair, eyes = names[i % 3]
            sink.write(
                {
                    "__key__": f"s{i:03d}",
                    "png": Image.new("RGB", (S, S), (i, 0, 0)),
                    "json": {"hair": hair, "eyes": eyes},
                }
            )
    info = read_corpus_info(str(tmp_path / "ext-{000000..000003}.tar"))
    assert info.num_records == 24 and info.num_shards == 4 and info.image_size == S
    assert list(info.attributes) == ["hair", "eyes"]
    assert read_corpus_info(tmp_path).num_records == 24  # a folder of shards without dataset.json
    s = stream(tmp_path / "ext-{000000..000003}.tar", batch=8, rotate_degrees=0, hflip=False)
    for images, labels, keys in take(s, 3):
        for lab, k in zip(labels.tolist(), keys, strict=True):
            i = int(k.rsplit("#s", 1)[1])
            assert lab == [HAIR_COLOURS.index(names[i % 3][0]), EYE_COLOURS.index(names[i % 3][1])]
            assert images[keys.index(k), 0, 0, 0].item() == pytest.approx(i / 127.5 - 1, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("persistent", [True, False])
def test_workers_exact_epoch_and_resume(corpus, persistent):
    s = stream(corpus, num_workers=2, persistent_workers=persistent)
    batches = take(s, s.batches_per_epoch)
    assert sorted(keys_of(batches)) == sorted(str(i) for i in range(N))
    first = stream(corpus, num_workers=2, persistent_workers=persistent)
    it = first.iter_with_keys()
    head = [next(it) for _ in range(2)]
    state = first.state_dict()
    del it
    again = stream(corpus, num_workers=2, persistent_workers=persistent)
    again.load_state_dict(state)
    tail = take(again, s.batches_per_epoch - 2)
    assert sorted(keys_of(head + tail)) == sorted(str(i) for i in range(N))


def test_workers_fork_with_the_parents_objects_frozen(corpus, monkeypatch):
    """Workers start with every inherited object frozen (no garbage collection of theirs writes
    to, and so copies, the parent's pages); the parent collects as before."""
    import gc
    import multiprocessing as mp

    import ganscale.data.transport as transport

    seen = mp.Array("i", [-1, -1])  # shared through fork: each worker's gc.get_freeze_count()
    init = transport.ignore_stop_signals

    def init_and_record(worker_id: int) -> None:
        init(worker_id)
        seen[worker_id] = gc.get_freeze_count()

    monkeypatch.setattr(transport, "ignore_stop_signals", init_and_record)
    s = stream(corpus, num_workers=2)
    batches = take(s, s.batches_per_epoch)
    assert sorted(keys_of(batches)) == sorted(str(i) for i in range(N))
    assert gc.get_freeze_count() == 0  # unfrozen in the parent right after the fork
    assert min(seen[:]) > 1000, list(seen[:])  # the workers' inherited objects: frozen


def test_persistent_workers_fork_once_and_give_the_per_pass_batches(corpus, monkeypatch):
    """data.persistent_workers (the default): the same batches, parameters and positions as
    workers forked per pass, over epochs with padding passes and a mid-pass resume, from
    workers forked once per iterator."""
    import multiprocessing as mp

    import ganscale.data.transport as transport

    starts = mp.Value("i", 0)  # worker starts, counted through fork
    init = transport.ignore_stop_signals

    def init_and_count(worker_id: int) -> None:
        init(worker_id)
        with starts.get_lock():
            starts.value += 1

    monkeypatch.setattr(transport, "ignore_stop_signals", init_and_count)
    runs = {}
    for persistent in (False, True):
        starts.value = 0
        s = stream(corpus, num_workers=2, batch=12, persistent_workers=persistent)  # 64 = 5 x 12 + 4
        it = s.iter_uint8()
        batches = [next(it) for _ in range(3 * s.batches_per_epoch + 2)]
        state = s.state_dict()
        it.close()
        resumed = stream(corpus, num_workers=2, batch=12, persistent_workers=persistent)
        resumed.load_state_dict(state)
        it = resumed.iter_uint8()
        batches += [next(it) for _ in range(s.batches_per_epoch)]
        it.close()
        runs[persistent] = (batches, state, s.stats(), starts.value)
    (per_pass, st_a, stats_a, forks_a), (kept, st_b, stats_b, forks_b) = runs[False], runs[True]
    assert st_a == st_b and stats_a == stats_b and stats_b["padding_passes"] >= 3
    for a, b in zip(per_pass, kept, strict=True):
        assert a.keys == b.keys
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.aug, b.aug)
    assert forks_b == 2 * 2  # two iterators x two workers
    assert forks_a > 3 * 2 * 2  # a pair per pass (epochs and padding passes)


def test_synthetic_source_is_built_once(tmp_path):
    c = DataConfig(cache_dir=str(tmp_path), synthetic_n=32, num_workers=0, pin_memory=False)
    s = build_loader(c, image_size=16, batch_size=8, seed=0, rank=1, world_size=2)
    assert s.info.num_records == 32 and s.info.num_shards >= 8 and list(s.info.attributes) == ["hair", "eyes"]
    manifest = next(tmp_path.glob("synthetic-*/shards/dataset.json"))
    stamp = manifest.stat().st_mtime_ns
    build_loader(c, image_size=16, batch_size=8, seed=0, rank=0, world_size=2)
    assert manifest.stat().st_mtime_ns == stamp
    images, labels = next(iter(s))
    assert images.shape == (8, 3, 16, 16) and (labels >= 0).all()


def test_bad_state_is_a_clear_error(corpus):
    s = stream(corpus)
    with pytest.raises(GanscaleError, match="epoch/batch"):
        s.load_state_dict({"step": 3})


def test_resampled_mode_resumes_exactly(corpus):
    straight = take(stream(corpus, seed=9, resampled=True), 6)
    first = stream(corpus, seed=9, resampled=True)
    assert first.batches_per_epoch == N // B
    it = iter(first)
    part = [next(it) for _ in range(3)]
    again = stream(corpus, seed=9, resampled=True)
    again.load_state_dict(first.state_dict())
    it2 = iter(again)
    part += [next(it2) for _ in range(3)]
    for (x, y), (u, v, _) in zip(part, straight, strict=True):
        assert torch.equal(x, u) and torch.equal(y, v)


def test_a_new_iterator_continues_from_the_current_position(corpus):
    straight = take(stream(corpus, seed=4), 5)
    s = stream(corpus, seed=4)
    got = take(s, 2) + take(s, 3)
    assert keys_of(got) == keys_of(straight)


def test_state_from_another_layout_is_approximated_not_fatal(corpus):
    two = stream(corpus, rank=0, world=2)
    take(two, 1)
    state = two.state_dict()
    one = stream(corpus, rank=0, world=1, num_workers=0)
    one.load_state_dict({**state, "batch": 99})  # e.g. rescaled by an elastic resume: clamped
    assert one.state_dict()["epoch"] == 1 and one.state_dict()["batch"] == 0
    one.load_state_dict(state)
    images, _ = next(iter(one))
    assert images.shape == (B, 3, S, S) and one.state_dict()["batch"] == 2


def test_fsspec_urls_stream_and_missing_backends_are_named(corpus):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for i in range(2):
        fs.pipe(f"/ganscale-test/data-{i:06d}.tar", (corpus / f"data-{i:06d}.tar").read_bytes())
    s = stream("memory://ganscale-test/data-{000000..000001}.tar", batch=8)
    assert s.info.num_records == 16 and list(s.info.attributes) == ["hair", "eyes"]  # counted remotely
    keys = keys_of(take(s, s.batches_per_epoch))
    assert len(set(keys)) == 16
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(GanscaleError, match="s3://"):
            stream("s3://bucket/data-000000.tar")


def _tar(path: Path, members: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT) -> str:
    with tarfile.open(path, "w", format=fmt) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return str(path)


def test_fast_tar_reader_gives_what_webdataset_gives(corpus, tmp_path):
    """The loader's reader (ganscale/data/tarscan.py) against WebDataset's on odd and damaged tars:
    the same records and keys; damage reported where WebDataset reports it."""
    long = "d/" + "x" * 150 + ".PNG"  # a GNU/PAX long name, an upper-case extension
    odd = [("a.png", b"1" * 700), ("a.json", b"{}"), ("__meta__", b"m"), ("b.c.d", b"2"), (long, b"3")]
    odd += [("dir/.hid.png", b"4"), ("nodot", b"5"), ("k.png", b"6"), ("k.png", b"7"), ("k.json", b"8")]
    shard = (corpus / "data-000000.tar").read_bytes()
    cases = {
        "pax": [_tar(tmp_path / "pax.tar", odd)],
        "gnu": [_tar(tmp_path / "gnu.tar", odd, tarfile.GNU_FORMAT)],
        "ours": [str(p) for p in sorted(corpus.glob("*.tar"))[:3]],
    }
    for cut in (0, 100, 519, 1536, len(shard) // 2):
        (tmp_path / f"cut{cut}.tar").write_bytes(shard[:cut])
        cases[f"cut{cut}"] = [str(tmp_path / f"cut{cut}.tar"), str(corpus / "data-000001.tar")]
    for where in (10, 3 * 512 + 10):  # a damaged first header (an error), a later one (a quiet end)
        bad = bytearray(shard)
        bad[where] ^= 0xFF
        (tmp_path / f"bad{where}.tar").write_bytes(bytes(bad))
        cases[f"bad{where}"] = [str(tmp_path / f"bad{where}.tar")]
    with tarfile.open(tmp_path / "z.tar.gz", "w:gz") as tf:  # compressed: WebDataset's own reader
        tf.add(corpus / "data-000002.tar", arcname="inner.tar")
    cases["gz"] = [str(tmp_path / "z.tar.gz")]
    for name, urls in cases.items():
        seen: list[Exception] = []
        mine: list[Exception] = []
        theirs = list(iter_records(urls, on_error=lambda e, seen=seen: seen.append(e) or True))
        ours = list(read_records(urls, on_error=lambda e, mine=mine: mine.append(e) or True))
        assert ours == theirs, name
        # damage is counted (WebDataset sometimes counts one truncation twice)
        assert bool(seen) == bool(mine) and len(mine) <= len(seen), name
    assert len(theirs) == 1


def test_data_bench_prints_json(corpus, tiny_overrides, capsys):
    argv = ["data", "bench", str(corpus), "--steps", "2", "--batch", "8", "--gpu", "H100", "--mfu", "0.3"]
    with pytest.raises(SystemExit) as e:
        main(
            [
                *argv,
                "--config",
                str(REPO / "configs/tiny.yaml"),
                *(x for o in tiny_overrides for x in ("--set", o)),
            ]
        )
    assert e.value.code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    row = json.loads(lines[-1])
    for k in ("images_per_s", "raw_decode_per_s", "augment_per_s", "needed_per_s", "flops_per_image"):
        assert row[k] > 0, k
    assert row["format"] == "png" and row["records"] == N and "loader" in lines[1]


def test_a_script_left_with_running_workers_still_exits(corpus, tmp_path):
    """Workers ignore SIGTERM (the trainer's to handle), so multiprocessing's exit handler could
    not stop them: a script that leaves an iterator with workers open used to hang at exit."""
    script = tmp_path / "left_open.py"
    script.write_text(
        "from ganscale.config import DataConfig\n"
        "from ganscale.data.loader import build_loader\n"
        f"cfg = DataConfig(source='shards', path={str(corpus)!r}, num_workers=1, pin_memory=False)\n"
        "it = iter(build_loader(cfg, image_size=16, batch_size=8, seed=0, rank=0, world_size=1))\n"
        "next(it)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
