"""The process environment, read (and, where a library insists, written) in this one module.

Nothing else in ganscale touches ``os.environ``: code outside :mod:`ganscale.runtime` gets the
values decided here as parameters, looked up once at the edge (the CLI, the trainer, the bench).

What is read:

- **the launcher's** ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (torchrun, ``accelerate launch``
  and the ``deepspeed`` launcher export them; the last also appends ``--local_rank=N`` to argv,
  which the CLI strips and hands to :func:`set_local_rank`), and ``accelerate launch``'s
  ``ACCELERATE_USE_DEEPSPEED`` / ``ACCELERATE_MIXED_PRECISION``: :func:`launch_env`.
  Slurm's ``SLURM_*`` variables are read by ``launch/slurm/train.sbatch`` alone, which turns
  them into ``accelerate launch`` arguments; Python sees only what that launcher exports.
- **W&B**: ``WANDB_MODE``, else ``WANDB_API_KEY`` or a ``~/.netrc`` login: :func:`wandb_mode`.
- ``GANSCALE_INCEPTION``, a local InceptionV3 file (or ``download``): :func:`inception_weights`.
- ``GANSCALE_CACHE_DIR`` (else ``XDG_CACHE_HOME``/ganscale, else ~/.cache/ganscale), where
  downloaded files such as the standard Inception weights are kept: :func:`cache_dir`.
- ``GANSCALE_PEAK_TFLOPS``, the bench's peak-FLOP/s override: :func:`peak_tflops_override`.

What is written, because a library reads it from the environment and nowhere else:
``LOCAL_RANK`` (:func:`set_local_rank`), a one-process group description for DeepSpeed
(:func:`export_single_process_group`), ``DS_ACCELERATOR`` (:func:`default_ds_accelerator`) and
``CUBLAS_WORKSPACE_CONFIG`` (:func:`deterministic_cublas`).

Only the standard library is imported here: the CLI calls this before anything heavy loads.
"""

from __future__ import annotations

import netrc
import os
import socket
from dataclasses import dataclass

from ganscale.errors import GanscaleError

INCEPTION_ENV = "GANSCALE_INCEPTION"
"""Names a local InceptionV3 TorchScript file for FID/KID in Inception space, or ``download``:
the standard file, fetched once into :func:`cache_dir`."""
CACHE_ENV = "GANSCALE_CACHE_DIR"
"""The per-user folder for downloaded files (the standard Inception weights)."""
PEAK_TFLOPS_ENV = "GANSCALE_PEAK_TFLOPS"
"""Overrides the bench's table of dense peak TFLOP/s (e.g. for PCIe parts)."""


@dataclass(frozen=True)
class LaunchEnv:
    """What the launcher told this process."""

    rank: int | None
    """Global rank (``RANK``); None without a launcher."""
    world_size: int | None
    """Process count (``WORLD_SIZE``); None without a launcher."""
    local_rank: int
    """Rank on this machine (``LOCAL_RANK``), 0 when unset."""
    accelerate_use_deepspeed: bool
    """``accelerate launch`` was given a DeepSpeed config (``ACCELERATE_USE_DEEPSPEED=true``)."""
    accelerate_mixed_precision: str
    """``accelerate launch --mixed_precision`` (``ACCELERATE_MIXED_PRECISION``), "no" when unset."""

    @property
    def launched(self) -> bool:
        """A launcher described the process group (RANK and WORLD_SIZE are both set)."""
        return self.rank is not None and self.world_size is not None


def _int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise GanscaleError(f"environment variable {name}={raw!r}: expected an integer") from None


def launch_env() -> LaunchEnv:
    """The launcher's variables, read now (not cached: :func:`set_local_rank` may change them)."""
    return LaunchEnv(
        rank=_int("RANK"),
        world_size=_int("WORLD_SIZE"),
        local_rank=_int("LOCAL_RANK") or 0,
        accelerate_use_deepspeed=os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true",
        accelerate_mixed_precision=os.environ.get("ACCELERATE_MIXED_PRECISION", "") or "no",
    )


def set_local_rank(value: str | int) -> None:
    """Record the ``deepspeed`` launcher's ``--local_rank=N`` argument as ``LOCAL_RANK``.

    An exported ``LOCAL_RANK`` wins (the launcher exports it too; the argument is a fallback).
    """
    os.environ.setdefault("LOCAL_RANK", str(value))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_single_process_group() -> None:
    """Describe a one-process group in the environment, unless a launcher already did.

    ``deepspeed.init_distributed`` reads the group from RANK/WORLD_SIZE/MASTER_* only; a bare
    ``ganscale train`` has none, and DeepSpeed would then go looking for MPI.
    """
    if launch_env().launched:
        return
    os.environ.update(
        {
            "RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_RANK": "0",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": os.environ.get("MASTER_PORT") or str(_free_port()),
        }
    )


def default_ds_accelerator(cuda_available: bool) -> None:
    """``DS_ACCELERATOR=cpu`` without CUDA (unless set): otherwise DeepSpeed, on import, probes
    for every accelerator it knows and logs about each one."""
    if not cuda_available:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


CUBLAS_DETERMINISTIC = ":4096:8"
"""cuBLAS's workspace setting for deterministic results (CUDA's reproducibility notes)."""


def deterministic_cublas() -> None:
    """Ask cuBLAS for deterministic results (``CUBLAS_WORKSPACE_CONFIG``, read when cuBLAS
    makes its first handle); a value already set is kept."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)


def wandb_mode() -> str:
    """W&B's mode: ``WANDB_MODE`` if set; else "online" when an API key is configured
    (``WANDB_API_KEY`` or an ``api.wandb.ai`` login in ``~/.netrc``); else "offline", so
    tracking never needs an account."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


def inception_weights() -> str | None:
    """``$GANSCALE_INCEPTION`` as given (None when unset or empty); whether the file exists is
    checked by :func:`ganscale.evaluation.features.inception_path`, which names the source."""
    return os.environ.get(INCEPTION_ENV) or None


def cache_dir() -> str:
    """Where downloaded files are kept: ``$GANSCALE_CACHE_DIR``, else ``$XDG_CACHE_HOME/ganscale``,
    else ``~/.cache/ganscale`` (not created here)."""
    explicit = os.environ.get(CACHE_ENV, "").strip()
    if explicit:
        return os.path.expanduser(explicit)
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ganscale")


def peak_tflops_override() -> float | None:
    """``$GANSCALE_PEAK_TFLOPS`` (dense peak TFLOP/s of this device), None when unset."""
    raw = os.environ.get(PEAK_TFLOPS_ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise GanscaleError(f"{PEAK_TFLOPS_ENV}={raw!r}: expected a positive number of TFLOP/s")
    return value
