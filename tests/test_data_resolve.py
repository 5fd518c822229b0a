"""One answer to "which corpus does this run use", for the loader and for evaluation alike."""

from __future__ import annotations

import io
import tarfile

import pytest

from ganscale.config import DataConfig
from ganscale.corpus.synthetic import ensure_synthetic_corpus
from ganscale.data.resolve import corpus_folder, resolve_corpus
from ganscale.data.sources import iter_records, shard_keys
from ganscale.errors import GanscaleError
from ganscale.evaluation.corpus_images import list_keys, packed_corpus, read_corpus

N, SIZE = 256, 16  # the corpus test_eval_classifier.py builds: shared through corpus_cache


@pytest.fixture(scope="module")
def synthetic(corpus_cache) -> DataConfig:
    return DataConfig(cache_dir=str(corpus_cache), synthetic_n=N)


def test_training_and_evaluation_read_the_same_shards(synthetic, corpus_cache):
    folder = corpus_folder(synthetic, SIZE)
    assert folder == ensure_synthetic_corpus(corpus_cache, N, SIZE, 0)
    trained_on = resolve_corpus(synthetic, SIZE)
    assert trained_on.info.shard_urls == packed_corpus(folder).shard_urls
    assert trained_on.info.num_records == N and trained_on.info.image_size == SIZE


def test_a_pattern_or_a_folder_names_the_same_corpus_folder(synthetic):
    folder = corpus_folder(synthetic, SIZE)
    for path in (str(folder), f"{folder}/synth-{{000000..000003}}.tar"):
        assert corpus_folder(DataConfig(source="shards", path=path), SIZE) == folder


def test_evaluation_needs_a_local_corpus_folder(tmp_path):
    cfg = DataConfig(source="shards", path="pipe:cat x.tar", allow_pipe=True)
    with pytest.raises(GanscaleError, match="evaluation needs a local corpus folder"):
        corpus_folder(cfg, SIZE)


def test_header_keys_match_the_reader(synthetic):
    """list_keys reads tar headers only; read_corpus and the loader group records by key with
    WebDataset: both must name every record the same way, in the same order."""
    folder = corpus_folder(synthetic, SIZE)
    keys = list_keys(folder)
    streamed = [r["__key__"] for r in iter_records(packed_corpus(folder).shard_urls)]
    assert keys == streamed and len(keys) == N
    first = read_corpus(folder, SIZE, keys=keys[:5][::-1])
    assert first.keys == keys[:5][::-1] and first.images.shape == (5, 3, SIZE, SIZE)


def test_shard_keys_keep_folders_inside_the_tar_like_webdataset(tmp_path):
    path = tmp_path / "nested.tar"
    with tarfile.open(path, "w") as tar:
        for name in ("a/x.png", "a/x.json", "b/x.png", "y.tar.png"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"0"))
    assert shard_keys(path) == ["a/x", "b/x", "y"]
    assert [r["__key__"] for r in iter_records([str(path)])] == ["a/x", "b/x", "y"]
