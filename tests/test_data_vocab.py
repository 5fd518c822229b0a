"""parse_tags: the words users type for conditions, and never a crash for any string."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ganscale.errors import GanscaleError
from ganscale.shardformat.vocab import EYE_COLOURS, HAIR_COLOURS, MLDS_ATTRIBUTES, format_tags, parse_tags


def test_mlds_vocabulary_order():
    assert HAIR_COLOURS == [
        "aqua",
        "black",
        "blonde",
        "blue",
        "brown",
        "gray",
        "green",
        "orange",
        "pink",
        "purple",
        "red",
        "white",
    ]
    assert EYE_COLOURS == [
        "aqua",
        "black",
        "blue",
        "brown",
        "green",
        "orange",
        "pink",
        "purple",
        "red",
        "yellow",
    ]
    assert list(MLDS_ATTRIBUTES) == ["hair", "eyes"]


@pytest.mark.parametrize(
    "text",
    [
        "aqua hair orange eyes",
        "  AQUA   Hair\torange EYES ",
        "orange eyes aqua hair",
        "aqua_hair orange_eyes",
    ],
)
def test_parse_any_case_spacing_order(text):
    assert parse_tags(text, MLDS_ATTRIBUTES) == [0, 5]


def test_aliases_normalised():
    assert parse_tags("grey hair blond eyes".replace("blond eyes", "blue eyes"), MLDS_ATTRIBUTES) == [5, 2]
    assert parse_tags("blond hair red eyes", MLDS_ATTRIBUTES) == [2, 8]


@pytest.mark.parametrize(
    "text, words",
    [
        (
            "teal hair blue eyes",
            ["unknown hair colour 'teal'", '"teal hair blue eyes"', "valid: aqua, black"],
        ),
        ("red hair", ["no eyes", "yellow"]),
        ("red hair blue hair blue eyes", ["two hair colours"]),
        ("", ["no hair"]),
        ("blue", ["not followed by an attribute"]),
    ],
)
def test_errors_are_one_line_and_name_valid_values(text, words):
    with pytest.raises(GanscaleError) as e:
        parse_tags(text, MLDS_ATTRIBUTES)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_format_round_trip():
    for h in range(len(HAIR_COLOURS)):
        for e in range(len(EYE_COLOURS)):
            assert parse_tags(format_tags([h, e], MLDS_ATTRIBUTES), MLDS_ATTRIBUTES) == [h, e]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_fuzz_never_other_exception(text):
    try:
        out = parse_tags(text, MLDS_ATTRIBUTES)
    except GanscaleError as e:
        assert "\n" not in str(e)
    else:
        assert len(out) == 2 and 0 <= out[0] < 12 and 0 <= out[1] < 10


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(HAIR_COLOURS + EYE_COLOURS + ["hair", "eyes", "HAIR", " ", "_", "x"]), max_size=6
    )
)
def test_fuzz_vocabulary_words(words):
    text = " ".join(words)
    try:
        hair, eyes = parse_tags(text, MLDS_ATTRIBUTES)
    except GanscaleError as e:
        assert (
            "valid" in str(e) or "not followed" in str(e) or "add one of" in str(e) or "exactly one" in str(e)
        )
    else:  # accepted: the text really names that hair and those eyes
        assert f"{HAIR_COLOURS[hair]} hair" in " ".join(text.lower().replace("_", " ").split())
