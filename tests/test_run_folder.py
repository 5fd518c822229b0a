"""A run folder never mixes two runs: a second start is refused (one line naming --resume and
--overwrite), --overwrite starts clean, a resume into other model shapes or from an older
checkpoint format is refused, and a refused start changes nothing in the folder. On resume the
rows past the resumed step are dropped: every step is logged once."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time

import pytest
import webdataset as wds
from faultlib import TINY, one_line_error, record, run_cli
from PIL import Image

from ganscale.config import load_config
from ganscale.outputs.tracking import read_metrics
from ganscale.train.checkpoint import list_checkpoints
from ganscale.train.run_folder import RunFolderError, RunMetrics, metric_rows, shape_changes
from ganscale.train.trainer import train


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus_cache):
    """One finished tiny run (6 steps, checkpoints 3 and 6, rows 2, 4, 6); tests copy it."""
    run = tmp_path_factory.mktemp("runs") / "R"
    train(load_config(TINY, [f"data.cache_dir={corpus_cache}"]), run)
    return run


@pytest.fixture
def R(finished, tmp_path):
    run = tmp_path / "R"
    shutil.copytree(finished, run, symlinks=True)
    return run


def _hashes(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _cli(run, cache, *args: str):
    return run_cli("train", str(TINY), "--out", str(run), "--set", f"data.cache_dir={cache}", *args)


def _refused(run, cache, drill: str, *args: str) -> str:
    """The one error line of a refused start; the folder hashed before and after (unchanged)."""
    before = _hashes(run)
    t0 = time.monotonic()
    line = one_line_error(_cli(run, cache, *args))
    seconds = time.monotonic() - t0
    assert _hashes(run) == before, "a refused start changed the run folder"
    record(f"run folder: {drill}", 1, 1, f"exit 2, one line; 0 of {len(before)} files changed",
           refusal_s=round(seconds, 1))  # fmt: skip
    return line


def _steps(run):
    return [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss/d" in r]


def test_a_second_start_in_a_run_folder_is_refused_and_changes_nothing(R, corpus_cache):
    line = _refused(R, corpus_cache, "second start refused", "--set", "train.max_steps=4")
    assert line == (
        f"error: run folder {R} already holds a run (checkpoints up to step 6, "
        f"{metric_rows(R / 'metrics.jsonl')} metrics rows); continue it with --resume, start it over "
        f"with --overwrite (removes that run's files), or train into a new --out"
    )


def test_overwrite_starts_clean_and_only_inside_the_folder(R, corpus_cache, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.png").write_bytes(b"x")
    shutil.rmtree(R / "samples")
    (R / "samples").symlink_to(outside, target_is_directory=True)  # removed as a link, not followed
    (R / "notes.txt").write_text("mine")
    proc = _cli(R, corpus_cache, "--set", "train.max_steps=4", "--overwrite")
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = next(ln for ln in proc.stdout.splitlines() if ln.startswith("--overwrite"))
    assert said == (
        f"--overwrite: removed the previous run in {R} (checkpoints/, metrics.jsonl, samples, "
        f"generator.safetensors, generator.json, losses.png, config.yaml)"
    )
    assert _steps(R) == [2, 4] and [c.step for c in list_checkpoints(R)] == [3, 4]
    assert (outside / "keep.png").is_file() and (R / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (R / "samples").iterdir()) == ["step-0000003.png", "step-0000004.png"]
    record("run folder: --overwrite", 1, 1, "old run's 7 entries removed (a link unlinked, not followed), "
           "other files kept; only the new run's rows and checkpoints")  # fmt: skip


def test_resume_into_other_model_shapes_is_refused_naming_the_keys(R, corpus_cache):
    shapes = ("--set", "model.g_channels=16", "--set", "model.z_dim=8", "--resume")
    assert _refused(R, corpus_cache, "resume into other shapes refused", *shapes) == (
        f"error: --resume {R}/checkpoints/step-0000006: the config gives networks of other shapes than "
        f"the checkpoint's (model.z_dim 16 -> 8; model.g_channels 8 -> 16); resume with the "
        f"checkpoint's model settings, or start a new run with --overwrite or a new --out"
    )


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    """One shard of 16 px images without labels (no json, no dataset.json)."""
    out = tmp_path_factory.mktemp("unlabelled")
    with wds.TarWriter(str(out / "plain-000000.tar")) as w:
        for i in range(16):
            buf = io.BytesIO()
            Image.new("RGB", (16, 16), (i * 15, 0, 0)).save(buf, format="PNG")
            w.write({"__key__": f"x{i:03d}", "png": buf.getvalue()})
    return out


# Refusals that once came after --overwrite had removed the run (inside Trainer.__init__): each
# now comes from the plan (train/plan.py), before the run folder is touched.
PLAN_REFUSALS = {
    "conditional on unlabelled shards": (
        ["model.conditional=true", "data.source=shards", "data.path={unlabelled}"],
        "model.conditional is true but the corpus has no attributes",
    ),
    "shared_fake with global_batch": (
        ["train.shared_fake=true", "train.global_batch=16"],
        "train.shared_fake: true, but this run accumulates 2 micro-batches",
    ),
    "global_batch not divisible": (["train.global_batch=12"], "train.global_batch: 12 is not divisible"),
    "acc metric, unconditional": (
        ["model.conditional=false", "eval.every=3", "eval.metric=acc_joint"],
        "eval.metric=acc_joint needs a conditional generator",
    ),
    "inception metric, no weights": (
        ["eval.every=3", "eval.metric=fid_inception"],
        "eval.metric=fid_inception needs Inception weights",
    ),
    "in-memory corpus too large": (
        ["data.in_memory=true", "data.in_memory_max_gb=0.000001"],
        "data.in_memory: rank 0 would hold",
    ),
}


@pytest.mark.parametrize("drill", list(PLAN_REFUSALS))
def test_a_refusal_of_the_plan_leaves_the_run_to_overwrite_unchanged(R, corpus_cache, unlabelled, drill):
    sets, message = PLAN_REFUSALS[drill]
    args = [a for s in sets for a in ("--set", s.format(unlabelled=unlabelled))]
    line = _refused(R, corpus_cache, f"--overwrite refused by the plan: {drill}", *args, "--overwrite")
    assert message in line, line


def test_a_checkpoint_whose_config_cannot_be_read_refuses_the_resume(R, corpus_cache):
    """The shape check is never skipped silently: an unreadable saved config is one line."""
    ckpt6 = R / "checkpoints" / "step-0000006"
    (ckpt6 / "config.yaml").write_text((ckpt6 / "config.yaml").read_text() + "\nmodle: {}\n")
    line = _refused(R, corpus_cache, "resume with an unreadable checkpoint config", "--resume")
    assert line.startswith(f"error: --resume {ckpt6}: cannot read the checkpoint's config.yaml/")
    assert "unknown config key modle" in line
    (ckpt6 / "config.yaml").write_text("model: {}\n")  # readable again; generator.json broken
    (ckpt6 / "generator.json").write_text("{")
    with pytest.raises(RunFolderError, match="cannot read the checkpoint") as e:
        shape_changes(load_config(TINY), ckpt6)
    assert "\n" not in str(e.value)


def test_resume_and_overwrite_together_are_refused(R, corpus_cache):
    assert _refused(R, corpus_cache, "--resume with --overwrite refused", "--resume", "--overwrite") == (
        f"error: --resume and --overwrite contradict each other: --resume continues the run in {R}, "
        f"--overwrite removes it; pass one of them"
    )


def test_a_checkpoint_of_the_older_format_is_refused_saying_what_to_do(R, corpus_cache):
    for ref in list_checkpoints(R):  # as ganscale wrote it before the noise streams changed
        state = json.loads((ref.path / "state.json").read_text())
        (ref.path / "state.json").write_text(json.dumps(state | {"format_version": 1}))
    assert _refused(R, corpus_cache, "format-1 checkpoint refused", "--resume") == (
        f"error: checkpoint {R}/checkpoints/step-0000006: format version 1 was written by an older "
        f"ganscale whose noise streams differ (this one reads version 2); resume it with the ganscale "
        f"that wrote it, or start fresh with --overwrite or a new --out"
    )


def test_resume_from_an_older_checkpoint_logs_every_step_once(R, corpus_cache):
    """The colleague's case: rows 2, 4, 6 and checkpoints 3, 6; resume from 3. Before, the
    rows of 4 and 6 stayed (4 and 6 twice) and the old step 6 stayed "latest"."""
    over = [f"data.cache_dir={corpus_cache}", "log.every=1", "model.g_blocks=4"]  # dcgan: no shape change
    result = train(load_config(TINY, over), R, resume=str(R / "checkpoints" / "step-0000003"))
    assert result.step == 6
    assert _steps(R) == [2, 4, 5, 6]  # each step once: 2 from the first run, 4-6 from this one
    assert [c.step for c in list_checkpoints(R)] == [3, 6]
    saved = load_config(R / "checkpoints" / "step-0000006" / "config.yaml")
    assert saved.model.g_blocks == 4 and saved.log.every == 1  # step 6 is the new run's
    record("run folder: resume from an older checkpoint", 1, 1,
           "rows past step 3 and checkpoint 6 dropped; steps 2, 4, 5, 6 logged once")  # fmt: skip


def test_in_process_start_is_refused_too(R, corpus_cache):
    """The issue's reproduction through the Python API: 6 steps, then 4 steps, no resume."""
    with pytest.raises(RunFolderError, match="already holds a run"):
        train(load_config(TINY, [f"data.cache_dir={corpus_cache}", "train.max_steps=4"]), R)


def test_drop_after_is_atomic_and_keeps_events_when_asked(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1}, {"step": 2}, {"step": 3, "event": "non_finite"}, {"step": 4}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "los')  # torn last line
    m = RunMetrics(path)
    assert m.drop_after(2, keep_events=True) == 2
    assert read_metrics(path) == rows[:3]
    assert m.drop_after(1) == 2 and read_metrics(path) == rows[:1]
    m.write({"step": 2})
    m.close()
    assert read_metrics(path) == [{"step": 1}, {"step": 2}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # nothing left aside
