"""What a generator is fed, drawn one way from a seed: z and the conditions.

Every command that turns a seed into faces draws here: `ganscale sample` (PyTorch and ONNX),
the `serve` page and its API, the training-time sample grids, the model folder's sample grid,
`ganscale eval` and the evaluation during training, and the ONNX export's parity check. So seed
k is the same z everywhere, and `ganscale sample RUN --seed 3 --tags T` shows the faces the
serve page shows for seed 3 and the condition T.

numpy only (no torch): the ONNX path runs where torch is not installed. PyTorch callers wrap
the arrays (``torch.from_numpy``). Streams, each a ``numpy.random.Generator`` (PCG64):

- z: ``default_rng(seed)``, [n, z_dim] ~ N(0, z_sigma^2) in float32, drawn row by row, so the
  first k rows of n are the k rows of a draw of k (a grid's first face is the seed's face);
- conditions left to chance (an attribute asked for as ``"any"``): ``default_rng([seed, 1])``,
  a stream of their own, so asking for other conditions never moves the faces' z.

Truncation, everywhere a person asks for it (``--truncation``, the API's ``truncation``), is one
number psi in (0, 1]: z' = psi * z. z has mean 0, so psi pulls every sample toward the average
face G(0, y): less variety, fewer odd faces as psi falls; psi = 1 is no truncation and gives
exactly the untruncated images.

Training-time noise (the z of each D and G step, derived per step for exact resume) is another
thing: ``ganscale.train.noise``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ganscale.errors import GanscaleError

ANY = "any"
"""The value that leaves an attribute to chance (the serve page's default)."""
MIN_PSI, MAX_PSI = 0.0, 1.0
"""psi is in (MIN_PSI, MAX_PSI]: 0 itself would give one face for every z."""
PSI_HELP = (
    "Truncation psi in (0, 1]: z is scaled by psi, pulling faces toward the average one "
    "(less variety, fewer odd faces); 1 = no truncation."
)
CONDITION_STREAM = 1
"""``default_rng([seed, CONDITION_STREAM])`` draws the conditions left to chance."""


def check_psi(psi: float | None, flag: str = "--truncation") -> float:
    """``psi`` as a float (None -> 1.0, no truncation); outside (0, 1] a one-line GanscaleError."""
    if psi is None:
        return 1.0
    value = float(psi)
    if not (math.isfinite(value) and MIN_PSI < value <= MAX_PSI):
        raise GanscaleError(
            f"{flag} {psi}: psi must be in (0, 1] (1 = no truncation; e.g. 0.7 for fewer odd faces)"
        )
    return value


def draw_z(n: int, meta: Mapping[str, Any], seed: int, psi: float | None = None) -> np.ndarray:
    """float32 [n, z_dim] ~ N(0, z_sigma^2) from ``seed``, times ``psi`` (see the module
    docstring; None or 1 leaves z as drawn). ``meta``: anything with ``z_dim`` and ``z_sigma``
    (a generator.json)."""
    scale = check_psi(psi)
    z = np.random.default_rng(seed).standard_normal((n, int(meta["z_dim"])))
    z = (z * float(meta["z_sigma"])).astype(np.float32)
    return z * np.float32(scale) if scale != 1.0 else z  # psi z, exactly, in float32


def draw_labels(
    choice: Mapping[str, str], attributes: dict[str, list[str]], n: int, seed: int
) -> tuple[np.ndarray, list[str]]:
    """``{"hair": "blue", "eyes": "any"}`` -> (int64 [n, A] class indices, one tag text per image).

    A missing attribute or ``"any"`` is drawn per image from the seed's condition stream (see the
    module docstring). An unknown name or value is a one-line GanscaleError listing the valid ones."""
    unknown = sorted(set(choice) - set(attributes))
    if unknown:
        raise GanscaleError(f"unknown attribute {unknown[0]!r}; this model has {', '.join(attributes)}")
    rng = np.random.default_rng([seed, CONDITION_STREAM])
    cols = []
    for name, values in attributes.items():
        picked = str(choice.get(name, ANY)).strip().lower()
        if picked == ANY:
            cols.append(rng.integers(0, len(values), n))
        elif picked in values:
            cols.append(np.full(n, values.index(picked)))
        else:
            raise GanscaleError(
                f"{name}: unknown value {picked[:40]!r}; choose one of {', '.join(values)} or {ANY}"
            )
    labels = np.stack(cols, 1).astype(np.int64) if cols else np.zeros((n, 0), np.int64)
    return labels, [tag_text(row, attributes) for row in labels]


def tag_text(row: Any, attributes: dict[str, list[str]]) -> str:
    """Class indices [A] -> ``"blue hair red eyes"``."""
    return " ".join(
        f"{values[int(i)]} {name}" for (name, values), i in zip(attributes.items(), row, strict=True)
    )


def parse_conditions(text: str | None, meta: Mapping[str, Any]) -> list[str] | None:
    """``--tags`` may hold several conditions separated by ';' (one grid row each); None for an
    unconditional generator."""
    attributes = meta["attributes"]
    if not attributes:
        if text:
            raise GanscaleError(f"--tags {text!r}: this generator is unconditional; drop --tags")
        return None
    if not text:
        raise GanscaleError(
            "this generator is conditional: pass --tags, e.g. --tags "
            f'"{" ".join(f"{v[0]} {a}" for a, v in attributes.items())}", or --all-conditions'
        )
    return [t.strip() for t in text.split(";") if t.strip()]


def condition_labels(conditions: list[str], attributes: dict[str, list[str]]) -> np.ndarray:
    """Tag texts -> int64 [R, A] class indices (an unknown word: a one-line GanscaleError)."""
    from ganscale.corpus.vocab import parse_tags

    return np.array([parse_tags(c, attributes) for c in conditions], dtype=np.int64).reshape(
        len(conditions), len(attributes)
    )


def all_conditions(attributes: dict[str, list[str]]) -> list[str]:
    """Every combination of attribute values, as tag texts."""
    return [
        tag_text(combo, attributes)
        for combo in itertools.product(*(range(len(v)) for v in attributes.values()))
    ]


def grid_inputs(
    conditions: list[str] | None, per: int, meta: Mapping[str, Any], seed: int, psi: float | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """(z [R*per, z_dim], labels [R*per, A] or None): one row of ``per`` faces per condition, the
    same z down each column (so a column shows one face under every condition); unconditional
    (``conditions`` None): ``per`` faces."""
    z = draw_z(per, meta, seed, psi=psi)
    if conditions is None:
        return z, None
    labels = condition_labels(conditions, meta["attributes"])
    return np.tile(z, (len(conditions), 1)), np.repeat(labels, per, 0)


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Row-wise spherical interpolation between latent vectors (keeps the norm typical of z),
    ``t`` [B, 1]."""
    an = a / np.linalg.norm(a, axis=-1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=-1, keepdims=True)
    omega = np.arccos(np.clip((an * bn).sum(-1, keepdims=True), -1, 1))
    so = np.sin(omega)
    if float(np.abs(so).min()) < 1e-6:
        return ((1 - t) * a + t * b).astype(np.float32)
    return (np.sin((1 - t) * omega) / so * a + np.sin(t * omega) / so * b).astype(np.float32)


def walk(
    seed_a: int, seed_b: int, frames: int, meta: Mapping[str, Any], psi: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(z [frames, z_dim], t [frames, 1]): slerp from seed ``seed_a``'s face to ``seed_b``'s."""
    t = np.linspace(0, 1, frames, dtype=np.float32)[:, None]
    za, zb = draw_z(1, meta, seed_a, psi=psi), draw_z(1, meta, seed_b, psi=psi)
    return slerp(np.repeat(za, frames, 0), np.repeat(zb, frames, 0), t), t


def condition_code(
    labels: np.ndarray, sizes: list[int], labels_to: np.ndarray | None = None, t: np.ndarray | None = None
) -> np.ndarray:
    """float32 [B, sum(sizes)]: the one-hot code G is conditioned on, ``(1 - t) * onehot(labels)
    + t * onehot(labels_to)`` when mixing two conditions; -1 is an all-zero one-hot."""
    parts = []
    for i, n in enumerate(sizes):
        a = (labels[:, i : i + 1] == np.arange(n)).astype(np.float32)
        if labels_to is not None and t is not None:
            b = (labels_to[:, i : i + 1] == np.arange(n)).astype(np.float32)
            a = (1 - t) * a + t * b
        parts.append(a)
    return np.concatenate(parts, 1).astype(np.float32)
