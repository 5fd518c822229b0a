"""A trained generator's facts: training step, images seen, and its eval numbers.

Read from what training and ``ganscale eval`` leave (``metrics.jsonl``, checkpoint
``state.json``, ``best/best.json``, ``eval.json``) or from the ``training.json`` an export writes
beside the model. Torch-free; every file is optional and a broken one is skipped, not fatal.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

TRAINING = "training.json"
EVAL = "eval.json"


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_progress(metrics: Path) -> dict[str, int] | None:
    """The last metrics.jsonl record with step and images_seen (reads only the file's tail)."""
    try:
        with metrics.open("rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 65536))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "step" in rec and "images_seen" in rec:
            return {"step": int(rec["step"]), "images_seen": int(rec["images_seen"])}
    return None


def run_dir_of(weights: Path) -> Path | None:
    """The run folder a generator file belongs to (RUN/, RUN/best/, RUN/checkpoints/step-N/)."""
    for folder in (weights.parent, weights.parent.parent, weights.parent.parent.parent):
        if (folder / "metrics.jsonl").is_file() or (folder / "checkpoints").is_dir():
            return folder
    return None


def training_facts(weights: Path) -> dict[str, Any]:
    """{"step", "images_seen", "run_name"?} for the generator at ``weights`` (None where unknown)."""
    folder = weights.parent
    saved = _json(folder / TRAINING)
    if isinstance(saved, dict):
        return saved
    facts: dict[str, Any] = {"step": None, "images_seen": None}
    state = _json(folder / "state.json")  # a checkpoint's own G_ema
    best = _json(folder / "best.json")
    run = run_dir_of(weights)
    progress = _last_progress(run / "metrics.jsonl") if run else None
    if isinstance(state, dict):
        facts.update(step=state.get("step"), images_seen=state.get("images_seen"))
    elif progress:
        facts.update(progress)
    if isinstance(best, dict) and "step" in best:  # RUN/best/: the best step, not the last
        facts["step"] = best["step"]
        facts["best"] = {"metric": best.get("metric"), "value": best.get("value")}
        facts["images_seen"] = None if not progress else _images_at(run, int(best["step"]))
    return facts


def _images_at(run: Path | None, step: int) -> int | None:
    p = _last_progress(run / "metrics.jsonl") if run else None
    if not p or not p["step"]:
        return None
    return round(p["images_seen"] * step / p["step"])  # a constant batch size; see docs/serving.md


def eval_path(weights: Path) -> Path | None:
    for folder in (weights.parent, run_dir_of(weights)):
        if folder is not None and (folder / EVAL).is_file():
            return folder / EVAL
    return None


def eval_summary(weights: Path) -> dict[str, Any] | None:
    """Overall and per-value numbers from eval.json: attribute accuracy (overall, joint, every
    combination equally often, and per value of each attribute: eval.json's ``acc_per_value``,
    measured with every value asked for equally often; older files: from the confusion counts),
    classifier-space FID/precision/recall and within-condition ``diversity`` with the real-vs-real
    floor, and how they were measured (n, seed, classifier)."""
    path = eval_path(weights)
    data = _json(path) if path else None
    if not isinstance(data, dict):
        return None
    per_value: dict[str, dict[str, float | None]] = {}
    counts = data.get("confusion_counts") or {}
    attributes = _json(weights.with_name("generator.json")) or _json(weights.with_name("config.json")) or {}
    names = attributes.get("attributes", {}) if isinstance(attributes, dict) else {}
    if isinstance(data.get("acc_per_value"), dict):
        per_value = {a: dict(v) for a, v in data["acc_per_value"].items() if isinstance(v, dict)}
    else:
        for attr, matrix in counts.items():
            values = names.get(attr) or [str(i) for i in range(len(matrix))]
            per_value[attr] = {
                v: (row[i] / sum(row) if sum(row) else None)
                for i, (v, row) in enumerate(zip(values, matrix, strict=False))
            }
    floor = data.get("real_vs_real") or {}
    keys = (
        "fid_classifier",
        "kid_classifier",
        "precision_classifier",
        "recall_classifier",
        "fid_inception",
        "diversity",
    )
    return {
        "n": data.get("n"),
        "seed": data.get("seed"),
        "accuracy": data.get("accuracy"),
        "real_accuracy": data.get("real_accuracy"),
        "uniform_accuracy": data.get("acc_uniform"),
        "per_value_accuracy": per_value,
        "metrics": {k: data.get(k) for k in keys if data.get(k) is not None},
        "real_vs_real": {k: floor.get(k) for k in keys if floor.get(k) is not None},
        "classifier": data.get("classifier"),
        "measured_on": Path(str(data.get("generator", ""))).name or None,
    }


def run_facts(weights: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Everything the serve page and the model card show about a generator."""
    facts = training_facts(weights)
    return {
        "run_name": meta.get("run_name") or facts.get("run_name"),
        "step": facts.get("step"),
        "images_seen": facts.get("images_seen"),
        "best": facts.get("best"),
        "eval": eval_summary(weights),
    }


def write_facts(run: Path, weights: Path, out_dir: Path) -> None:
    """Beside an export: ``training.json`` (step, images seen, source run) and a copy of
    ``eval.json``, so a moved export still knows its history."""
    facts = training_facts(weights)
    facts["source"] = Path(run).resolve().name  # a name, not a local path: the folder may be published
    (out_dir / TRAINING).write_text(json.dumps(facts, indent=1) + "\n")
    src = eval_path(weights)
    if src is not None and src.resolve() != (out_dir / EVAL).resolve():
        shutil.copyfile(src, out_dir / EVAL)
