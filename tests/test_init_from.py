"""`ganscale train --init-from RUN_OR_EXPORT` and `train.freeze_d`: real Trainer, CLI and corpora.

The source run is a tiny conditional GAN trained on a class-folder corpus (one attribute, three
values) packed by `ganscale data pack`; the other vocabulary is the built-in synthetic corpus
(two attributes, hair and eyes, other values).
"""

import json

import pytest
import torch
from conftest import REPO
from PIL import Image
from safetensors.torch import load_file, save_file

from ganscale.cli import main
from ganscale.config import load_config
from ganscale.corpus.pack import pack
from ganscale.errors import ConfigError, GanscaleError
from ganscale.models import build_discriminator, build_generator
from ganscale.models.conditioning import discriminator_blocks, generator_label_inputs
from ganscale.outputs.export import generator_meta
from ganscale.outputs.tracking import read_metrics
from ganscale.runtime import build_runtime
from ganscale.train.checkpoint import list_checkpoints
from ganscale.train.init_from import apply_init, plan_init
from ganscale.train.plan import d_norm_of, plan_for
from ganscale.train.trainer import Trainer, train

TINY = REPO / "configs/tiny.yaml"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


@pytest.fixture(scope="module")
def class_corpus(tmp_path_factory):
    """A packed class-folder corpus: three classes of 12 coloured 16 px images."""
    root = tmp_path_factory.mktemp("classes")
    gen = torch.Generator().manual_seed(0)
    for name, colour in COLOURS.items():
        (root / "src" / name).mkdir(parents=True)
        for i in range(12):
            jitter = torch.randint(-20, 21, (3,), generator=gen).tolist()
            rgb = tuple(max(0, min(255, c + j)) for c, j in zip(colour, jitter, strict=True))
            Image.new("RGB", (16, 16), rgb).save(root / "src" / name / f"{i}.png")
    pack(root / "src", root / "packed", size=16)
    return root / "packed"


def _class_overrides(corpus):
    return ["data.source=shards", f"data.path={corpus}", "data.shuffle_buffer=8"]


@pytest.fixture(scope="module")
def source_run(class_corpus, tmp_path_factory):
    """A tiny conditional run trained 6 steps on the class corpus (checkpoints at 3 and 6)."""
    run = tmp_path_factory.mktemp("source") / "run"
    train(load_config(TINY, _class_overrides(class_corpus)), run)
    return run


def _start(cfg, run_dir, source):
    """A Trainer started from ``source`` (the line it prints is captured by the caller)."""
    plan = plan_init(cfg, source, run_dir=run_dir)
    rt = build_runtime(cfg)
    return Trainer(plan_for(cfg, rt), run_dir, rt, init=plan), rt


def _fresh(cfg, num_classes):
    """G and D as the Trainer initialises them (same seed, same order)."""
    torch.manual_seed(cfg.seed)
    G = build_generator(cfg.model, num_classes)
    return G.state_dict(), build_discriminator(cfg.model, num_classes, norm=d_norm_of(cfg)).state_dict()


def _source_weights(run):
    folder = list_checkpoints(run)[-1].path
    return load_file(str(folder / "G.safetensors")), load_file(str(folder / "D.safetensors"))


def _one_line(text):
    lines = [ln for ln in text.splitlines() if ln.startswith("--init-from")]
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.slow
def test_other_vocabulary_reinitialises_conditioning_and_starts_at_step_0(
    source_run, tmp_path, tiny_overrides, capsys
):
    cfg = load_config(TINY, tiny_overrides)  # synthetic corpus: hair (12 values), eyes (10)
    g_src, d_src = _source_weights(source_run)
    trainer, rt = _start(cfg, tmp_path / "ft", source_run)
    try:
        line = _one_line(capsys.readouterr().out)
        assert line.endswith(
            "re-initialised (new conditions: hair, eyes): G.net.0 (label inputs), D.class_heads.0, "
            "D.class_heads.1; not used (the source's conditions not in this corpus): class"
        )
        g, d = rt.module("g").state_dict(), rt.module("d").state_dict()
        g0, d0 = _fresh(cfg, [12, 10])
        z = cfg.model.z_dim
        for k, v in g.items():
            if k == "net.0.weight":  # [z + 22 one-hot rows, ...]: z's rows loaded, label rows fresh
                assert torch.equal(v[:z], g_src[k][:z]) and torch.equal(v[z:], g0[k][z:])
                assert v.shape[0] == z + 22 and g_src[k].shape[0] == z + 3
            else:
                assert torch.equal(v, g_src[k]), k
        for k, v in d.items():
            if k.startswith("class_heads."):
                assert torch.equal(v, d0[k]), k
            else:
                assert torch.equal(v, d_src[k]), k
        assert (
            f"loaded {len(g)} tensors of G, {len(d) - sum(k.startswith('class_heads.') for k in d)} of D"
            in line
        )
        result = trainer.run()  # trains on the new vocabulary, from step 0
    finally:
        rt.end()
    assert result.step == 6
    run = tmp_path / "ft"
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss/d" in r] == [2, 4, 6]
    assert [c.step for c in list_checkpoints(run)] == [3, 6]
    assert {"acc/real/hair", "acc/real/eyes"} <= set(read_metrics(run / "metrics.jsonl")[-1])
    assert json.loads((run / "generator.json").read_text())["attributes"]["hair"][0] == "aqua"


@pytest.mark.slow
def test_same_vocabulary_loads_every_tensor_through_the_cli(source_run, class_corpus, tmp_path, capsys):
    g_src, d_src = _source_weights(source_run)
    over = _class_overrides(class_corpus)
    cfg = load_config(TINY, over)
    trainer, rt = _start(cfg, tmp_path / "direct", source_run)
    try:
        assert all(torch.equal(v, g_src[k]) for k, v in rt.module("g").state_dict().items())
        assert all(torch.equal(v, d_src[k]) for k, v in rt.module("d").state_dict().items())
    finally:
        trainer.close()
        rt.end()
    capsys.readouterr()
    args = ["train", str(TINY), "--out", str(tmp_path / "cli"), "--init-from", str(source_run)]
    with pytest.raises(SystemExit) as e:
        main([*args, *[a for o in over for a in ("--set", o)], "--set", "train.max_steps=2"])
    assert e.value.code == 0
    assert _one_line(capsys.readouterr().out) == (
        f"--init-from {source_run}: loaded {len(g_src)} tensors of G, {len(d_src)} of D; "
        "re-initialised (new conditions): none"
    )
    assert [c.step for c in list_checkpoints(tmp_path / "cli")] == [2]  # a new run: steps 1, 2
    # an exported model folder holds only G: D starts fresh, and the line says so
    with pytest.raises(SystemExit) as e:
        main(["export", str(source_run), "--out", str(tmp_path / "exported")])
    assert e.value.code == 0
    capsys.readouterr()
    trainer, rt = _start(cfg, tmp_path / "from-export", tmp_path / "exported")
    try:
        line = _one_line(capsys.readouterr().out)
        assert (
            "D starts fresh (model.safetensors holds only G); re-initialised (new conditions): none" in line
        )
        ema = load_file(str(tmp_path / "exported" / "model.safetensors"))
        assert all(torch.equal(v, ema[k]) for k, v in rt.module("g").state_dict().items())
        _, d0 = _fresh(cfg, [3])
        assert all(torch.equal(v, d0[k]) for k, v in rt.module("d").state_dict().items())
    finally:
        trainer.close()
        rt.end()


def _cli_error(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    return err.strip()


@pytest.mark.slow
def test_refusals_are_one_line_and_leave_the_run_folder_alone(source_run, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["train", str(TINY), "--out", str(out)]
    err = _cli_error([*base, "--set", "model.g_channels=16", "--init-from", str(source_run)], capsys)
    assert err == (
        f"error: --init-from {source_run}: its networks have other shapes than this config's "
        "(model.g_channels 8 -> 16), so its weights would not load; use the source's model settings "
        "(--set model.g_channels=8) or another source"
    )
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    err = _cli_error([*base, "--set", "model.image_size=32", "--init-from", str(source_run)], capsys)
    assert "(model.image_size 16 -> 32)" in err
    err = _cli_error([*base, "--init-from", str(tmp_path / "nowhere")], capsys)
    assert err.endswith("nowhere: no such run folder, checkpoint folder or exported model")
    err = _cli_error([*base, "--init-from", str(tmp_path)], capsys)  # a folder without weights
    assert "holds no weights" in err
    step3 = list_checkpoints(source_run)[0].path
    err = _cli_error([*base, "--init-from", str(source_run), "--resume", str(step3)], capsys)
    assert f"contradicts --resume {step3}" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    # --resume latest where the run has a checkpoint: it continues; the init is not applied, and said so
    cfg = load_config(TINY)
    plan = plan_init(cfg, source_run, run_dir=source_run, resume="latest")
    assert (
        plan.skip
        == f"--init-from {source_run}: not applied, --resume latest continues {source_run} from its step 6"
    )
    with pytest.raises(GanscaleError, match="--overwrite removes first"):
        plan_init(cfg, source_run, run_dir=source_run, overwrite=True)


@pytest.mark.slow
def test_freeze_d_keeps_the_first_blocks_bit_identical(tmp_path, tiny_overrides):
    cfg = load_config(TINY, [*tiny_overrides, "train.freeze_d=1"])
    rt = build_runtime(cfg)
    try:
        trainer = Trainer(plan_for(cfg, rt), tmp_path / "run", rt)
        D = rt.module("d")
        frozen = {id(p) for m in discriminator_blocks(D)[0] for p in m.parameters()}
        before = {k: p.detach().clone() for k, p in D.named_parameters()}
        names = {k for k, p in D.named_parameters() if id(p) in frozen}
        assert names == {"trunk.net.0.weight", "trunk.net.0.bias"}
        result = trainer.run()
    finally:
        rt.end()
    assert result.step == 6
    after = dict(D.named_parameters())
    for k, v in before.items():
        if k in names:
            assert torch.equal(after[k], v) and not after[k].requires_grad, k
        else:
            assert not torch.equal(after[k], v), f"{k} did not train"
    saved = load_file(str(tmp_path / "run/checkpoints/step-0000006/D.safetensors"))
    assert all(torch.equal(saved[k], before[k]) for k in names)
    # no optimizer state for the frozen tensors: excluded from D's updates
    opt = torch.load(tmp_path / "run/checkpoints/step-0000006/optim_D.pt", weights_only=True)
    order = [k for k, _ in D.named_parameters()]
    assert {order[i] for i in opt["state"]} == set(order) - names


def test_freeze_d_above_the_block_count_is_refused(tmp_path, tiny_overrides, capsys):
    """Refused by the plan (it needs the model's block count), before the run folder is made."""
    out = tmp_path / "out"
    args = ["train", str(TINY), "--out", str(out), *(f"--set={o}" for o in tiny_overrides)]
    with pytest.raises(SystemExit) as e:
        main([*args, "--set", "train.freeze_d=3"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2
    assert err == (
        "error: config key train.freeze_d: 3 is more than D's 2 blocks (dcgan at 16 px); use at most 2"
    ), err
    assert not out.exists()
    with pytest.raises(ConfigError, match="train.freeze_d: must be >= 0"):
        load_config(TINY, ["train.freeze_d=-1"])
    assert load_config(TINY, ["train.freeze_d=2"]).train.freeze_d == 2


def _checkpoint_like(folder, cfg, attributes):
    """A source folder as a checkpoint holds it (G, D, generator.json), random weights so that
    every copied tensor is told apart from a fresh one."""
    classes = [len(v) for v in attributes.values()]
    G, D = build_generator(cfg.model, classes), build_discriminator(cfg.model, classes, norm=d_norm_of(cfg))
    folder.mkdir()
    for name, net in (("G", G), ("D", D)):
        state = {k: torch.randn(v.shape) if v.is_floating_point() else v for k, v in net.state_dict().items()}
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / f"{name}.safetensors"))
    (folder / "generator.json").write_text(json.dumps(generator_meta(cfg, attributes)))
    (folder / "state.json").write_text("{}")
    return load_file(str(folder / "G.safetensors")), load_file(str(folder / "D.safetensors"))


@pytest.mark.parametrize(
    "over,reinit",
    [
        (
            ["model.arch=resnet", "model.g_condition=cbn"],
            "G's 4 conditional BatchNorm embeddings, D.class_heads.0",
        ),
        (
            ["model.spectral_norm=both", "model.head=projection"],
            "G.net.0 (label inputs), D.class_heads.0, D.embeds.0",
        ),
    ],
)
def test_a_shared_attribute_keeps_its_conditioning_rows(tmp_path, over, reinit):
    """Source attribute `label` (a, b, c); the new corpus adds `vendor` before it: label's rows of
    G's label inputs and its D modules are the source's, vendor's are as initialised."""
    cfg = load_config(TINY, over)
    g_src, d_src = _checkpoint_like(tmp_path / "src", cfg, {"label": ["a", "b", "c"]})
    target = {"vendor": ["x", "y"], "label": ["a", "b", "c"]}
    G, D = build_generator(cfg.model, [2, 3]), build_discriminator(cfg.model, [2, 3], norm=d_norm_of(cfg))
    fresh_g = {k: v.clone() for k, v in G.state_dict().items()}
    line = apply_init(G, D, plan_init(cfg, tmp_path / "src"), target)
    assert line.endswith(f"re-initialised (new conditions: vendor): {reinit}")
    labels = generator_label_inputs(G)
    assert labels
    for k, v in G.state_dict().items():
        if k in labels:
            li = labels[k]  # rows: [offset (z) | vendor x, y | label a, b, c]
            assert torch.equal(v.narrow(li.dim, 0, li.offset), g_src[k].narrow(li.dim, 0, li.offset))
            assert torch.equal(v.narrow(li.dim, li.offset, 2), fresh_g[k].narrow(li.dim, li.offset, 2))
            assert torch.equal(v.narrow(li.dim, li.offset + 2, 3), g_src[k].narrow(li.dim, li.offset, 3))
        elif v.shape == g_src[k].shape:
            assert torch.equal(v, g_src[k]), k
    for k, v in D.state_dict().items():
        if k.startswith(("class_heads.1.", "embeds.1.")):  # label: the source's attribute 0
            assert torch.equal(v, d_src[k.replace(".1.", ".0.", 1)]), k
        elif not k.startswith(("class_heads.0.", "embeds.0.")):
            assert torch.equal(v, d_src[k]), k
    G(torch.randn(2, cfg.model.z_dim), torch.tensor([[0, 2], [1, -1]]))  # still runs


def test_an_unconditional_source_starts_a_conditional_run(tmp_path):
    """D's adversarial head follows model.conditional (separate heads): re-initialised, named."""
    src_cfg = load_config(TINY, ["model.conditional=false"])
    g_src, d_src = _checkpoint_like(tmp_path / "src", src_cfg, {})
    cfg = load_config(TINY)
    G, D = build_generator(cfg.model, [3]), build_discriminator(cfg.model, [3], norm=d_norm_of(cfg))
    line = apply_init(G, D, plan_init(cfg, tmp_path / "src"), {"label": ["a", "b", "c"]})
    assert line.endswith(
        "re-initialised (new conditions: label): G.net.0 (label inputs), D.adv_head, D.class_heads.0"
    )
    z = cfg.model.z_dim
    assert torch.equal(G.state_dict()["net.0.weight"][:z], g_src["net.0.weight"])
    assert all(torch.equal(v, d_src[k]) for k, v in D.state_dict().items() if k.startswith("trunk."))
