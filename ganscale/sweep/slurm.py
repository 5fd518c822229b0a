"""`ganscale sweep SPEC --slurm`: the unfinished cells as one Slurm job array.

The manifest OUT/sweep.json lists every cell; array task I runs
``ganscale sweep-cell OUT/sweep.json I`` through ``launch/slurm/sweep.sbatch``, which is the
same local cell runner (skip, resume, train, eval) on the node Slurm gave it. Only cells that
are not done go into ``--array``, so a re-submitted sweep runs what is left.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import ganscale
from ganscale.errors import GanscaleError
from ganscale.sweep.local import Forwarder, cell_status, run_cell
from ganscale.sweep.spec import Cell, SweepSpec, read_manifest, write_manifest


def default_script() -> Path:
    """launch/slurm/sweep.sbatch of this checkout."""
    return Path(ganscale.__file__).resolve().parents[1] / "launch" / "slurm" / "sweep.sbatch"


def pending(spec: SweepSpec, cells: list[Cell]) -> list[int]:
    """Indices of the cells that are not done."""
    return [i for i, c in enumerate(cells) if cell_status(spec, c).state != "done"]


def sbatch_command(
    manifest: Path,
    indices: list[int],
    script: Path,
    sbatch_args: list[str],
    max_parallel: int | None = None,
) -> list[str]:
    """The sbatch command line of the array (``--output`` under OUT/slurm/ unless given)."""
    array = ",".join(map(str, indices)) + (f"%{max_parallel}" if max_parallel else "")
    cmd = ["sbatch", "--parsable", f"--array={array}"]
    if not any(a.startswith(("--output", "-o")) for a in sbatch_args):
        (manifest.parent / "slurm").mkdir(parents=True, exist_ok=True)
        cmd.append(f"--output={manifest.parent / 'slurm'}/%x-%A_%a.out")
    return [*cmd, *sbatch_args, str(script), str(manifest), sys.executable]


def submit(
    spec: SweepSpec,
    cells: list[Cell],
    sbatch_args: list[str] | None = None,
    script: Path | None = None,
    max_parallel: int | None = None,
    log: Callable[[str], None] = print,
) -> str | None:
    """Write the manifest and submit the pending cells; the array's job id (None: all done)."""
    manifest = write_manifest(spec, cells).resolve()
    indices = pending(spec, cells)
    if not indices:
        log(f"[sweep] all {len(cells)} cells done; nothing to submit")
        return None
    script = script or default_script()
    if not script.is_file():
        raise GanscaleError(f"{script}: no sweep.sbatch there; pass --script launch/slurm/sweep.sbatch")
    cmd = sbatch_command(manifest, indices, script, list(sbatch_args or []), max_parallel)
    log("$ " + " ".join(cmd))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise GanscaleError("sbatch not found: is this a Slurm login node?") from None
    if p.returncode != 0:
        raise GanscaleError(f"sbatch failed ({p.returncode}): {p.stderr.strip()}")
    job = p.stdout.strip().split(";")[0]
    listed = ",".join(map(str, indices))
    log(f"[sweep] submitted job array {job}: {len(indices)} of {len(cells)} cells ({listed})")
    return job


def run_array_task(manifest: Path, index: int, nproc: int = 1, log: Callable[[str], None] = print) -> int:
    """One array task: cell ``index`` of the manifest. Exit code: 0 done or stopped (the
    script requeues a stopped task), 1 failed."""
    spec, cells = read_manifest(manifest)
    if not 0 <= index < len(cells):
        raise GanscaleError(f"{manifest}: no cell {index} (it has {len(cells)})")
    fwd = Forwarder()
    with fwd.installed():
        outcome = run_cell(spec, cells[index], fwd, nproc=nproc, log=log)
    log(f"[sweep] cell {index} {cells[index].folder}: {outcome}")
    return 1 if outcome == "failed" else 0
