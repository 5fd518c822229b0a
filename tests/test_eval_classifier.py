"""The attribute classifier on the built-in corpus: it learns, it round-trips, its features
separate real images from noise."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ganscale.corpus.synthetic import ensure_synthetic_corpus
from ganscale.errors import GanscaleError
from ganscale.evaluation.classifier import WEIGHTS, load_classifier, train_classifier
from ganscale.evaluation.corpus_images import is_held_out, list_keys, read_corpus
from ganscale.evaluation.fid import fid

# The tiny corpus of configs/tiny.yaml (256 images at 16 px), in the session's cache folder.
N, SIZE = 256, 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On a shared 2-core machine, torch's 2 OpenMP threads spin against other processes: the
    # classifier's small convolutions ran 10x slower (0.6 s vs 0.05 s a step) than on 1 thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus(corpus_cache):
    return ensure_synthetic_corpus(corpus_cache, N, SIZE, 0)


@pytest.fixture(scope="module")
def trained(corpus):
    return train_classifier(corpus, seed=0, log=lambda *_: None)


def test_split_is_fixed_and_disjoint(corpus):
    keys = list_keys(corpus)
    assert len(keys) == N == len(set(keys))
    train = read_corpus(corpus, SIZE, "train")
    held = read_corpus(corpus, SIZE, "held_out")
    assert set(train.keys).isdisjoint(held.keys) and len(train) + len(held) == N
    assert all(is_held_out(k) for k in held.keys)
    assert 0.1 < len(held) / N < 0.3
    assert train.images.shape[1:] == (3, SIZE, SIZE) and train.images.dtype == torch.uint8
    assert train.labels.shape == (len(train), 2) and int(train.labels.min()) >= 0


@pytest.mark.slow
def test_classifier_learns_the_synthetic_corpus(corpus, trained):
    acc = trained.meta["held_out_accuracy"]
    # chance: 1/12 hair, 1/10 eyes, 1/120 joint
    assert acc["hair"] > 0.6 and acc["eyes"] > 0.35 and acc["joint"] > 0.25, acc
    meta = json.loads((corpus / "classifier.json").read_text())
    assert meta["attributes"] == {"hair": trained.attributes["hair"], "eyes": trained.attributes["eyes"]}
    assert meta["held_out_accuracy"] == acc and meta["image_size"] == SIZE
    assert meta["train_images"] + meta["held_out_images"] == N
    assert not list(corpus.glob(".*.tmp")), "temporary files left behind"
    load_file(str(corpus / WEIGHTS))  # plain safetensors


@pytest.mark.slow
def test_saved_classifier_predicts_the_same(corpus, trained):
    held = read_corpus(corpus, SIZE, "held_out")
    loaded = load_classifier(corpus)
    f1, p1 = trained.run(held.as_float())
    f2, p2 = loaded.run(held.as_float())
    assert torch.equal(p1, p2) and torch.allclose(f1, f2, atol=1e-5)
    assert loaded.digest == trained.digest


@pytest.mark.slow
def test_feature_space_fid_separates_real_from_noise(corpus, trained):
    train = read_corpus(corpus, SIZE, "train")
    held = read_corpus(corpus, SIZE, "held_out")
    real_a, _ = trained.run(train.as_float())
    real_b, _ = trained.run(held.as_float())
    noise, _ = trained.run(
        torch.rand(len(held), 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    )
    assert fid(real_a, real_a) == pytest.approx(0.0, abs=1e-6)
    real_vs_real, real_vs_noise = fid(real_a, real_b), fid(real_a, noise)
    assert real_vs_noise > 5 * real_vs_real, (real_vs_real, real_vs_noise)


def test_unreadable_or_missing_classifier_is_a_clear_error(tmp_path, corpus):
    with pytest.raises(GanscaleError, match="classifier train"):
        load_classifier(tmp_path)
    (tmp_path / "classifier.json").write_text("{not json")
    (tmp_path / WEIGHTS).write_bytes(b"garbage")
    with pytest.raises(GanscaleError, match="unreadable classifier"):
        load_classifier(tmp_path)


@pytest.mark.slow
def test_cli_trains_and_reports(tmp_path, corpus_cache):
    from ganscale.cli import _register_groups, app

    small = ensure_synthetic_corpus(tmp_path, 96, SIZE, 1)
    _register_groups()
    result = CliRunner().invoke(
        app, ["classifier", "train", str(small), "--epochs", "2", "--max-images", "64"]
    )
    assert result.exit_code == 0, result.output
    assert "held-out accuracy" in result.output
    assert (small / "classifier.safetensors").is_file() and (small / "classifier.json").is_file()
