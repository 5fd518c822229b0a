"""Seed derivation: every random draw of a run gets its own generator, derived (not carried)
so a resume continues bit-exactly.

Beneath both :mod:`ganscale.augment` and :mod:`ganscale.train` (it imports neither): the
trainer's noise (:mod:`ganscale.train.noise`), the augmentations and the penalties all draw
from here.

Counter-based: every draw has its own generator, seeded with a 64-bit stream id built from a
key, the run's ``seed``, and a counter, the draw's coordinates (rank, step, phase, critic
update, micro-batch). The coordinates are packed into disjoint bit fields (:data:`FIELDS`,
64 bits in all); a value that does not fit its field is refused with an error, never wrapped.
So two different draws of one run always have different packed counters, and the stream id
``mix64(counter XOR mix64(seed))`` is a bijection of the counter for a fixed seed (XOR with a
constant and the splitmix64 finaliser are both invertible on 64-bit words): no two draws of a
run share a generator. (The scheme before format version 2 summed the phase into the step's
multiplier: with grad_accum >= 2, G's micro-batch 1 at step t drew D's noise of step t + 125.)

The phases are named (:class:`NoisePhase`); a new kind of draw takes a new member (3 bits:
up to 8), never an offset into another phase's numbers.
"""

from __future__ import annotations

from enum import IntEnum

import torch

from ganscale.errors import GanscaleError

NOISE_SCHEME = "packed-v2"
"""Recorded in each checkpoint's state.json (format version 2)."""

FIELDS: tuple[tuple[str, int], ...] = (("micro", 8), ("critic", 5), ("phase", 3), ("rank", 16), ("step", 32))
"""(field, width in bits) from the least significant bit: micro-batch < 256, critic update
< 32, phase < 8, rank < 65536, step < 2**32. Widths sum to 64."""

MASK64 = 2**64 - 1


class NoisePhase(IntEnum):
    """What a draw is for."""

    D = 0
    """The fakes of D's update (critic update ``c``, micro-batch ``m``)."""
    G = 1
    """The fakes of G's update (micro-batch ``m``; critic is 0)."""
    AUGMENT = 2
    """augment.kind diffaugment/ada: one generator per step (critic and micro 0) that every
    augmentation of the step draws from, in the step's fixed order."""
    PENALTY = 3
    """The random mixing of loss.penalty gp/dragan (critic update ``c``, micro-batch ``m``)."""


def field_limit(name: str) -> int:
    """The number of values field ``name`` holds (its bound: values are 0 .. limit - 1)."""
    return 1 << dict(FIELDS)[name]


def pack_counter(rank: int, step: int, phase: int, critic: int, micro: int) -> int:
    """The draw's coordinates as one 64-bit counter (injective: disjoint fields, each checked)."""
    values = {"micro": micro, "critic": critic, "phase": int(phase), "rank": rank, "step": step}
    packed, shift = 0, 0
    for name, width in FIELDS:
        v = values[name]
        if not 0 <= v < 1 << width:
            raise GanscaleError(
                f"noise counter out of range: {name} = {v}, the noise scheme holds 0..{(1 << width) - 1} "
                f"({width} bits); {_fix(name)}"
            )
        packed |= v << shift
        shift += width
    return packed


def unpack_counter(packed: int) -> dict[str, int]:
    """The inverse of :func:`pack_counter` (what makes it provably injective)."""
    out, shift = {}, 0
    for name, width in FIELDS:
        out[name] = (packed >> shift) & ((1 << width) - 1)
        shift += width
    return out


def _fix(name: str) -> str:
    return {
        "micro": "lower train.grad_accum (or raise train.batch_size)",
        "critic": "lower train.n_critic",
        "phase": "a new noise phase needs a field wider than 3 bits",
        "rank": "run on fewer processes",
        "step": "a run this long needs a wider step field (ganscale.seeding.FIELDS)",
    }[name]


def mix64(x: int) -> int:
    """The splitmix64 finaliser: a bijection of 64-bit words that scatters nearby inputs."""
    x &= MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def stream_id(seed: int, rank: int, step: int, phase: int, critic: int = 0, micro: int = 0) -> int:
    """The 64-bit generator seed of one draw (injective in the coordinates for a fixed seed)."""
    return mix64(pack_counter(rank, step, phase, critic, micro) ^ mix64(seed % 2**64))


def step_generator(
    seed: int, rank: int, step: int, phase: int, device: torch.device, critic: int = 0, micro: int = 0
) -> torch.Generator:
    """The generator of one draw: seeded with :func:`stream_id`."""
    g = torch.Generator(device=device)
    g.manual_seed(stream_id(seed, rank, step, phase, critic, micro))
    return g


def check_plan(world_size: int, grad_accum: int, n_critic: int) -> None:
    """Refuse, before training, a run whose draws would not fit the counter's fields (the
    largest rank is checked, so every rank refuses alike)."""
    for name, value in (("rank", world_size - 1), ("micro", grad_accum - 1), ("critic", n_critic - 1)):
        pack_counter(**{"rank": 0, "step": 0, "phase": 0, "critic": 0, "micro": 0, name: value})
