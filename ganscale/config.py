"""Typed run configuration: YAML + ``--set a.b=v`` overrides -> nested dataclasses.

Config flows one way: :func:`load_config` reads the YAML, applies overrides, builds the
dataclasses (strictly: an unknown key is an error naming the closest valid key, a value of
the wrong type is an error naming the key and the expected type), validates once in
``__post_init__``, and the result is passed down. Nothing deeper reads files or env vars.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ganscale.errors import ConfigError

# The study's latent noise: z ~ N(0, sigma) with sigma = exp(-1/pi).
STUDY_Z_SIGMA = math.exp(-1.0 / math.pi)


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key {key}: {msg}")


@dataclass
class ModelConfig:
    """Generator and discriminator architecture."""

    arch: Literal["dcgan", "resnet"] = "dcgan"
    """dcgan: the study's DCGAN G/D; resnet: SRResNet-style G and residual D (MakeGirlsMoe)."""
    conditional: bool = False
    """True makes an ACGAN conditioned on every attribute of the corpus (hair, eyes)."""
    image_size: int = 64
    """Output resolution: 32, 64, 128 or 256. Networks add/drop up/down-sampling blocks."""
    z_dim: int = 100
    """Size of the latent vector z."""
    z_sigma: float = STUDY_Z_SIGMA
    """Standard deviation of z ~ N(0, sigma); the study used exp(-1/pi)."""
    g_channels: int = 64
    """Width of G (ngf): channels of its last feature map."""
    d_channels: int = 64
    """Width of D (ndf): channels of its first feature map."""
    g_blocks: int = 16
    """Residual blocks in the resnet G (SRResNet uses 16)."""
    d_norm: Literal["auto", "batch", "none"] = "auto"
    """Normalisation in D; auto = batch, except none for WGAN-GP (per-sample penalty)."""
    head: Literal["shared", "separate", "classifier", "projection"] = "separate"
    """How D judges class: shared single-layer heads; the study's separate 3-layer heads;
    a separate classifier network; or a projection discriminator (Miyato & Koyama)."""
    head_layers: int = 3
    """Layers in each separate head (the study used 3)."""

    def __post_init__(self) -> None:
        _check(
            self.image_size in (16, 32, 64, 128, 256),
            "model.image_size",
            f"{self.image_size} is not supported; use 16, 32, 64, 128 or 256",
        )
        for k in ("z_dim", "g_channels", "d_channels", "head_layers"):
            _check(getattr(self, k) > 0, f"model.{k}", f"must be > 0, got {getattr(self, k)}")
        _check(self.g_blocks >= 0, "model.g_blocks", f"must be >= 0, got {self.g_blocks}")
        _check(self.z_sigma > 0, "model.z_sigma", f"must be > 0, got {self.z_sigma}")


@dataclass
class LossConfig:
    """Adversarial loss, penalties and the ACGAN class-loss weight."""

    adversarial: Literal["bce", "hinge", "wgan"] = "bce"
    """bce: non-saturating BCE; hinge; wgan (use with penalty: gp for WGAN-GP)."""
    penalty: Literal["none", "gp", "r1", "dragan"] = "none"
    """Gradient penalty on D: WGAN-GP, R1 (real data) or DRAGAN (perturbed real)."""
    penalty_weight: float = 10.0
    """Weight of the gradient penalty."""
    class_weight: float = 1.0
    """The study's lambda: weight of the ACGAN class loss (D: real+fake, G: fake)."""
    d_fake_class: bool = True
    """D's class loss also on fakes (the original ACGAN, the study's setup). false trains D's
    classifier on real images only, so G must draw the real attribute rather than a code that
    D learns alongside it."""

    def __post_init__(self) -> None:
        _check(self.penalty_weight >= 0, "loss.penalty_weight", "must be >= 0")
        _check(self.class_weight >= 0, "loss.class_weight", "must be >= 0")


@dataclass
class OptimConfig:
    """Adam for both networks."""

    g_lr: float = 2e-4
    d_lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    impl: Literal["auto", "foreach", "fused", "plain"] = "auto"
    """Adam implementation: auto picks fused on CUDA, foreach elsewhere."""

    def __post_init__(self) -> None:
        _check(self.g_lr > 0, "optim.g_lr", f"must be > 0, got {self.g_lr}")
        _check(self.d_lr > 0, "optim.d_lr", f"must be > 0, got {self.d_lr}")
        _check(0 <= self.beta1 < 1, "optim.beta1", "must be in [0, 1)")
        _check(0 <= self.beta2 < 1, "optim.beta2", "must be in [0, 1)")


@dataclass
class TrainConfig:
    """The loop: budget, batch, precision, EMA."""

    batch_size: int = 64
    """Images per process per micro-step (global batch = batch_size x processes x grad_accum)."""
    max_steps: int = 10000
    """Stop after this many optimizer steps of G (0 = no step limit; then max_images)."""
    max_images: int = 0
    """Stop after this many real images seen across all processes (0 = off)."""
    n_critic: int = 1
    """D steps per G step."""
    grad_accum: int = 1
    """Micro-batches accumulated into each D and each G step."""
    global_batch: int = 0
    """If > 0, the images per optimizer step across all processes; grad_accum is then derived
    as global_batch / (batch_size x processes), so a resume on another process count keeps it."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Autocast dtype. fp16 uses one loss scaler for G and another for D."""
    ema_decay: float = 0.999
    """EMA of G's weights, used for samples and export (0 disables)."""
    sync_batchnorm: bool = False
    """Convert BatchNorm to SyncBatchNorm (CUDA multi-process only)."""
    channels_last: bool = True
    """channels_last (NHWC) memory format for G, D and the real batches. On by default: measured
    1.10x (DCGAN) and 1.05x (ResNet ACGAN) faster in fp32 on CPU (docs/performance.md), and the
    layout cuDNN's bf16/fp16 tensor-core convolutions want on GPU."""
    compile: bool = False
    """torch.compile G and D. Off by default: on the 2-core CPU it gained ~5% after ~1-2 minutes
    of compilation (docs/performance.md); turn it on for long GPU runs."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = (
        "default"
    )
    """torch.compile mode when train.compile is on; reduce-overhead uses CUDA graphs (GPU only)."""

    def __post_init__(self) -> None:
        _check(self.batch_size > 0, "train.batch_size", f"must be > 0, got {self.batch_size}")
        _check(self.max_steps >= 0, "train.max_steps", f"must be >= 0, got {self.max_steps}")
        _check(self.max_images >= 0, "train.max_images", f"must be >= 0, got {self.max_images}")
        _check(
            self.max_steps > 0 or self.max_images > 0,
            "train.max_steps",
            "set train.max_steps or train.max_images to a positive number",
        )
        _check(self.n_critic >= 1, "train.n_critic", f"must be >= 1, got {self.n_critic}")
        _check(self.grad_accum >= 1, "train.grad_accum", f"must be >= 1, got {self.grad_accum}")
        _check(self.global_batch >= 0, "train.global_batch", f"must be >= 0, got {self.global_batch}")
        _check(0 <= self.ema_decay < 1, "train.ema_decay", "must be in [0, 1)")


@dataclass
class DataConfig:
    """Where images come from and how they are streamed and augmented."""

    source: Literal["synthetic", "shards"] = "synthetic"
    """synthetic: the built-in corpus, built once into cache_dir; shards: data.path."""
    path: str = ""
    """Corpus folder with dataset.json, a brace pattern, or a list of shard URLs (comma separated)."""
    cache_dir: str = ".cache/ganscale"
    """Where the built-in synthetic corpus is built and reused."""
    synthetic_n: int = 20000
    """Images in the built-in synthetic corpus."""
    synthetic_seed: int = 0
    """Seed of the built-in synthetic corpus."""
    num_workers: int = 0
    """DataLoader worker processes per rank."""
    shuffle_buffer: int = 1000
    """Samples in the in-memory shuffle buffer (0 disables sample shuffling)."""
    hflip: bool = True
    """Random horizontal flips (the study's augmentation)."""
    rotate_degrees: float = 5.0
    """Random rotation in [-d, d] degrees (0 disables)."""
    resampled: bool = False
    """Sample shards with replacement forever; needed when shards < ranks x workers."""
    allow_pipe: bool = False
    """Allow pipe: URLs (they run a shell command)."""
    pin_memory: bool = True
    """Pin host memory for non-blocking copies to the GPU."""

    def __post_init__(self) -> None:
        if self.source == "synthetic":
            _check(
                not self.path,
                "data.path",
                f"is set ({self.path!r}) but data.source is synthetic; add --set data.source=shards",
            )
        else:
            _check(bool(self.path), "data.path", "is empty but data.source is shards; set data.path")
        _check(self.synthetic_n > 0, "data.synthetic_n", "must be > 0")
        _check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        _check(self.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0")
        _check(0 <= self.rotate_degrees <= 180, "data.rotate_degrees", "must be in [0, 180]")


@dataclass
class CheckpointConfig:
    """Resumable checkpoints under RUN/checkpoints/."""

    every: int = 1000
    """Save every N steps (and always at the end). 0 = only at the end."""
    keep: int = 3
    """Keep the last K checkpoints."""
    on_disk_full: Literal["stop", "continue"] = "stop"
    """When a save fails for lack of space: stop cleanly, or warn and keep training."""

    def __post_init__(self) -> None:
        _check(self.every >= 0, "checkpoint.every", f"must be >= 0, got {self.every}")
        _check(self.keep >= 1, "checkpoint.keep", f"must be >= 1, got {self.keep}")


@dataclass
class LogConfig:
    """Metrics, sample grids and the experiment tracker."""

    tracker: Literal["wandb", "tensorboard", "none"] = "wandb"
    """wandb runs offline unless an API key is configured."""
    project: str = "ganscale"
    """Tracker project name."""
    every: int = 50
    """Log scalars every N steps to the tracker and RUN/metrics.jsonl."""
    sample_every: int = 500
    """Write a fixed-z sample grid every N steps (0 = only at the end)."""
    samples_per_condition: int = 8
    """Columns of the sample grid (one row per condition)."""
    progress: bool = True
    """Show a progress bar on the main process."""

    def __post_init__(self) -> None:
        _check(self.every >= 1, "log.every", f"must be >= 1, got {self.every}")
        _check(self.sample_every >= 0, "log.sample_every", "must be >= 0")
        _check(self.samples_per_condition >= 1, "log.samples_per_condition", "must be >= 1")


@dataclass
class DeepSpeedConfig:
    """DeepSpeed ZeRO settings (used when backend: deepspeed)."""

    zero_stage: int = 2
    """ZeRO stage 0, 1, 2 or 3."""
    config: str = ""
    """A DeepSpeed JSON merged over the config ganscale builds (e.g. overlap_comm, bucket
    sizes). Keys ganscale owns (batch sizes, accumulation, stage, precision) may only repeat
    the ganscale value or say "auto"; anything else is an error."""

    def __post_init__(self) -> None:
        _check(self.zero_stage in (0, 1, 2, 3), "deepspeed.zero_stage", "must be 0, 1, 2 or 3")
        _check(
            not self.config or Path(self.config).is_file(),
            "deepspeed.config",
            f"no such file {self.config!r}; give a DeepSpeed JSON (e.g. launch/deepspeed/zero2.json)",
        )
        # ZeRO-3 partitions G's weights away from the EMA copy; until the EMA is updated from
        # gathered weights, stage 3 is refused rather than training a wrong EMA.
        _check(
            self.zero_stage != 3,
            "deepspeed.zero_stage",
            "3 is not supported yet (the EMA of G needs gathered weights); use --set deepspeed.zero_stage=2",
        )


@dataclass
class FaultConfig:
    """What to do when training goes wrong."""

    nan_policy: Literal["skip", "rollback", "stop"] = "stop"
    """On a NaN/inf loss or output: skip the step, reload the last checkpoint with a lower
    learning rate, or stop with an error."""
    rollback_lr_factor: float = 0.5
    """Learning-rate factor applied on each rollback."""
    max_rollbacks: int = 3
    """Rollbacks allowed in a run; one more non-finite step then stops with an error."""
    check_every: int = 1
    """Read the NaN/inf flag on the host every N steps. 1: every phase of every step (the
    fault is caught at the step it happens, at the cost of one host-device sync per phase).
    N > 1: the flag accumulates on the device and is read every N steps, so the other steps
    never wait for the GPU; needs nan_policy stop or rollback (an update already applied
    cannot be skipped) and checkpoint.every a multiple of N (never checkpoint unchecked steps)."""

    def __post_init__(self) -> None:
        _check(0 < self.rollback_lr_factor <= 1, "faults.rollback_lr_factor", "must be in (0, 1]")
        _check(self.max_rollbacks >= 0, "faults.max_rollbacks", f"must be >= 0, got {self.max_rollbacks}")
        _check(self.check_every >= 1, "faults.check_every", f"must be >= 1, got {self.check_every}")
        _check(
            self.check_every == 1 or self.nan_policy != "skip",
            "faults.check_every",
            "> 1 needs faults.nan_policy stop or rollback (skip must see the NaN before the update)",
        )


METRIC_DIRECTIONS: dict[str, str] = {
    "fid_classifier": "min",
    "kid_classifier": "min",
    "acc_joint": "max",
    "precision_classifier": "max",
    "recall_classifier": "max",
    "fid_inception": "min",
    "kid_inception": "min",
}
"""Metrics that can choose the ``best`` checkpoint, and whether lower or higher is better."""


@dataclass
class EvalConfig:
    """Quality metrics during training (attribute accuracy, FID/KID, precision/recall)."""

    every: int = -1
    """Evaluate the EMA generator every N steps, across all ranks: -1 = with every checkpoint
    (checkpoint.every, and at the end), 0 = off. On by default so ``best`` exists: ACGAN runs
    often peak and then collapse."""
    n: int = 1000
    """Generated images per evaluation (split over ranks); real statistics use as many."""
    metric: Literal[
        "fid_classifier",
        "kid_classifier",
        "acc_joint",
        "precision_classifier",
        "recall_classifier",
        "fid_inception",
        "kid_inception",
    ] = "fid_classifier"
    """The metric that picks the best checkpoint (FID/KID: lower wins; the others: higher)."""
    keep_best: bool = True
    """Export the best generator so far to RUN/best/ (`ganscale sample RUN` then uses it)."""
    inception: str = ""
    """Local InceptionV3 TorchScript file for Inception FID/KID (else $GANSCALE_INCEPTION);
    never downloaded."""

    def __post_init__(self) -> None:
        if self.every < -1:
            raise ConfigError(
                f"config key eval.every: must be -1 (with checkpoints), 0 (off) or > 0, got {self.every}"
            )
        if self.n < 8:
            raise ConfigError(f"config key eval.n: must be >= 8, got {self.n}")
        if self.metric not in METRIC_DIRECTIONS:
            raise ConfigError(
                f"config key eval.metric: {self.metric!r} is not one of {', '.join(METRIC_DIRECTIONS)}"
            )


@dataclass
class Config:
    """A whole run."""

    name: str = ""
    """Run name; defaults to the config file's stem."""
    seed: int = 0
    """Seed for weights, noise and data order."""
    backend: Literal["accelerate", "deepspeed"] = "accelerate"
    """Distribution backend."""
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        _check(-(2**63) <= self.seed < 2**63, "seed", f"must fit in 64 bits, got {self.seed}")
        if self.loss.penalty == "gp" and self.model.d_norm == "batch":
            raise ConfigError(
                "config key model.d_norm: batch norm breaks the per-sample gradient "
                "penalty of WGAN-GP; use --set model.d_norm=auto (or none)"
            )
        if self.model.head == "projection" and not self.model.conditional:
            raise ConfigError("config key model.head: projection needs model.conditional: true")
        every = self.faults.check_every
        if every > 1 and self.checkpoint.every % every:
            raise ConfigError(
                f"config key faults.check_every: checkpoint.every ({self.checkpoint.every}) must be a "
                f"multiple of it ({every}), so no checkpoint holds an unchecked step"
            )

    def grad_accum_for(self, world_size: int) -> int:
        """Micro-steps per optimizer step on ``world_size`` processes (train.global_batch wins)."""
        tc = self.train
        if not tc.global_batch:
            return tc.grad_accum
        per_step = tc.batch_size * world_size
        if tc.global_batch % per_step:
            raise ConfigError(
                f"config key train.global_batch: {tc.global_batch} is not divisible by train.batch_size x "
                f"processes = {tc.batch_size} x {world_size}; pick a multiple of {per_step}"
            )
        return tc.global_batch // per_step

    @property
    def d_norm(self) -> str:
        """The resolved D normalisation (auto -> none for WGAN-GP, else batch)."""
        if self.model.d_norm != "auto":
            return self.model.d_norm
        return "none" if self.loss.penalty == "gp" else "batch"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one leaf value against its annotated type."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool):  # YAML 1.1 reads a bare `no` as False
            value = {False: "no", True: "yes"}[value] if "no" in choices else value
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"config key {key}: {value!r} is not one of {', '.join(map(str, choices))}{hint}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key}: expected {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads 2e-4 as a string (YAML 1.1)
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is not None:
            # nan/inf (.inf, "inf", 1e400) would pass every "> 0" check and train on NaN
            if not math.isfinite(number):
                raise ConfigError(f"config key {key}: must be a finite number, got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif origin is list:
        if isinstance(value, list):
            (item_tp,) = typing.get_args(tp) or (Any,)
            return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    elif tp is Any:
        return value
    raise ConfigError(f"config key {key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key {where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            if not close:  # a key put in the wrong section: look at every full key
                close = difflib.get_close_matches(full, _all_keys(Config), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]}?" if close else f"; valid keys: {', '.join(names)}"
            else:
                hint = f"; did you mean {prefix}{close[0]}?"
            shown = full if full.isprintable() else repr(full)  # a key with a newline: keep one line
            raise ConfigError(f"unknown config key {shown}{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{full}.")
        else:
            kwargs[key] = _coerce(value, tp, full)
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - guarded above
        raise ConfigError(f"config {where}: {e}") from e


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _all_keys(tp, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def valid_keys() -> list[str]:
    """Every dotted key a config accepts (for docs and error messages)."""
    return _all_keys(Config)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b=value`` override to a raw config dict (value parsed as YAML)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set train.batch_size=128")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {p} is not a section")
        node = child
    node[parts[-1]] = value


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass a YAML file such as configs/acgan.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path}{where}: {problem}; fix the YAML syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of sections")
    return data


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a raw (YAML-shaped) dict."""
    return _build(Config, data, "")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read YAML (or none: all defaults), apply ``--set`` overrides, build and validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        data = read_yaml(path)
        data.setdefault("name", path.stem)
    for assignment in overrides or []:
        apply_override(data, assignment)
    return config_from_dict(data)


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tmp.replace(path)
