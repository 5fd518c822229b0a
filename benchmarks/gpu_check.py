"""The device check behind ``benchmarks/gpu_check.sh`` (run that; see its header).

Steps, in this order, each in its own process with its own time limit, inside one overall
budget (``--budget-s``; a step that would start past it is skipped, and says so):

- ``tests``: the ``gpu``-marked tests (pytest ``-m gpu``, the files that hold them);
- ``train:<config>:<precision>``: a short ``ganscale train`` of each study config
  (configs/dcgan.yaml, acgan.yaml, wgan-gp.yaml) in bf16 and in fp16, on the real streaming
  loader (the built-in synthetic corpus, its workers): finite losses, img/s, data-wait
  fraction, skipped steps, the fp16 loss scales never reported as NaN;
- ``bench:<variant>``: ``ganscale bench`` of the 64 px DCGAN at batch 256 as fp32,
  bf16 + channels_last and bf16 + channels_last + compile, each beside the plain fp32 loop in
  the same process (``--baseline-fp32``): img/s, ratio, MFU, peak memory;
- ``loader``: one pass of the real streaming loader with workers over a packed corpus
  (``ganscale data bench``: img/s per worker) and the data-wait fraction of the real step fed
  by it (``ganscale bench --data shards``);
- ``deepspeed``: a short bf16 ZeRO-2 run when DeepSpeed is installed, else skipped.

``--dry-run`` runs the same steps at tiny sizes (16 px, a few steps) on whatever device is
here, the CPU included. The last line printed is one JSON object: every step's status
(ok / failed / skipped), its numbers and, when not ok, why.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STUDY = ("dcgan", "acgan", "wgan-gp")
PRECISIONS = ("bf16", "fp16")
BENCH_VARIANTS = {
    "fp32": ["train.mixed_precision=no", "train.channels_last=false", "train.compile=false"],
    "bf16+channels_last": ["train.mixed_precision=bf16", "train.channels_last=true", "train.compile=false"],
    "bf16+channels_last+compile": [
        "train.mixed_precision=bf16",
        "train.channels_last=true",
        "train.compile=true",
    ],
}
# import name -> distribution name (what --wheels installs when the import is missing)
MODULES = {
    "webdataset": "webdataset",
    "braceexpand": "braceexpand",
    "PIL": "pillow",
    "numpy": "numpy",
    "matplotlib": "matplotlib",
    "pytest": "pytest",
    "filelock": "filelock",
    "wandb": "wandb",
    "deepspeed": "deepspeed",
}
OPTIONAL = ("wandb", "deepspeed", "matplotlib")
"""Runs go on without these: W&B off, DeepSpeed's step skipped, no loss plot."""


def gpu_test_files() -> list[str]:
    """The test files that hold gpu-marked tests (collecting only those: the others may import
    what a bare GPU machine lacks)."""
    marked = [p for p in sorted((REPO / "tests").glob("test_*.py")) if "pytest.mark.gpu" in p.read_text()]
    return [str(p.relative_to(REPO)) for p in marked]


# (full, dry-run) sizes
SIZES = {
    False: {
        "train_steps": 20,
        "train_sets": ["log.every=10", "data.synthetic_n=4096"],
        "bench": ["--steps", "20", "--warmup", "5", "--repeats", "3"],
        "bench_sets": ["train.batch_size=256", "data.synthetic_n=4096"],
        "corpus": (4096, 64),
        "loader": ["--workers", "4", "--batch", "256", "--steps", "20"],
        "loader_sets": [
            "data.num_workers=4",
            "data.synthetic_n=4096",
            "train.batch_size=256",
            "train.mixed_precision=bf16",
        ],
        "timeout": {"tests": 150, "train": 75, "bench": 150, "loader": 120, "deepspeed": 90},
    },
    True: {
        "train_steps": 1,
        "train_sets": [
            "log.every=1",
            "log.tracker=none",  # W&B's start-up (seconds) would be most of a tiny run
            "model.image_size=16",
            "model.g_channels=8",
            "model.d_channels=8",
            "model.g_blocks=1",
            "train.batch_size=4",
            "data.synthetic_n=128",
            "data.num_workers=1",
        ],
        "bench": ["--steps", "2", "--warmup", "1", "--repeats", "1", "--threads", "1"],
        "bench_sets": [
            "train.batch_size=8",
            "model.image_size=16",
            "model.g_channels=8",
            "model.d_channels=8",
            "data.synthetic_n=128",
        ],
        "corpus": (128, 16),
        "loader": ["--workers", "2", "--batch", "16", "--steps", "3"],
        "loader_sets": [
            "data.num_workers=2",
            "data.synthetic_n=128",
            "train.batch_size=8",
            "model.image_size=16",
            "model.g_channels=8",
            "model.d_channels=8",
        ],
        "timeout": {"tests": 120, "train": 90, "bench": 150, "loader": 90, "deepspeed": 150},
    },
}


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def install_wheels(folder: Path) -> dict[str, str]:
    """pip install --no-index --find-links FOLDER each missing distribution found there."""
    out = {}
    for module, dist in MODULES.items():
        if have(module):
            continue
        p = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(folder), dist],
            capture_output=True,
            text=True,
        )
        importlib.invalidate_caches()
        out[dist] = "installed" if p.returncode == 0 and have(module) else "not in the folder"
    return out


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.dry = args, args.dry_run
        self.size = SIZES[self.dry]
        self.out = args.out.resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.cache = self.out / "cache"
        self.t0 = time.monotonic()
        self.steps: dict[str, dict[str, Any]] = {}
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), self.env.get("PYTHONPATH")]))
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env["WANDB_MODE"] = "offline" if have("wandb") else "disabled"
        self.env["WANDB_DIR"] = str(self.out)
        self.env["WANDB_SILENT"] = "true"
        self.tracker = [] if have("wandb") else ["log.tracker=none"]

    # ------------------------------------------------------------------ plumbing
    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.t0)

    def run(self, name: str, cmd: list[str], timeout: float) -> tuple[int | None, str]:
        """(exit code or None on a timeout, output); the log goes to OUT/logs/NAME.log."""
        log = self.out / "logs" / (re.sub(r"[^\w.+-]", "_", name) + ".log")
        log.parent.mkdir(exist_ok=True)
        limit = max(1.0, min(timeout, self.left()))
        try:
            p = subprocess.run(
                cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=limit, errors="replace"
            )
            code, text = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:
            out = e.stdout or b""
            code, text = None, (out.decode(errors="replace") if isinstance(out, bytes) else out)
            text += f"\n[gpu_check] timed out after {limit:.0f} s"
        log.write_text(text)
        return code, text

    def step(self, name: str, fn: Any, *args: Any) -> None:
        if self.left() < 5:
            self.steps[name] = {
                "status": "skipped",
                "reason": f"time budget ({self.args.budget_s:.0f} s) spent",
            }
            return
        t = time.monotonic()
        try:
            row = fn(*args)
        except Exception as e:  # noqa: BLE001 - a step's failure is reported, the others still run
            row = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
        row["seconds"] = round(time.monotonic() - t, 1)
        self.steps[name] = row
        print(f"[gpu_check] {name}: {row['status']} ({row['seconds']} s) {row.get('reason', '')}", flush=True)

    @staticmethod
    def failed(code: int | None, text: str) -> dict[str, Any]:
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        why = "timed out" if code is None else f"exit {code}"
        return {"status": "failed", "reason": f"{why}: {lines[-1][:300] if lines else ''}"}

    def ganscale(self, *argv: str) -> list[str]:
        return [sys.executable, "-m", "ganscale", *argv]

    def missing_core(self) -> str | None:
        gone = [m for m in MODULES if m not in OPTIONAL and m != "pytest" and not have(m)]
        if gone:
            return f"missing {', '.join(gone)}: pass --wheels DIR (pip install --no-index --find-links DIR)"
        return None

    # ------------------------------------------------------------------ steps
    def tests(self) -> dict[str, Any]:
        if not have("pytest"):
            return {"status": "skipped", "reason": "pytest missing: pass --wheels DIR"}
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            *gpu_test_files(),
        ]
        code, text = self.run("tests", cmd, self.size["timeout"]["tests"])
        counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|deselected|error)", text)}
        row = {"passed": counts.get("passed", 0), "failed": counts.get("failed", 0) + counts.get("error", 0)}
        row["skipped"] = counts.get("skipped", 0)
        if code != 0:  # pytest: 0 all passed (or skipped), 5 none collected
            return {**self.failed(code, text), **row}
        return {"status": "ok", **row}

    def train(self, config: str, precision: str) -> dict[str, Any]:
        why = self.missing_core()
        if why:
            return {"status": "skipped", "reason": why}
        run = self.out / "train" / f"{config}-{precision}"
        sets = [
            f"train.max_steps={self.size['train_steps']}",
            f"train.mixed_precision={precision}",
            f"data.cache_dir={self.cache}",
            "eval.every=0",
            "log.sample_every=0",
            "checkpoint.every=0",
            "log.progress=false",
            *self.tracker,
            *self.size["train_sets"],
        ]
        argv = ["train", str(REPO / "configs" / f"{config}.yaml"), "--out", str(run), "--overwrite"]
        for s in sets:
            argv += ["--set", s]
        code, text = self.run(
            f"train-{config}-{precision}", self.ganscale(*argv), self.size["timeout"]["train"]
        )
        if code != 0:
            return self.failed(code, text)
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        steps = [r for r in rows if "event" not in r]
        events = [r["event"] for r in rows if "event" in r]
        if not steps:
            return {"status": "failed", "reason": "no metrics row written"}
        last = steps[-1]
        losses = {k: v for k, v in last.items() if k.startswith("loss/")}
        finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in losses.values())
        row = {
            "step": last.get("step"),
            "images_per_s": last.get("images_per_s"),
            "data_wait_fraction": last.get("data_wait_fraction"),
            "loss_d": last.get("loss/d"),
            "loss_g": last.get("loss/g"),
            "non_finite_events": events.count("non_finite"),
        }
        if not finite or row["non_finite_events"]:
            return {"status": "failed", "reason": f"non-finite losses {losses}, events {events}", **row}
        return {"status": "ok", **row}

    def bench(self, variant: str) -> dict[str, Any]:
        why = self.missing_core()
        if why:
            return {"status": "skipped", "reason": why}
        sets = [f"data.cache_dir={self.cache}", *BENCH_VARIANTS[variant], *self.size["bench_sets"]]
        argv = ["bench", str(REPO / "configs" / "dcgan.yaml"), *self.size["bench"], "--baseline-fp32"]
        for s in sets:
            argv += ["--set", s]
        code, text = self.run(f"bench-{variant}", self.ganscale(*argv), self.size["timeout"]["bench"])
        result = last_json(text)
        if code != 0 or result is None:
            return self.failed(code, text)
        keep = (
            "device",
            "batch_size",
            "images_per_s",
            "baseline_images_per_s",
            "ratio",
            "paired_ratio",
            "mfu",
            "achieved_tflops",
            "peak_mem_mb",
            "ms_per_step",
        )
        return {"status": "ok", **{k: result.get(k) for k in keep}}

    def loader(self) -> dict[str, Any]:
        why = self.missing_core()
        if why:
            return {"status": "skipped", "reason": why}
        timeout = self.size["timeout"]["loader"]
        n, size = self.size["corpus"]
        # the built-in synthetic corpus the train steps packed (built here if they did not run)
        data = f"DataConfig(source='synthetic', synthetic_n={n}, cache_dir={str(self.cache)!r})"
        where = (
            "from ganscale.config import DataConfig; from ganscale.data.resolve import corpus_folder; "
            f"print(corpus_folder({data}, {size}))"
        )
        code, text = self.run("loader-corpus", [sys.executable, "-c", where], timeout)
        if code != 0:
            return self.failed(code, text)
        corpus = text.strip().splitlines()[-1]
        code, text = self.run(
            "loader-data-bench", self.ganscale("data", "bench", corpus, *self.size["loader"]), timeout
        )
        data = last_json(text)
        if code != 0 or data is None:
            return self.failed(code, text)
        sets = [f"data.cache_dir={self.cache}", "train.channels_last=true", *self.size["loader_sets"]]
        steps = self.size["bench"][:4] + ["--repeats", "1"] + self.size["bench"][6:]
        argv = ["bench", str(REPO / "configs" / "dcgan.yaml"), "--data", "shards", "--no-flops", *steps]
        for s in sets:
            argv += ["--set", s]
        code, text = self.run("loader-step", self.ganscale(*argv), timeout)
        step = last_json(text)
        if code != 0 or step is None:
            return self.failed(code, text)
        return {
            "status": "ok",
            "workers": data.get("workers"),
            "loader_images_per_s": data.get("images_per_s"),
            "per_worker_per_s": data.get("per_worker_per_s"),
            "augment_per_s": data.get("augment_per_s"),
            "step_images_per_s": step.get("images_per_s"),
            "data_wait_fraction": step.get("data_wait_fraction"),
        }

    def deepspeed(self) -> dict[str, Any]:
        if not have("deepspeed"):
            return {"status": "skipped", "reason": "deepspeed not installed"}
        if self.dry and "deepspeed" not in self.args.only.split(","):
            # a minute of DeepSpeed start-up on a small CPU; the same `ganscale train` as the train steps
            return {
                "status": "skipped",
                "reason": "dry run: DeepSpeed runs on the device (--only deepspeed here)",
            }
        why = self.missing_core()
        if why:
            return {"status": "skipped", "reason": why}
        run = self.out / "train" / "deepspeed-zero2-bf16"
        sets = [
            "backend=deepspeed",
            "deepspeed.zero_stage=2",
            "train.mixed_precision=bf16",
            f"train.max_steps={self.size['train_steps']}",
            f"data.cache_dir={self.cache}",
            "eval.every=0",
            "log.sample_every=0",
            "checkpoint.every=0",
            "log.progress=false",
            *self.tracker,
            *self.size["train_sets"],
        ]
        argv = ["train", str(REPO / "configs" / "dcgan.yaml"), "--out", str(run), "--overwrite"]
        for s in sets:
            argv += ["--set", s]
        code, text = self.run("deepspeed", self.ganscale(*argv), self.size["timeout"]["deepspeed"])
        if code != 0:
            return self.failed(code, text)
        return {"status": "ok"}

    # ------------------------------------------------------------------ all
    def main(self) -> dict[str, Any]:
        wheels = install_wheels(self.args.wheels) if self.args.wheels else {}
        only = set(self.args.only.split(",")) if self.args.only else None

        def wanted(kind: str) -> bool:
            return only is None or kind in only

        if wanted("tests"):
            self.step("tests", self.tests)
        for config in STUDY if wanted("train") else ():
            for precision in PRECISIONS:
                self.step(f"train:{config}:{precision}", self.train, config, precision)
        for variant in BENCH_VARIANTS if wanted("bench") else ():
            self.step(f"bench:{variant}", self.bench, variant)
        if wanted("loader"):
            self.step("loader", self.loader)
        if wanted("deepspeed"):
            self.step("deepspeed", self.deepspeed)
        return {
            "check": "gpu_check",
            "dry_run": self.dry,
            "device": device_name(),
            "python": platform.python_version(),
            "torch": torch_version(),
            "modules": {m: have(m) for m in MODULES},
            "wheels": wheels,
            "out": str(self.out),
            "seconds": round(time.monotonic() - self.t0, 1),
            "ok": all(s["status"] != "failed" for s in self.steps.values()),
            "steps": self.steps,
        }


def last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"


def torch_version() -> str:
    import torch

    return torch.__version__


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="the same steps at tiny sizes (CPU is fine)")
    ap.add_argument("--wheels", type=Path, help="install missing packages from this folder (no index)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-check")
    ap.add_argument("--budget-s", type=float, default=400.0, help="overall time budget (steps past it skip)")
    ap.add_argument("--only", default="", help="comma list of tests,train,bench,loader,deepspeed")
    args = ap.parse_args()
    summary = Check(args).main()
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
