"""`ganscale eval` on a tiny trained run, and the training-time evaluator."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from pathlib import Path

import pytest
import torch
from conftest import REPO
from PIL import Image
from typer.testing import CliRunner

from ganscale.config import EvalConfig, load_config
from ganscale.data.resolve import corpus_folder
from ganscale.errors import GanscaleError
from ganscale.evaluation.during_training import TrainingEvaluator
from ganscale.evaluation.evaluate import evaluate_run
from ganscale.evaluation.features import INCEPTION_ENV
from ganscale.outputs.export import load_generator
from ganscale.runtime.base import Runtime
from ganscale.runtime.env import inception_weights
from ganscale.train.trainer import train

pytestmark = pytest.mark.slow

SPACE_KEYS = {
    f"{m}_{s}" for m in ("fid", "kid", "precision", "recall") for s in ("classifier", "inception")
} | {
    "kid_classifier_std",
    "kid_inception_std",
}
TOP_KEYS = {
    "format", "run", "generator", "n", "image_size", "seed", "corpus", "classifier", "accuracy",
    "real_accuracy", "confusion_matrices", "confusion_counts", "inception", "real_vs_real", "real_cache",
    "seconds", "acc_uniform", "acc_per_value", "acc_per_value_n", "truncation_psi",
    "diversity", "diversity_classifier", "diversity_conditions", "fid_div",
} | SPACE_KEYS  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()  # see test_eval_classifier.py: 10x faster on a shared CPU
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus_cache):
    run = tmp_path_factory.mktemp("eval") / "run"
    cfg = load_config(REPO / "configs/tiny.yaml", [f"data.cache_dir={corpus_cache}"])
    train(cfg, run)
    return run


@pytest.fixture(autouse=True)
def no_inception(monkeypatch):
    monkeypatch.delenv(INCEPTION_ENV, raising=False)


def test_eval_writes_eval_json_with_every_field(run, tmp_path):
    out = tmp_path / "e" / "eval.json"
    result = evaluate_run(run, n=48, out=out, log=lambda *_: None)
    written = json.loads(out.read_text())
    assert set(written) == TOP_KEYS and written == json.loads(json.dumps(result))
    assert written["n"] == 48 and written["image_size"] == 16
    for acc in (written["accuracy"], written["real_accuracy"], written["classifier"]["held_out_accuracy"]):
        assert set(acc) == {"hair", "eyes", "joint"} and all(0 <= v <= 1 for v in acc.values())
    for key in ("fid_classifier", "kid_classifier", "precision_classifier", "recall_classifier"):
        assert isinstance(written[key], float), key
        assert isinstance(written["real_vs_real"][key], float), key
    assert written["fid_classifier"] >= 0 and 0 <= written["precision_classifier"] <= 1
    # a 6-step GAN is far from the data: further than one real half from the other
    assert written["fid_classifier"] > written["real_vs_real"]["fid_classifier"]
    assert written["real_vs_real"]["n"] == 48
    # diversity: computable only where a condition drew 2 generated and 2 real images
    assert isinstance(written["diversity_conditions"], int)
    if written["diversity_conditions"]:
        assert written["diversity"] > 0 and written["fid_div"] >= written["fid_classifier"]
    else:
        assert written["diversity"] is None and written["fid_div"] is None
    assert {"diversity", "diversity_classifier"} <= set(written["real_vs_real"])
    # no Inception weights: the inception fields are null and the one-line message says how
    assert all(written[k] is None for k in SPACE_KEYS if k.endswith(("inception", "inception_std")))
    message = written["inception"]["message"]
    assert not written["inception"]["available"] and "\n" not in message and INCEPTION_ENV in message
    for attr, name in written["confusion_matrices"].items():
        png = out.parent / name
        assert Image.open(png).size[0] > 100, png
        counts = torch.tensor(written["confusion_counts"][attr])
        assert int(counts.sum()) == 48 and counts.shape[0] == counts.shape[1]
    assert set(written["confusion_matrices"]) == {"hair", "eyes"}
    # the real features were cached per corpus; a second run reads them and agrees
    cache = [Path(p) for p in written["real_cache"]]
    assert cache and all(p.suffix == ".safetensors" and p.is_file() for p in cache)
    again = evaluate_run(run, n=48, out=tmp_path / "again.json", log=lambda *_: None)
    assert again["real_vs_real"] == written["real_vs_real"]
    assert again["fid_classifier"] == pytest.approx(written["fid_classifier"])


def test_eval_reports_uniform_and_per_colour_accuracy_consistently(run, tmp_path):
    from ganscale.evaluation.evaluate import summary

    n = 240  # 12 hair x 10 eyes combinations, each exactly twice in the uniform draws
    result = evaluate_run(run, n=n, out=tmp_path / "u.json", log=lambda *_: None)
    assert result == json.loads((tmp_path / "u.json").read_text())
    attrs = load_generator(run)[1]["attributes"]
    even, per, counts = result["acc_uniform"], result["acc_per_value"], result["acc_per_value_n"]
    assert set(even) == {"hair", "eyes", "joint"} and all(0 <= v <= 1 for v in even.values())
    assert even["joint"] <= min(even["hair"], even["eyes"]) + 1e-9
    for attr, values in attrs.items():
        assert list(per[attr]) == values == list(counts[attr])
        assert set(counts[attr].values()) == {n // len(values)}  # every colour equally often
        weighted = sum(per[attr][v] * counts[attr][v] for v in values) / n
        assert weighted == pytest.approx(even[attr], abs=1e-6)  # float32 means
        # the corpus-like draws are consistent with their own confusion counts
        c = torch.tensor(result["confusion_counts"][attr])
        assert result["accuracy"][attr] == pytest.approx(float(c.diagonal().sum() / c.sum()), abs=1e-6)
    assert result["truncation_psi"] == 1.0
    text = summary(result)
    assert "every combination equally often" in text and "hair by value" in text and "weakest" in text
    assert "truncation" not in text
    # 240 draws over 120 combinations: enough conditions drawn twice for a diversity figure
    assert result["diversity_conditions"] > 0 and result["diversity"] > 0
    assert result["fid_div"] == pytest.approx(result["fid_classifier"] / min(1.0, result["diversity"]))
    assert isinstance(result["real_vs_real"]["diversity"], float)
    assert "diversity within a condition" in text and "fid_div" in text

    truncated = evaluate_run(run, n=48, out=tmp_path / "t.json", log=lambda *_: None, truncation=0.4)
    plain = evaluate_run(run, n=48, out=tmp_path / "p.json", log=lambda *_: None, truncation=1.0)
    assert truncated["truncation_psi"] == 0.4 and plain["truncation_psi"] == 1.0
    assert truncated["fid_classifier"] != plain["fid_classifier"]
    assert "truncation psi 0.4" in summary(truncated)
    default = evaluate_run(run, n=48, out=tmp_path / "d.json", log=lambda *_: None)
    assert default["fid_classifier"] == plain["fid_classifier"]  # psi 1 = no truncation, exactly
    assert default["acc_uniform"] == plain["acc_uniform"]
    with pytest.raises(GanscaleError, match=r"--truncation 0: psi must be in \(0, 1\]"):
        evaluate_run(run, n=48, out=tmp_path / "x.json", log=lambda *_: None, truncation=0)


def test_eval_cli_prints_the_inception_message_once(run, tmp_path):
    from ganscale.cli import _register_groups, app

    _register_groups()
    out = tmp_path / "cli.json"
    result = CliRunner().invoke(app, ["eval", str(run), "--n", "32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and (tmp_path / "confusion-hair.png").is_file()
    assert result.output.count("Inception FID/KID skipped") == 1
    assert "attribute accuracy" in result.output and "real-vs-real" in result.output
    assert "every combination equally often" in result.output
    bad = CliRunner().invoke(app, ["eval", str(run), "--n", "32", "--truncation", "2"])
    assert isinstance(bad.exception, GanscaleError) and "--truncation 2.0" in str(bad.exception)


class _TinyInception(torch.nn.Module):
    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), x.amax((2, 3)), x.std((2, 3))], 1)


def test_eval_with_local_inception_fills_the_inception_fields(run, tmp_path, monkeypatch):
    path = tmp_path / "inception.pt"
    torch.jit.script(_TinyInception()).save(str(path))
    monkeypatch.setenv(INCEPTION_ENV, str(path))  # read at the edge, as the CLI does
    result = evaluate_run(
        run, n=32, out=tmp_path / "i.json", log=lambda *_: None, inception_env=inception_weights()
    )
    assert result["inception"]["available"] and result["inception"]["path"] == str(path)
    assert result["inception"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert isinstance(result["fid_inception"], float) and isinstance(
        result["real_vs_real"]["fid_inception"], float
    )


def test_real_statistics_are_cached_beside_the_corpus_per_feature_extractor(run, tmp_path):
    """The second eval reads the real features (classifier and Inception, keyed by each
    extractor's sha256) from <corpus>/eval-cache/ instead of reading and judging the images."""
    path = tmp_path / "inception.pt"
    torch.jit.script(_TinyInception()).save(str(path))
    lines: list[str] = []
    first = evaluate_run(run, n=40, out=tmp_path / "1.json", log=lines.append, inception=path)
    assert sum(line.startswith("real statistics:") for line in lines) == 2  # classifier + Inception
    cache = [Path(p) for p in first["real_cache"]]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(cache) == 2 and all(p.parent.name == "eval-cache" for p in cache)
    assert first["classifier"]["sha256"] and digest[:16] in cache[1].name
    stamps = [p.stat().st_mtime_ns for p in cache]
    lines.clear()
    second = evaluate_run(run, n=40, out=tmp_path / "2.json", log=lines.append, inception=path)
    assert not any(line.startswith("real statistics:") for line in lines), lines  # nothing recomputed
    assert [p.stat().st_mtime_ns for p in cache] == stamps
    assert second["real_vs_real"] == first["real_vs_real"]
    assert second["fid_inception"] == pytest.approx(first["fid_inception"])
    # another extractor (another sha256): its own statistics, the classifier's still reused
    other = tmp_path / "other.pt"
    torch.jit.script(_StdOnly()).save(str(other))
    lines.clear()
    evaluate_run(run, n=40, out=tmp_path / "3.json", log=lines.append, inception=other)
    computed = [line for line in lines if line.startswith("real statistics:")]
    assert len(computed) == 1 and "Inception features" in computed[0], lines


class _StdOnly(torch.nn.Module):
    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return x.std((2, 3))


def _evaluator(run):
    cfg = load_config(run / "config.yaml")
    cfg.eval = EvalConfig(n=64)
    G, meta = load_generator(run)
    folder = corpus_folder(cfg.data, cfg.model.image_size)
    return cfg, G, meta, folder


def test_training_evaluator_scores_and_tracks_best(run):
    cfg, G, meta, folder = _evaluator(run)
    ev = TrainingEvaluator(cfg, meta["attributes"], folder, "cpu", log=lambda *_: None)
    rt = Runtime()  # one process: the real single-rank collectives
    m1 = ev.evaluate(G, 6, rt)
    assert {
        "eval/acc/hair",
        "eval/acc/eyes",
        "eval/acc_joint",
        "eval/fid_classifier",
        "eval/kid_classifier",
        "eval/precision_classifier",
        "eval/recall_classifier",
    } <= set(m1)
    assert all(isinstance(v, float) for v in m1.values())
    m2 = ev.evaluate(G, 7, rt)
    assert m2["eval/fid_classifier"] == m1["eval/fid_classifier"]  # fixed z and conditions
    assert ev.is_better(m1, 6) and not ev.is_better(m2, 7)
    assert ev.is_better({"eval/fid_classifier": m1["eval/fid_classifier"] / 2}, 8)
    assert not ev.is_better({"eval/fid_classifier": float("nan")}, 9)
    state = ev.state_dict()
    assert state["best_step"] == 8
    fresh = TrainingEvaluator(cfg, meta["attributes"], folder, "cpu", log=lambda *_: None)
    fresh.load_state_dict(state)
    assert not fresh.is_better(m1, 10)


class _ThreadGather:
    """all_gather_object across threads standing in for ranks (a barrier and a shared list)."""

    def __init__(self, world: int) -> None:
        self.world, self.slots, self.barrier = world, [None] * world, threading.Barrier(world)

    def rank_view(self, rank: int):
        outer = self

        class View:
            def all_gather_object(self, obj):
                outer.barrier.wait()
                outer.slots[rank] = obj
                outer.barrier.wait()
                out = list(outer.slots)
                outer.barrier.wait()
                return out

            def broadcast_object(self, obj, src=0):
                return self.all_gather_object(obj)[src]

        return View()


class _SeesZ(torch.nn.Module):
    """The real G, keeping the z it is given (to check where eval's z comes from)."""

    def __init__(self, G):
        super().__init__()
        self.G, self.z = G, []

    def forward(self, z, labels):
        self.z.append(z.detach().cpu())
        return self.G(z, labels)


def test_eval_and_training_eval_draw_z_as_sample_does(run):
    from ganscale.evaluation.classifier import ensure_classifier
    from ganscale.evaluation.during_training import EVAL_SEED
    from ganscale.evaluation.scoring import generated_features
    from ganscale.outputs.latents import draw_z

    cfg, G, meta, folder = _evaluator(run)
    clf = ensure_classifier(folder, "cpu", log=lambda *_: None)
    seen = _SeesZ(G)
    labels = torch.zeros(40, len(meta["attributes"]), dtype=torch.long)
    generated_features(seen, meta, labels, 40, 7, torch.device("cpu"), clf, batch_size=16, psi=0.5)
    assert torch.equal(torch.cat(seen.z), torch.from_numpy(draw_z(40, meta, 7, psi=0.5)))
    ev = TrainingEvaluator(cfg, meta["attributes"], folder, "cpu", log=lambda *_: None)
    ev._prepare(Runtime())
    during = _SeesZ(G)
    ev._my_share(during)
    assert torch.equal(torch.cat(during.z), torch.from_numpy(draw_z(cfg.eval.n, meta, EVAL_SEED)))


def test_training_evaluator_gives_the_same_numbers_on_two_ranks(run):
    cfg, G, meta, folder = _evaluator(run)
    single = TrainingEvaluator(cfg, meta["attributes"], folder, "cpu", log=lambda *_: None).evaluate(
        G, 1, Runtime()
    )
    gather = _ThreadGather(2)
    results = [None, None]
    evs = [TrainingEvaluator(cfg, meta["attributes"], folder, "cpu", rank=r, world_size=2) for r in range(2)]
    Gs = [G, load_generator(run)[0]]

    def work(r):
        results[r] = evs[r].evaluate(Gs[r], 1, gather.rank_view(r))

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results[0] == results[1]
    for k in single:
        if k != "eval/seconds":
            assert results[0][k] == pytest.approx(single[k], rel=1e-5, abs=1e-6), k


def test_every_rank_measures_in_rank_0s_classifier_space(run, tmp_path):
    """Nodes without a shared cache (issue 21, item 9): rank 1's corpus folder holds another
    classifier (here: rank 0's with perturbed weights). Rank 1 must use rank 0's, so both
    ranks' numbers are the single process's; each rank used its own folder's before."""
    from safetensors.torch import load_file, save_file

    from ganscale.evaluation.classifier import META, WEIGHTS

    cfg, G, meta, folder = _evaluator(run)
    single = TrainingEvaluator(cfg, meta["attributes"], folder, "cpu", log=lambda *_: None).evaluate(
        G, 1, Runtime()
    )
    other = tmp_path / "node1-cache"
    other.mkdir()
    weights = {k: (v * 1.5 if v.is_floating_point() else v) for k, v in load_file(folder / WEIGHTS).items()}
    save_file(weights, str(other / WEIGHTS))
    (other / META).write_text((folder / META).read_text())
    gather = _ThreadGather(2)
    evs = [
        TrainingEvaluator(cfg, meta["attributes"], f, "cpu", rank=r, world_size=2, log=lambda *_: None)
        for r, f in ((0, folder), (1, other))
    ]
    results = [None, None]

    def work(r):
        results[r] = evs[r].evaluate(G if r == 0 else load_generator(run)[0], 1, gather.rank_view(r))

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results[0] is not None and results[0] == results[1]
    for k in single:
        if k != "eval/seconds":
            assert results[0][k] == pytest.approx(single[k], rel=1e-5, abs=1e-6), k


def test_training_evaluator_can_pick_best_by_uniform_joint_accuracy(run):
    cfg, G, meta, folder = _evaluator(run)
    plain = TrainingEvaluator(cfg, meta["attributes"], folder, "cpu", log=lambda *_: None).evaluate(
        G, 1, Runtime()
    )
    assert not any("uniform" in k for k in plain)  # the default evaluation costs what it did
    cfg.eval = EvalConfig(n=64, metric="acc_joint_uniform")
    ev = TrainingEvaluator(cfg, meta["attributes"], folder, "cpu", log=lambda *_: None)
    m = ev.evaluate(G, 1, Runtime())
    assert {"eval/acc_joint_uniform", "eval/acc_uniform/hair", "eval/acc_uniform/eyes"} <= set(m)
    assert 0 <= m["eval/acc_joint_uniform"] <= min(m["eval/acc_uniform/hair"], m["eval/acc_uniform/eyes"])
    assert {k: v for k, v in m.items() if k in plain and k != "eval/seconds"} == {
        k: v for k, v in plain.items() if k != "eval/seconds"
    }
    assert ev.direction == "max" and ev.is_better(m, 1)
    assert ev.is_better({"eval/acc_joint_uniform": m["eval/acc_joint_uniform"] + 0.1}, 2)
    gather = _ThreadGather(2)
    results = [None, None]
    evs = [TrainingEvaluator(cfg, meta["attributes"], folder, "cpu", rank=r, world_size=2) for r in range(2)]
    Gs = [G, load_generator(run)[0]]

    def work(r):
        results[r] = evs[r].evaluate(Gs[r], 1, gather.rank_view(r))

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results[0]["eval/acc_joint_uniform"] == pytest.approx(m["eval/acc_joint_uniform"], abs=1e-6)


def test_training_hook_logs_metrics_and_keeps_best(tmp_path, corpus_cache):
    from ganscale.evaluation.during_training import TrainingEvalHook
    from ganscale.outputs.export import find_export
    from ganscale.outputs.tracking import MetricsFile, NullTracker, read_metrics
    from ganscale.runtime import build_runtime
    from ganscale.train.trainer import Trainer, plan_for

    cfg = load_config(REPO / "configs/tiny.yaml", [f"data.cache_dir={corpus_cache}"])
    cfg.eval = EvalConfig(every=2, n=32)
    run = tmp_path / "hook"
    run.mkdir()
    rt = build_runtime(cfg)
    try:
        trainer = Trainer(
            plan_for(cfg, rt), run, rt, metrics=MetricsFile(run / "metrics.jsonl"), tracker=NullTracker()
        )
        hook = TrainingEvalHook.build(trainer.eval_context())
        assert hook.after_step(1) is None
        first = hook.after_step(2)
        assert first is not None and (run / "best" / "generator.safetensors").is_file()
        assert json.loads((run / "best" / "best.json").read_text())["step"] == 2
        assert find_export(run)[0] == run / "best" / "generator.safetensors"  # `ganscale sample RUN` uses it
        hook.after_step(3, final=True)  # same G, same z: not better, best stays at step 2
        assert json.loads((run / "best" / "best.json").read_text())["step"] == 2
        trainer.metrics.close()
        rows = [r for r in read_metrics(run / "metrics.jsonl") if "eval/fid_classifier" in r]
        assert [r["step"] for r in rows] == [2, 3]
        assert hook.state_dict()["best_step"] == 2
        assert TrainingEvalHook.build(dataclasses.replace(trainer.eval_context(), every=0)) is None
    finally:
        trainer.close()
        rt.end()


def test_eval_of_an_unconditional_run_has_no_accuracy(tmp_path, corpus_cache):
    run = tmp_path / "uncond"
    over = [f"data.cache_dir={corpus_cache}", "model.conditional=false", "train.max_steps=2"]
    cfg = load_config(REPO / "configs/tiny.yaml", over)
    train(cfg, run)
    result = evaluate_run(run, n=32, log=lambda *_: None)
    assert result["accuracy"] is None and result["confusion_matrices"] == {}
    assert result["acc_uniform"] is None and result["acc_per_value"] is None
    assert isinstance(result["fid_classifier"], float) and (run / "eval.json").is_file()
    # unconditional: diversity over the whole set, one "condition"
    assert result["diversity_conditions"] == 1 and isinstance(result["diversity"], float)
    assert isinstance(result["real_vs_real"]["diversity"], float)
