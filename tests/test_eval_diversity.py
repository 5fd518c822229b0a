"""Within-condition diversity: the edge-structure embedding, the ratio, and best/ by fid_div,
through the real evaluator on a small packed corpus whose images vary in structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image, ImageDraw
from torch import nn

from ganscale.config import EvalConfig, load_config
from ganscale.corpus.pack import write_shards
from ganscale.evaluation.corpus_images import read_corpus
from ganscale.evaluation.diversity import fid_div, structure_embedding, within_condition_diversity
from ganscale.evaluation.during_training import TrainingEvaluator
from ganscale.runtime.base import Runtime

SIZE = 16
COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220)}
PER_COLOUR = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()  # see test_eval_classifier.py: 10x faster on a shared CPU
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shapes_image(rng: np.random.Generator, colour: tuple[int, int, int]) -> Image.Image:
    """A random layout of a few shapes in the condition's colour on a random grey background:
    the colour says the condition, the layout varies (what a face corpus's hair styles do)."""
    img = Image.new("RGB", (64, 64), tuple(int(v) for v in rng.integers(90, 170, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 5))):
        x0, y0 = (int(v) for v in rng.integers(0, 44, 2))
        w, h = (int(v) for v in rng.integers(10, 30, 2))
        shade = float(rng.uniform(0.5, 1.0))
        fill = tuple(int(c * shade) for c in colour)
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=fill)
        else:
            draw.rectangle((x0, y0, x0 + w, y0 + h), fill=fill)
    return img


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    items = (
        (f"{name}-{i}", shapes_image(rng, rgb), {"colour": c})
        for c, (name, rgb) in enumerate(COLOURS.items())
        for i in range(PER_COLOUR)
    )
    out = tmp_path_factory.mktemp("shapes") / "shards"
    write_shards(items, out, attributes={"colour": list(COLOURS)}, size=SIZE, per_shard=32)
    return out


class BankGenerator(nn.Module):
    """G(z, y) -> a real image of condition y from a bank: a different one for each z
    (``collapsed=False``, a perfect generator), or always the same one (a collapsed one)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, collapsed: bool) -> None:
        super().__init__()
        self.register_buffer("images", images)
        self.register_buffer("labels", labels)
        self.collapsed = collapsed

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = []
        for zi, yi in zip(z, y, strict=True):
            bank = (self.labels == yi[0]).nonzero().flatten()
            pick = 0 if self.collapsed else int((zi[0].abs() * 1e6).long() % len(bank))
            out.append(self.images[bank[pick]])
        return torch.stack(out)


def test_structure_embedding_ignores_colour_and_tint_but_not_layout():
    rng = np.random.default_rng(1)
    img = torch.from_numpy(np.array(shapes_image(rng, COLOURS["red"]))).permute(2, 0, 1)[None]
    x = img.float().div(127.5).sub(1)
    recoloured = x[:, [2, 1, 0]]  # red shapes -> blue shapes, same layout
    tinted = (x + torch.tensor([0.1, -0.05, 0.08]).view(1, 3, 1, 1)).clamp(-1, 1)  # background tint
    other = torch.from_numpy(np.array(shapes_image(rng, COLOURS["red"]))).permute(2, 0, 1)[None]
    e = structure_embedding(torch.cat([x, recoloured, tinted]))
    e_other = structure_embedding(other)  # uint8 input is accepted too
    assert e.shape == (3, 256) and torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-3)
    layout_gap = float((e[0] - e_other[0]).norm())
    assert layout_gap > 0.5  # another layout: far apart (max 2)
    # another colour or a tint: the same edges up to the luma weights, far closer than a new layout
    assert float((e[0] - e[1]).norm()) < 0.35 * layout_gap
    assert float((e[0] - e[2]).norm()) < 0.1 * layout_gap
    assert structure_embedding(torch.zeros(2, 3, 8, 8)).abs().max() == 0  # flat images: no edges


def test_within_condition_ratio_on_vectors():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(200, 8, generator=gen)
    labels = torch.randint(0, 3, (200, 1), generator=gen)
    same = torch.randn(200, 8, generator=gen)
    ratio, conditions = within_condition_diversity(same, labels, real, labels)
    assert conditions == 3 and 0.9 < ratio < 1.1
    half, _ = within_condition_diversity(0.5 * same, labels, real, labels)
    assert half == pytest.approx(ratio / 2)
    collapsed = real[labels[:, 0]].clone()  # one vector per condition
    assert within_condition_diversity(collapsed, labels, real, labels)[0] == 0.0
    # unconditional: the whole set is one condition
    assert within_condition_diversity(same, None, real, None)[1] == 1
    # no condition with 2 of each: not computable
    assert within_condition_diversity(same[:1], labels[:1], real, labels) is None
    with pytest.raises(ValueError, match="both sets"):
        within_condition_diversity(same, labels, real, None)
    assert fid_div(2.0, 1.3) == 2.0 and fid_div(2.0, 0.5) == 4.0 and fid_div(2.0, 0.0) == 2000.0


@pytest.mark.slow
def test_collapsed_generator_scores_near_zero_and_never_wins_best(corpus):
    cfg = load_config(REPO / "configs/tiny.yaml")
    cfg.eval = EvalConfig(n=64, metric="fid_div")
    attributes = {"colour": list(COLOURS)}
    real = read_corpus(corpus, SIZE)
    images = real.as_float()
    varied = BankGenerator(images, real.labels[:, 0], collapsed=False)
    collapsed = BankGenerator(images, real.labels[:, 0], collapsed=True)

    def evaluator() -> TrainingEvaluator:
        return TrainingEvaluator(cfg, attributes, corpus, "cpu", log=lambda *_: None)

    ev = evaluator()  # trains the corpus's classifier on first use (the real evaluation path)
    good = ev.evaluate(varied, 1, Runtime())
    bad = ev.evaluate(collapsed, 2, Runtime())
    assert good["eval/diversity_conditions"] == 2 == bad["eval/diversity_conditions"]
    assert 0.8 < good["eval/diversity"] < 1.2, good  # real images: as varied as real images
    assert bad["eval/diversity"] < 0.05 and bad["eval/diversity_classifier"] < 0.05, bad
    assert good["eval/acc_joint"] > 0.9 and bad["eval/acc_joint"] > 0.9  # the colours are right in both
    assert bad["eval/fid_div"] > 10 * good["eval/fid_div"]
    # best/ by fid_div: the collapsed generator is refused whichever comes first
    assert ev.is_better(good, 1) and not ev.is_better(bad, 2) and ev.best_step == 1
    ev2 = evaluator()
    assert ev2.is_better(bad, 1) and ev2.is_better(good, 2) and ev2.best_step == 2
    # a metric computed after the diversity figures (uniform accuracy) is not called "not computable"
    said = []
    cfg.eval = EvalConfig(n=64, metric="acc_joint_uniform")
    uniform = TrainingEvaluator(cfg, attributes, corpus, "cpu", log=said.append)
    assert "eval/acc_joint_uniform" in uniform.evaluate(varied, 1, Runtime())
    assert not [s for s in said if "not computable" in s], said
