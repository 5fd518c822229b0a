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
MAX_ALL_CONDITIONS = 256
"""``--all-conditions`` draws one grid row per combination of values; past this many it is refused
(fix some attributes with ``--cond`` to draw the combinations of the others)."""


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
        lower = [v.lower() for v in values]
        if picked == ANY:
            cols.append(rng.integers(0, len(values), n))
        elif picked in lower:
            cols.append(np.full(n, lower.index(picked)))
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
            f"this generator is conditional: pass --tags, e.g. --tags {_example(attributes)!r}, "
            f"--cond ATTR=VALUE for each of {', '.join(attributes)}, or --all-conditions"
        )
    return [t.strip() for t in text.split(";") if t.strip()]


def _example(attributes: dict[str, list[str]]) -> str:
    return " ".join(f"{v[0]} {a}" for a, v in attributes.items())


def parse_condition(text: str, attributes: dict[str, list[str]]) -> list[int]:
    """One condition -> one class index per attribute. Two phrasings: ``"aqua hair orange eyes"``
    (each value followed by its attribute's name, as the MLDS tags read) and, when no word is an
    attribute's name, ``"google flags"`` (each word, or run of words, names exactly one value of
    one attribute). Case, ``_`` and ``-`` do not matter. Anything else is a one-line
    GanscaleError naming the valid values."""
    from ganscale.shardformat.vocab import normalise_words, parse_tags

    words = normalise_words(text)
    normalised = {_norm(a): [_norm(v) for v in values] for a, values in attributes.items()}
    if not words or any(w in normalised for w in words):
        return parse_tags(" ".join(words) if words else text, normalised)
    return _values_only(text, words, attributes)


def _values_only(text: str, words: list[str], attributes: dict[str, list[str]]) -> list[int]:
    """``"google flags"``: the longest run of words naming a value, left to right."""
    phrases: dict[tuple[str, ...], list[tuple[str, int]]] = {}
    for attr, values in attributes.items():
        for i, value in enumerate(values):
            phrases.setdefault(tuple(_norm(value).split()), []).append((attr, i))
    longest = max(len(k) for k in phrases)
    found: dict[str, int] = {}
    at = 0
    while at < len(words):
        for n in range(min(longest, len(words) - at), 0, -1):
            hits = phrases.get(tuple(words[at : at + n]))
            if hits:
                break
        else:
            raise GanscaleError(
                f"--tags {text!r}: {words[at]!r} names no value; valid: "
                + "; ".join(f"{a}: {', '.join(v)}" for a, v in attributes.items())
            )
        phrase = " ".join(words[at : at + n])
        if len(hits) > 1:
            raise GanscaleError(
                f"--tags {text!r}: {phrase!r} is a value of {' and '.join(a for a, _ in hits)}; say which, "
                f"e.g. --tags {_example(attributes)!r} or --cond ATTR=VALUE"
            )
        attr, index = hits[0]
        if attr in found:
            raise GanscaleError(
                f"--tags {text!r}: two values of {attr}; give one of {', '.join(attributes[attr])}"
            )
        found[attr] = index
        at += n
    missing = [a for a in attributes if a not in found]
    if missing:
        a = missing[0]
        raise GanscaleError(f"--tags {text!r}: no value of {a}; add one of {', '.join(attributes[a])}")
    return [found[a] for a in attributes]


def _norm(name: str) -> str:
    """A value or attribute name as the tag parser reads words (lower case, ``_``/``-`` spaces)."""
    from ganscale.shardformat.vocab import normalise_words

    return " ".join(normalise_words(name))


def parse_cond(pairs: list[str], attributes: dict[str, list[str]], partial: bool = False) -> dict[str, int]:
    """``["vendor=google", "category=flags"]`` (repeated ``--cond ATTR=VALUE``) -> {attribute:
    class index}; every attribute must be named once unless ``partial`` (with --all-conditions,
    the others are enumerated). Values match case-insensitively; an unknown attribute or value, a
    repeated or a missing attribute is a one-line GanscaleError naming the valid ones."""
    if not attributes:
        raise GanscaleError("--cond: this generator is unconditional; drop --cond")
    lower = {a.lower(): a for a in attributes}
    found: dict[str, int] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        attr = lower.get(name.strip().lower())
        if not eq or attr is None:
            raise GanscaleError(f"--cond {pair!r}: write ATTR=VALUE with ATTR one of {', '.join(attributes)}")
        values = [v.lower() for v in attributes[attr]]
        if value.strip().lower() not in values:
            raise GanscaleError(f"--cond {pair!r}: {attr} is one of {', '.join(attributes[attr])}")
        if attr in found:
            raise GanscaleError(f"--cond {pair!r}: {attr} is given twice")
        found[attr] = values.index(value.strip().lower())
    missing = [a for a in attributes if a not in found]
    if missing and not partial:
        a = missing[0]
        raise GanscaleError(
            f"--cond: no value for {a} (one of {', '.join(attributes[a])}); add --cond {a}=VALUE, "
            "or --all-conditions to draw every value of the attributes not given"
        )
    return found


def condition_labels(conditions: list[str], attributes: dict[str, list[str]]) -> np.ndarray:
    """Condition texts (:func:`parse_condition`) -> int64 [R, A] class indices."""
    rows = [parse_condition(c, attributes) for c in conditions]
    return np.array(rows, dtype=np.int64).reshape(len(conditions), len(attributes))


def all_conditions(attributes: dict[str, list[str]], fixed: Mapping[str, int] | None = None) -> np.ndarray:
    """int64 [R, A]: every combination of attribute values, those in ``fixed`` held at that
    index (``--all-conditions``, with ``--cond``); past MAX_ALL_CONDITIONS a one-line
    GanscaleError."""
    fixed = fixed or {}
    axes = [[fixed[a]] if a in fixed else range(len(v)) for a, v in attributes.items()]
    total = math.prod(len(x) for x in axes)
    if total > MAX_ALL_CONDITIONS:
        sizes = " x ".join(str(len(x)) for x in axes)
        raise GanscaleError(
            f"--all-conditions: {sizes} = {total} combinations, over {MAX_ALL_CONDITIONS}; "
            "fix some attributes with --cond ATTR=VALUE"
        )
    return np.array(list(itertools.product(*axes)), dtype=np.int64).reshape(total, len(attributes))


def spread_conditions(attributes: dict[str, list[str]], limit: int) -> np.ndarray:
    """int64 [R, A], R = min(limit, combinations): a few distinct combinations that show every
    value of each attribute where the rows allow, for the grids nobody asked a condition of (the
    training-time samples, the model folder's grid). The diagonal first (row i takes value
    ``i % len(values)`` of every attribute), then the combinations in order until ``limit``."""
    sizes = [len(v) for v in attributes.values()]
    total = math.prod(sizes)
    want = min(limit, total)
    rows: dict[tuple[int, ...], None] = {}
    for i in range(max(sizes, default=0)):
        if len(rows) >= want:
            break
        rows.setdefault(tuple(i % n for n in sizes), None)
    for combo in itertools.product(*(range(n) for n in sizes)):
        if len(rows) >= want:
            break
        rows.setdefault(combo, None)
    return np.array(list(rows), dtype=np.int64).reshape(len(rows), len(sizes))


def grid_inputs(
    rows: np.ndarray | None, per: int, meta: Mapping[str, Any], seed: int, psi: float | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """(z [R*per, z_dim], labels [R*per, A] or None): one row of ``per`` faces per condition
    (``rows``: int64 [R, A] class indices), the same z down each column (so a column shows one
    face under every condition); unconditional (``rows`` None): ``per`` faces."""
    z = draw_z(per, meta, seed, psi=psi)
    if rows is None:
        return z, None
    return np.tile(z, (len(rows), 1)), np.repeat(np.asarray(rows, np.int64), per, 0)


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
