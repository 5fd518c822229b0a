"""The attribute vocabulary of the MLDS anime-face corpus and the parser for tag text.

``parse_tags("aqua hair orange eyes", MLDS_ATTRIBUTES) -> [0, 5]``: one index per attribute,
in the attributes' order. Any case and spacing is accepted; anything else is a one-line
:class:`GanscaleError` that lists the valid names.
"""

from __future__ import annotations

import re

from ganscale.errors import GanscaleError

HAIR_COLOURS: list[str] = [
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
EYE_COLOURS: list[str] = [
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
MLDS_ATTRIBUTES: dict[str, list[str]] = {"hair": HAIR_COLOURS, "eyes": EYE_COLOURS}

# Spellings seen in danbooru tags that mean a vocabulary word (normalised, not rejected).
ALIASES: dict[str, str] = {"grey": "gray", "blond": "blonde", "eye": "eyes"}


class TagError(GanscaleError):
    """A tag text that does not name exactly one known value per attribute.

    ``reason`` is one of: unknown_attribute, ambiguous_attribute, missing_attribute, unparsable_row.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


_WORD = re.compile(r"[a-z0-9]+")


def normalise_words(text: str) -> list[str]:
    """Lower-case words of ``text`` (underscores, hyphens, odd spacing are separators), aliased."""
    words = _WORD.findall(str(text).lower().replace("_", " "))
    return [ALIASES.get(w, w) for w in words]


def _short(text: str, limit: int = 80) -> str:
    one_line = " ".join(str(text).split())
    return one_line if len(one_line) <= limit else one_line[: limit - 3] + "..."


def parse_tags(text: str, attributes: dict[str, list[str]]) -> list[int]:
    """Parse ``"<value> <attribute> <value> <attribute> ..."`` into one index per attribute.

    Raises :class:`GanscaleError` (one line, listing the valid names) for an unknown value,
    a missing attribute, two values for one attribute, or words that are not ``value attr``
    pairs. Never raises anything else.
    """
    q = '"' + _short(text) + '"'
    names = list(attributes)
    if not names:
        raise TagError(f"--tags {q}: this corpus is unconditional; sample without --tags", "unparsable_row")
    words = normalise_words(text)
    vocab = {a: [v.lower() for v in values] for a, values in attributes.items()}
    # matched as normalised words, so "animals-nature" / "Skin_Tone" read like what was written
    keys = {a: [" ".join(normalise_words(v)) for v in values] for a, values in attributes.items()}
    attr_words = sorted(((tuple(normalise_words(a)), a) for a in names), key=lambda t: -len(t[0]))
    found: dict[str, int] = {}
    pending: list[str] = []
    pos = 0
    while pos < len(words):
        attr = next((a for w, a in attr_words if w and tuple(words[pos : pos + len(w)]) == w), None)
        if attr is None:
            pending.append(words[pos])
            pos += 1
            continue
        pos += len(normalise_words(attr))
        label = "colour" if attr in ("hair", "eyes") else "value"
        if not pending:
            raise TagError(
                f"no {attr} {label} before {attr!r} in --tags {q}; valid: {', '.join(vocab[attr])}",
                "unparsable_row",
            )
        value = " ".join(pending)
        pending = []
        if value not in keys[attr]:
            raise TagError(
                f"unknown {attr} {label} {value!r} in --tags {q}; valid: {', '.join(vocab[attr])}",
                "unknown_attribute",
            )
        if attr in found:
            raise TagError(
                f"two {attr} {label}s in --tags {q}; give exactly one of: {', '.join(vocab[attr])}",
                "ambiguous_attribute",
            )
        found[attr] = keys[attr].index(value)
    if pending:
        raise TagError(
            f"{' '.join(pending)!r} is not followed by an attribute name in --tags "
            f"{q}; write e.g. {_example(attributes)!r}",
            "unparsable_row",
        )
    missing = [a for a in names if a not in found]
    if missing:
        a = missing[0]
        raise TagError(
            f"no {a} in --tags {q}; add one of: {', '.join(vocab[a])} (e.g. {_example(attributes)!r})",
            "missing_attribute",
        )
    return [found[a] for a in names]


def _example(attributes: dict[str, list[str]]) -> str:
    return " ".join(f"{values[0]} {attr}" for attr, values in attributes.items() if values)


def format_tags(indices: list[int], attributes: dict[str, list[str]]) -> str:
    """Inverse of :func:`parse_tags`; -1 (unknown) is written as ``?``."""
    parts = []
    for (attr, values), i in zip(attributes.items(), indices, strict=False):
        parts.append(f"{values[i] if 0 <= i < len(values) else '?'} {attr}")
    return " ".join(parts)
