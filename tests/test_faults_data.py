"""Drills on the data path: a corrupt shard mid-epoch (truncated tar, a bad image inside) is
skipped and counted in training; a missing shard or an unreachable URL is one line at start;
`pipe:` URLs run nothing unless data.allow_pipe opts in."""

from __future__ import annotations

import hashlib
import io
import itertools
import shutil
import time
import warnings

import pytest
import webdataset as wds
from faultlib import TINY, record
from PIL import Image

from ganscale.cli import main
from ganscale.config import load_config
from ganscale.corpus.synthetic import ensure_synthetic_corpus
from ganscale.data.loader import build_loader
from ganscale.outputs.tracking import read_metrics
from ganscale.runtime import build_runtime
from ganscale.train.checkpoint import latest_checkpoint, read_state
from ganscale.train.trainer import DataEnded, Trainer, plan_for, train

pytestmark = pytest.mark.faults


@pytest.fixture
def shards(tmp_path, corpus_cache):
    """A copy of the tiny synthetic corpus as plain shards (no manifest: sizes are counted)."""
    src = ensure_synthetic_corpus(corpus_cache, 256, 16, 0)
    out = tmp_path / "shards"
    shutil.copytree(src, out)
    (out / "dataset.json").unlink()
    return out


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_corrupt_shards_mid_epoch_are_skipped_and_counted(shards, tmp_path, corpus_cache):
    tars = sorted(shards.glob("*.tar"))
    with wds.TarWriter(str(tars[3])) as w:  # one garbage image among good ones
        for i in range(8):
            png = b"\x89PNG garbage" if i == 2 else _png(i)
            w.write({"__key__": f"x{i}", "png": png, "json": {"labels": {"hair": 1, "eyes": 2}}})
    data = tars[5].read_bytes()
    tars[5].write_bytes(data[: len(data) // 2])  # truncated mid-shard
    steps = 2 * (256 // 32)  # two epochs at batch 32
    cfg = load_config(
        TINY,
        [
            f"data.cache_dir={corpus_cache}",
            "data.source=shards",
            f"data.path={shards}",
            f"train.max_steps={steps}",
            "train.batch_size=32",
            "log.every=4",
            "log.sample_every=0",
            "checkpoint.every=0",
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(cfg, tmp_path / "run")
    assert result.step == steps
    last = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss/d" in r][-1]
    assert last["data/corrupt_skipped"] >= 2 and last["data/read_errors"] >= 2  # once per epoch at least
    record(
        "corrupt shard mid-epoch",
        1,
        1,
        f"trained {steps} steps; skipped {last['data/corrupt_skipped']} bad images, "
        f"{last['data/read_errors']} read errors (in metrics)",
    )


def _cli_error(capsys, argv) -> tuple[str, float]:
    t = time.monotonic()
    with pytest.raises(SystemExit) as e:
        main(argv)
    took = time.monotonic() - t
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert e.value.code == 2 and len(err) == 1 and "Traceback" not in stderr, stderr
    return err[0], took


def _argv(tmp_path, cache, path, *extra):
    argv = ["train", str(TINY), "--out", str(tmp_path / "run")]
    for s in (f"data.cache_dir={cache}", "data.source=shards", f"data.path={path}", *extra):
        argv += ["--set", s]
    return argv


def test_missing_shard_and_unreachable_url_fail_at_start(shards, tmp_path, corpus_cache, capsys):
    (shards / "synth-000004.tar").unlink()
    pattern = str(shards / "synth-{000000..000015}.tar")
    line, took_missing = _cli_error(capsys, _argv(tmp_path, corpus_cache, pattern))
    assert "synth-000004.tar" in line and "not found" in line
    url = "http://127.0.0.1:9/shard-{000000..000003}.tar"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        line2, took_url = _cli_error(capsys, _argv(tmp_path, corpus_cache, url))
    assert "http://127.0.0.1:9/shard-000000.tar" in line2
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained
    record(
        "missing shard / unreachable URL",
        2,
        2,
        "one-line error naming it, before training",
        missing_error_s=round(took_missing, 1),
        unreachable_error_s=round(took_url, 1),
        url_message=line2[:90],
    )


def test_pipe_urls_need_the_opt_in(shards, tmp_path, corpus_cache, capsys):
    marker = tmp_path / "pipe-ran"
    url = f"pipe:touch {marker} && cat {shards}/synth-0000{{00..15}}.tar"
    line, _ = _cli_error(capsys, _argv(tmp_path, corpus_cache, url))
    assert "data.allow_pipe" in line and not marker.exists()
    from ganscale.config import DataConfig
    from ganscale.data.loader import build_loader

    s = build_loader(
        DataConfig(source="shards", path=url, allow_pipe=True),
        image_size=16,
        batch_size=8,
        seed=0,
        rank=0,
        world_size=1,
    )
    assert marker.exists() and next(iter(s))[0].shape == (8, 3, 16, 16)  # opted in: it runs
    record("pipe: URL", 2, 2, "refused without data.allow_pipe (command not run); runs with it")


class FiniteStream:
    """The real loader, cut after ``n`` batches (a stream that ends), each batch taken once."""

    def __init__(self, stream, n: int) -> None:
        self.stream, self.info, self.n = stream, stream.info, n

    def __iter__(self):
        return itertools.islice(iter(self.stream), self.n)

    def stats(self) -> dict[str, int]:
        return self.stream.stats()

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)


def test_data_ending_between_checks_trains_no_batch_twice(tmp_path, corpus_cache):
    """faults.check_every=3 and a stream of 10 batches: steps 1-9 train on batches 1-9, each
    once; the decision after step 9 finds no full window for steps 10-12 and stops every rank
    there (before, the watch repeated batch 10 for steps 11 and 12 before the check). The
    checkpoint of step 9 records the position after batch 9, not after what was read ahead."""
    sets = ["faults.check_every=3", "train.max_steps=20", "log.sample_every=0"]
    cfg = load_config(TINY, [f"data.cache_dir={corpus_cache}", *sets])
    rt = build_runtime(cfg)
    data = FiniteStream(
        build_loader(
            cfg.data,
            image_size=cfg.model.image_size,
            batch_size=rt.plan.batch_size,
            seed=cfg.seed,
            rank=0,
            world_size=1,
            output="uint8",
        ),
        10,
    )
    trainer = Trainer(plan_for(cfg, rt, data), tmp_path / "run", rt, data=data)
    taken, next_batch = [], trainer.next_batch

    def spy():
        real, labels = next_batch()
        taken.append(hashlib.sha256(real.cpu().numpy().tobytes()).hexdigest())
        return real, labels

    trainer.next_batch = spy
    try:
        with pytest.raises(DataEnded) as e:
            trainer.run()
    finally:
        rt.end()
    assert str(e.value) == "the data ended at step 10: the data stream ended"
    assert len(taken) == 9 and len(set(taken)) == 9  # one batch per step, none twice
    ref = latest_checkpoint(tmp_path / "run")
    assert ref.step == 9 and read_state(ref.path)["data"][0]["batch"] == 9
    record("data ends between checks (check_every=3)", 1, 1, "stopped at step 10, no batch trained twice")
