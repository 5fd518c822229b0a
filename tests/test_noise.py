"""The noise streams of training cannot collide: the counter packing is injective over every
value it accepts (disjoint bit fields, each bounded), the seed mixing is a bijection, and a
value outside a field is refused with an error instead of wrapping into another draw's."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from ganscale.errors import GanscaleError
from ganscale.seeding import (
    FIELDS,
    MASK64,
    NoisePhase,
    check_plan,
    field_limit,
    mix64,
    pack_counter,
    stream_id,
    unpack_counter,
)
from ganscale.train.noise import NoiseSource

# What training really reaches (and the issue asks the scheme to cover)
REALISTIC = {"step": 10**7, "rank": 4096, "micro": 64, "critic": 10, "phase": len(NoisePhase)}


def _unmix64(y: int) -> int:
    """Inverse of the splitmix64 finaliser (xor-shifts and odd multipliers are invertible)."""

    def unshift(v: int, s: int) -> int:
        x = v
        for _ in range(64 // s + 1):
            x = v ^ (x >> s)
        return x & MASK64

    y = unshift(y, 31)
    y = (y * pow(0x94D049BB133111EB, -1, 2**64)) & MASK64
    y = unshift(y, 27)
    y = (y * pow(0xBF58476D1CE4E5B9, -1, 2**64)) & MASK64
    return unshift(y, 30)


def test_fields_are_disjoint_and_hold_the_realistic_ranges():
    # analytically: fields laid end to end from bit 0, 64 bits in all, so distinct field values
    # give distinct words; each realistic range fits its field
    assert sum(w for _, w in FIELDS) == 64
    assert {n for n, _ in FIELDS} == set(REALISTIC)
    for name, top in REALISTIC.items():
        assert top <= field_limit(name), f"{name}: {top} values do not fit {field_limit(name)}"
    # and each field occupies its own bits: the largest value of each, alone, sets only its mask
    masks, shift = [], 0
    for name, width in FIELDS:
        values = {"rank": 0, "step": 0, "phase": 0, "critic": 0, "micro": 0, name: (1 << width) - 1}
        masks.append(pack_counter(**values))
        assert masks[-1] == ((1 << width) - 1) << shift
        shift += width
    assert sum(masks) == MASK64 and all(a & b == 0 for a, b in itertools.combinations(masks, 2))


def test_packing_round_trips_at_the_edges_and_at_random():
    edges = {n: sorted({0, 1, top - 1, field_limit(n) - 1}) for n, top in REALISTIC.items()}
    names = list(edges)
    cases = [dict(zip(names, vals, strict=True)) for vals in itertools.product(*edges.values())]
    rng = random.Random(15)
    cases += [{n: rng.randrange(REALISTIC[n]) for n in names} for _ in range(20_000)]
    words = set()
    for c in cases:
        w = pack_counter(**c)
        assert 0 <= w <= MASK64 and unpack_counter(w) == c  # an inverse exists: injective
        words.add(w)
    assert len(words) == len({tuple(c.values()) for c in cases})


def test_seed_mixing_is_a_bijection_so_stream_ids_never_collide():
    rng = random.Random(7)
    for x in [0, 1, MASK64, 2**63, *(rng.getrandbits(64) for _ in range(2000))]:
        assert _unmix64(mix64(x)) == x
    # a dense block of real draws of one run (both phases, every critic/micro, 2 ranks, 300
    # steps, grad_accum 8, n_critic 3) plus random far-apart ones: all ids distinct
    draws = [
        (r, t, NoisePhase.D, c, m) for r in range(2) for t in range(300) for c in range(3) for m in range(8)
    ] + [(r, t, NoisePhase.G, 0, m) for r in range(2) for t in range(300) for m in range(8)]
    phases = list(NoisePhase)
    for _ in range(20_000):
        r, t = rng.randrange(4096), rng.randrange(10**7)
        draws.append((r, t, rng.choice(phases), rng.randrange(10), rng.randrange(64)))
    draws = list(set(draws))
    for seed in (0, 1, 2**64 - 1):
        ids = {stream_id(seed, *d) for d in draws}
        assert len(ids) == len(draws)


def test_the_old_collision_is_gone():
    """Before: G's micro-batch 1 at step t drew the noise of D's micro-batch 0 at step t + 125."""

    def old(seed, rank, step, phase):
        return (((seed * 1_000_003 + rank) * 1_000_003 + step) * 8 + phase) % 2**64

    t = 40
    assert old(0, 0, t, 1000 + 1) == old(0, 0, t + 125, 1 + 0)  # the bug, as it was
    assert stream_id(0, 0, t, NoisePhase.G, 0, 1) != stream_id(0, 0, t + 125, NoisePhase.D, 0, 0)
    src = NoiseSource(0, 0, 16, 1.0, [3, 4], device=torch.device("cpu"))
    g = src.draw(t, 8, "g", micro=1)
    d = src.draw(t + 125, 8, "d", micro=0)
    assert not torch.equal(g[0], d[0])
    again = src.draw(t, 8, "g", micro=1)  # derived, not carried: a resume draws the same
    assert torch.equal(g[0], again[0]) and torch.equal(g[1], again[1])


@pytest.mark.parametrize(
    "field,value",
    [("step", 2**32), ("step", -1), ("rank", 65536), ("micro", 256), ("critic", 32), ("phase", 8)],
)
def test_out_of_range_values_are_refused(field, value):
    values = {"rank": 0, "step": 0, "phase": 0, "critic": 0, "micro": 0, field: value}
    with pytest.raises(GanscaleError) as e:
        pack_counter(**values)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"noise counter out of range: {field} = {value}, ")


def test_a_plan_that_does_not_fit_is_refused_before_training():
    check_plan(world_size=4096, grad_accum=64, n_critic=10)  # the realistic corner is fine
    with pytest.raises(GanscaleError, match="micro = 256.*lower train.grad_accum"):
        check_plan(world_size=8, grad_accum=257, n_critic=1)
    with pytest.raises(GanscaleError, match="critic = 32.*lower train.n_critic"):
        check_plan(world_size=8, grad_accum=1, n_critic=33)
    with pytest.raises(GanscaleError, match="rank = 65536.*fewer processes"):
        check_plan(world_size=65537, grad_accum=1, n_critic=1)
