"""`ganscale sweep` (local and as a Slurm job array) and `ganscale report`, on tiny real runs.

The local sweep is one axis of two values x two seeds (four runs of configs/tiny.yaml, 3
steps, eval n=16), run once per module; the tests after it re-run it (everything skipped),
break one cell (resumed) and report it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from distlib import REPO, need_slurm, run

from ganscale.config import load_config
from ganscale.data.resolve import corpus_folder
from ganscale.errors import ConfigError
from ganscale.sweep.spec import load_spec, parse_spec

CELLS = ["loss.class_weight=1", "loss.class_weight=5"]
FOLDERS = [f"{c}/seed-{s}" for c in CELLS for s in (0, 1)]
SWEEP = [sys.executable, "-m", "ganscale", "sweep"]


def write_judge(folder: Path, cache: Path) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    cfg.setdefault("data", {})["cache_dir"] = str(cache)
    path = folder / "judge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def write_spec(folder: Path, cache: Path, out: Path) -> Path:
    spec = {
        "base": str(REPO / "configs" / "tiny.yaml"),
        "out": str(out),
        "set": [
            f"data.cache_dir={cache}",
            "train.max_steps=3",
            "checkpoint.every=2",
            "log.sample_every=0",
        ],
        "grid": {"loss.class_weight": [1, 5]},
        "seeds": [0, 1],
        # judged against the corpus of a config (here the same corpus, named through a config)
        "eval": {"n": 16, "corpus": str(write_judge(folder, cache))},
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def snapshot(out: Path) -> dict[str, float]:
    """mtime of every file of the sweep's runs."""
    return {str(p): p.stat().st_mtime_ns for f in FOLDERS for p in (out / f).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, corpus_cache) -> tuple[Path, Path, str]:
    folder = tmp_path_factory.mktemp("sweep")
    out = folder / "out"
    spec = write_spec(folder, corpus_cache, out)
    p = run([*SWEEP, spec], timeout=400, OMP_NUM_THREADS="1")
    return spec, out, p.stdout + p.stderr


# ------------------------------------------------------------------ spec (fast)
def test_shipped_specs_load_and_every_cell_config_is_valid():
    specs = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))
    assert {p.name for p in specs} >= {"lambda.yaml", "quickstart.yaml"}
    for path in specs:
        spec = load_spec(path)
        for cell in spec.cells():
            load_config(spec.base, cell.train_sets(spec.sets))
    lam = load_spec(REPO / "configs" / "sweeps" / "lambda.yaml")
    names = {c.name for c in lam.cells()}
    assert len(names) == 24  # 3 lambdas x 4 heads x 2 archs, as benchmarks/lambda_sweep.py ran
    assert "loss.class_weight=5,model.arch=resnet,model.g_blocks=4,model.head=projection" in names
    grid = ["model.arch=dcgan", "loss.class_weight=1,5"]
    subset = load_spec(REPO / "configs/sweeps/lambda.yaml", grid=grid)
    assert len(subset.cells()) == 2 * 4 * 3  # x seeds 0, 1, 2


def test_cell_names_are_sorted_by_key_and_deterministic(tmp_path):
    base = str(REPO / "configs" / "tiny.yaml")
    a = parse_spec({"base": base, "grid": {"model.head": ["shared"], "loss.class_weight": [0.5]}})
    b = parse_spec({"base": base, "grid": {"loss.class_weight": [0.5], "model.head": ["shared"]}})
    assert [c.folder for c in a.cells()] == [c.folder for c in b.cells()]
    assert a.cells()[0].folder == "loss.class_weight=0.5,model.head=shared/seed-0"
    c = parse_spec({"base": base, "grid": {"log.run_name": ["a/b c"]}, "seeds": [3, 4]})
    assert [x.folder for x in c.cells()] == ["log.run_name=a_b_c/seed-3", "log.run_name=a_b_c/seed-4"]
    assert c.cells()[0].train_sets(["x=1"]) == ["x=1", "log.run_name=a/b c", "seed=3"]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"grid": {}}, "needs base"),
        ({"base": "nope.yaml"}, "not found"),
        ({"base": "B", "seed": [0]}, "unknown key 'seed'"),
        ({"base": "B", "seeds": [0, 0]}, "repeat"),
        ({"base": "B", "grid": {"a.b": []}}, "non-empty list"),
        ({"base": "B", "eval": {"n": 4}}, "at least 16"),
        ({"base": "B", "eval": {"n": 16, "corpus": "no/such"}}, "eval.corpus no/such not found"),
        ({"base": "B", "eval": {"n": 16, "judge": "x"}}, "eval must be a mapping"),
        ({"base": "B", "grid": {"x": [{"a": 1}, {"a": 1}]}}, "same cell"),
    ],
)
def test_bad_specs_are_one_line_errors(data, message):
    data = {k: (str(REPO / "configs/tiny.yaml") if v == "B" else v) for k, v in data.items()}
    with pytest.raises(ConfigError, match=message):
        parse_spec(data)


# ------------------------------------------------------------------ local sweep (real runs)
@pytest.mark.slow
def test_local_sweep_trains_and_evaluates_every_cell(sweep):
    spec, out, log = sweep
    cfg_judge = load_config(spec.parent / "judge.yaml")
    for folder in FOLDERS:
        run_dir = out / folder
        result = json.loads((run_dir / "eval.json").read_text())
        assert result["n"] == 16
        assert Path(result["corpus"]) == corpus_folder(cfg_judge.data, cfg_judge.model.image_size)
        assert (run_dir / "checkpoints" / "step-0000003" / "state.json").is_file()
        cfg = load_config(run_dir / "config.yaml")
        assert cfg.seed == int(folder[-1]) and cfg.loss.class_weight == float(folder.split("=")[1][0])
        assert json.loads((run_dir / "sweep-cell.json").read_text())["stopped_by_budget"] is False
    assert log.count("-m ganscale train ") == 4 and "4 evaluated" in log
    assert log.count(f"--corpus {spec.parent / 'judge.yaml'}") == 4
    manifest = json.loads((out / "sweep.json").read_text())
    assert [c["folder"] for c in manifest["cells"]] == FOLDERS


@pytest.mark.slow
def test_rerun_skips_finished_cells_without_training(sweep):
    spec, out, _ = sweep
    before = snapshot(out)
    p = run([*SWEEP, spec], timeout=120)
    assert p.stdout.count("), skipped") == 4 and "4 skipped" in p.stdout, p.stdout
    assert "-m ganscale train " not in p.stdout and "-m ganscale eval " not in p.stdout
    assert snapshot(out) == before


@pytest.mark.slow
def test_unfinished_cell_is_resumed_from_its_checkpoint(sweep):
    """Cell 2 as if killed right after its step-2 checkpoint: no final checkpoint, no step-3
    metrics, no eval.json. The re-run resumes it from step 2 (not from scratch: step 2 is not
    trained again), evaluates it, and leaves the others alone."""
    spec, out, _ = sweep
    broken = out / FOLDERS[2]
    shutil.rmtree(broken / "checkpoints" / "step-0000003")
    (broken / "eval.json").unlink()
    metrics = broken / "metrics.jsonl"
    kept = [x for x in metrics.read_text().splitlines() if json.loads(x).get("step", 0) <= 2]
    metrics.write_text("".join(x + "\n" for x in kept))
    others = {k: v for k, v in snapshot(out).items() if FOLDERS[2] not in k}
    p = run([*SWEEP, spec, "--dry-run"], timeout=60)
    assert re.search(r"2 resume .*seed-0", p.stdout), p.stdout
    p = run([*SWEEP, spec], timeout=200, OMP_NUM_THREADS="1")
    log = p.stdout + p.stderr
    assert f"{FOLDERS[2]}: resume from step 2" in log and "--resume latest" in log
    assert "3 skipped" in log and "1 evaluated" in log
    assert (broken / "checkpoints" / "step-0000003" / "state.json").is_file()
    assert json.loads((broken / "eval.json").read_text())["n"] == 16
    rows = [json.loads(x) for x in (broken / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = [r["step"] for r in rows if "event" not in r and "step" in r]
    assert steps == [2, 3], steps
    after = snapshot(out)
    assert {k: after[k] for k in others} == others


@pytest.mark.slow
def test_report_groups_cells_over_seeds(sweep, tmp_path):
    _, out, _ = sweep
    p = run([sys.executable, "-m", "ganscale", "report", out], timeout=120)
    md = (out / "report.md").read_text()
    assert (out / "report.png").stat().st_size > 1000
    header = md.splitlines()[0]
    assert "accuracy.hair" in header and "accuracy.joint" in header and "fid_classifier" in header
    assert "acc_uniform.eyes" in header and "acc_per_value" not in header  # headline columns only
    assert re.search(r"^\| hair\.\w+ \| \d+\.\d% ", md, re.M)  # the per-colour table, in percent
    for cell in CELLS:
        assert cell in p.stdout
        evals = [json.loads((out / cell / f"seed-{s}" / "eval.json").read_text()) for s in (0, 1)]
        line = next(x for x in md.splitlines() if x.startswith(f"| {cell} |"))
        assert "| 2 |" in line
        hair = [e["accuracy"]["hair"] * 100 for e in evals]
        assert f"{sum(hair) / 2:.1f}% ({min(hair):.1f}%..{max(hair):.1f}%)" in line, line
        fid = [e["fid_classifier"] for e in evals]
        assert f"{sum(fid) / 2:.4g} ({min(fid):.4g}..{max(fid):.4g})" in line, line
    real = next(x for x in md.splitlines() if x.startswith("| real images |"))
    assert f"{evals[0]['real_accuracy']['hair'] * 100:.1f}%" in real
    # run folders given one by one: grouped the same way (from RUN/sweep-cell.json)
    target = tmp_path / "two.md"
    run(
        [sys.executable, "-m", "ganscale", "report", out / FOLDERS[0], out / FOLDERS[1], "--out", target],
        timeout=120,
    )
    lines = target.read_text().splitlines()
    assert lines[2].startswith(f"| {CELLS[0]} | 2 |") and not any(CELLS[1] in x for x in lines)
    # --all: every number of eval.json is a column, the per-colour table is not repeated
    run([sys.executable, "-m", "ganscale", "report", out, "--all", "--out", target], timeout=120)
    every = target.read_text()
    assert "acc_per_value_n.hair." in every.splitlines()[0] and "per attribute value" not in every


# ------------------------------------------------------------------ Slurm job array
def _array_states(job_id: str) -> list[str]:
    out = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=10
    ).stdout
    return re.findall(r"JobState=(\S+)", out)


@pytest.mark.slow
@pytest.mark.slurm
def test_sweep_as_a_slurm_job_array(tmp_path, corpus_cache):
    need_slurm()
    out = tmp_path / "out"
    spec = write_spec(tmp_path, corpus_cache, out)
    cmd = [*SWEEP, spec, "--slurm", f"--sbatch-arg=--chdir={REPO}"]
    p = run(cmd, timeout=60, OMP_NUM_THREADS="1", GANSCALE_NPROC_PER_NODE="1")
    m = re.search(r"submitted job array (\d+): 4 of 4 cells \(0,1,2,3\)", p.stdout)
    assert m, p.stdout + p.stderr
    job_id = m.group(1)
    end = time.monotonic() + 400
    terminal = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
    while time.monotonic() < end:
        states = _array_states(job_id)
        if len(states) == 4 and set(states) <= terminal:
            break
        time.sleep(2)
    else:
        subprocess.run(["scancel", job_id], timeout=10)
    logs = "".join(x.read_text()[-3000:] for x in sorted((out / "slurm").glob("*.out")))
    assert states == ["COMPLETED"] * 4, f"{states}\n{logs}"
    assert len(list((out / "slurm").glob(f"ganscale-sweep-{job_id}_*.out"))) == 4
    for folder in FOLDERS:
        assert json.loads((out / folder / "eval.json").read_text())["n"] == 16
    assert "[sweep.sbatch] job" in logs and "1 process(es)" in logs
    # everything done: a second submission submits nothing
    p = run(cmd, timeout=60)
    assert "all 4 cells done; nothing to submit" in p.stdout, p.stdout


def test_report_headline_shows_diversity(tmp_path):
    """Diversity and fid_div are headline columns (the real-images row holds real-vs-real
    diversity); diversity_conditions, a count, is not."""
    from ganscale.sweep.report import report

    for cell, diversity in (("varied", [0.95, 0.9]), ("collapsed", [0.02, 0.04])):
        for seed, d in enumerate(diversity):
            run_dir = tmp_path / "runs" / cell / f"seed-{seed}"
            run_dir.mkdir(parents=True)
            result = {
                "format": "ganscale-eval",
                "n": 64,
                "accuracy": {"hair": 0.99, "joint": 0.98},
                "fid_classifier": 2.0,
                "diversity": d,
                "diversity_classifier": d / 2,
                "diversity_conditions": 12,
                "fid_div": 2.0 / max(min(d, 1.0), 1e-3),
                "real_accuracy": {"hair": 1.0, "joint": 1.0},
                "real_vs_real": {"n": 64, "fid_classifier": 0.4, "diversity": 1.01},
            }
            (run_dir / "eval.json").write_text(json.dumps(result))
    md, _ = report([tmp_path / "runs"], show=False)
    lines = md.read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert {"diversity", "diversity_classifier", "fid_div"} <= set(header)
    assert "diversity_conditions" not in header
    col = header.index("diversity")
    rows = {
        r.split("|")[1].strip(): [c.strip() for c in r.strip("|").split("|")]
        for r in lines[2:]
        if r.startswith("|")
    }
    assert rows["varied"][col] == "0.925 (0.9..0.95)" and rows["collapsed"][col] == "0.03 (0.02..0.04)"
    assert rows["real images"][col] == "1.01"
