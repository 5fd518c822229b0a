"""Bad tag input, fuzzed: `--tags` strings, tags.csv rows and tags_clean.csv rows never crash
(a one-line TagError / GanscaleError, or a reject counted by the scan)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from faultlib import FuzzTally
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ganscale.corpus.layouts import _extra_row, _faces_row, scan
from ganscale.errors import GanscaleError
from ganscale.outputs.latents import condition_labels, parse_conditions
from ganscale.shardformat.vocab import (
    EYE_COLOURS,
    HAIR_COLOURS,
    MLDS_ATTRIBUTES,
    TagError,
    format_tags,
    parse_tags,
)

pytestmark = pytest.mark.faults

WORDS = [
    *HAIR_COLOURS,
    *EYE_COLOURS,
    "hair",
    "eyes",
    "eye",
    "grey",
    "blond",
    "long",
    "_",
    "-",
    ":",
    "\t",
    ",",
    "\n",
]
tag_text = st.one_of(
    st.text(max_size=60),
    st.lists(st.sampled_from(WORDS), max_size=8).map(" ".join),
    st.lists(st.sampled_from(WORDS), max_size=8).map("".join),
)
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_tally = FuzzTally()


@FUZZ
@given(text=tag_text)
def test_parse_tags_never_crashes(text):
    with _tally.example() as seen:
        try:
            idx = parse_tags(text, MLDS_ATTRIBUTES)
        except TagError as e:
            assert "\n" not in str(e) and e.reason
            seen["tags refused"] += 1
            return
        assert len(idx) == 2 and 0 <= idx[0] < len(HAIR_COLOURS) and 0 <= idx[1] < len(EYE_COLOURS)
        assert parse_tags(format_tags(idx, MLDS_ATTRIBUTES), MLDS_ATTRIBUTES) == idx
        seen["tags parsed"] += 1


@FUZZ
@given(text=tag_text)
def test_sample_tags_option_never_crashes(text):
    meta = {"attributes": MLDS_ATTRIBUTES}
    with _tally.example() as seen:
        try:
            conditions = parse_conditions(text, meta)
            labels = condition_labels(conditions, MLDS_ATTRIBUTES)
        except GanscaleError as e:
            assert "\n" not in str(e)
            seen["--tags refused"] += 1
            return
        assert labels.shape == (len(conditions), 2)
        seen["--tags parsed"] += 1


@FUZZ
@given(
    rest=st.one_of(
        tag_text,
        st.lists(
            st.tuples(tag_text, st.one_of(st.integers(-5, 10**6).map(str), st.text(max_size=4))), max_size=6
        ).map(lambda items: "\t".join(f"{t}:{c}" for t, c in items)),
    )
)
def test_csv_row_parsers_never_crash(rest):
    with _tally.example() as seen:
        for parse in (_extra_row, _faces_row):
            try:
                labels = parse(rest)
            except TagError as e:
                assert e.reason in (
                    "unknown_attribute",
                    "ambiguous_attribute",
                    "missing_attribute",
                    "unparsable_row",
                )
                continue
            assert len(labels) == 2
        seen["csv rows"] += 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400), kind=st.sampled_from(["tags.csv", "tags_clean.csv"]))
def test_scan_of_garbage_csv_counts_rejects(tmp_path, data, kind):
    from PIL import Image

    with _tally.example() as seen:
        src = Path(tempfile.mkdtemp(dir=tmp_path))  # fresh per example: one csv kind per source
        images = src / "images" if kind == "tags.csv" else src
        images.mkdir(parents=True, exist_ok=True)
        for i in range(3):
            Image.new("RGB", (4, 4)).save(images / f"{i}.png")
        (src / kind).write_bytes(data)
        result = scan(src)
        assert len(result.records) + len(result.rejects) >= 3  # every image is kept or accounted for
        seen["garbage csv scans"] += 1


def test_fuzz_tags_summary():
    """The fuzz above ran and every input was parsed, refused in one line, or counted as a
    reject: the count of anything else (a crash) is asserted, not assumed."""
    _tally.summary(
        "fuzz: --tags, tags.csv rows, scans",
        ", ".join(f"{v} {k}" for k, v in sorted(_tally.outcomes.items())),
        at_least=100,
    )
