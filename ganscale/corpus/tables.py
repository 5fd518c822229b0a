"""Label tables (``metadata.csv`` / ``.jsonl``, ``--labels FILE``) -> attributes + labels per row.

Every column but the key is a candidate attribute. By default the ones that look categorical
are taken (and the choice is reported); ``--attributes a,b`` names them. Binary columns
(``0/1``, ``-1/1``, ``true/false``, as CelebA's attribute file) become two-valued attributes.
Values are sorted stably (numbers by value, words by text); a row whose label is missing or
unparsable, or names a value seen fewer than ``--min-count`` times, becomes a reject with its
reason. Limits (:data:`MAX_ATTRIBUTES`, :data:`MAX_VALUES`) are refused in one line naming the
column.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ganscale.errors import GanscaleError

MAX_ATTRIBUTES = 16
"""Attributes one corpus may condition on."""
MAX_VALUES = 1000
"""Values one attribute may take."""
MISSING = {"", "nan", "null", "none", "n/a"}
"""Cells read as a missing label (any case)."""
BINARY_SETS = ({"0", "1"}, {"-1", "1"}, {"false", "true"})

_UNPARSABLE = object()


@dataclass
class Row:
    where: str
    """``metadata.csv:12`` (file and line) for rejects."""
    key: str
    values: dict[str, Any]


@dataclass
class Table:
    name: str
    columns: list[str]
    rows: list[Row] = field(default_factory=list)
    bad_rows: list[tuple[str, str]] = field(default_factory=list)
    """(where, why) of rows that could not be read at all."""


def read_table(text: str, name: str, key_column: str) -> Table:
    """Parse a ``.csv`` (header row) or ``.jsonl`` (one object a line) label table."""
    if name.lower().endswith(".jsonl"):
        return _read_jsonl(text, name, key_column)
    if name.lower().endswith((".csv", ".tsv")):
        return _read_csv(text, name, key_column)
    raise GanscaleError(f"labels file {name}: use a .csv (header row) or .jsonl file")


def _read_csv(text: str, name: str, key_column: str) -> Table:
    delimiter = "\t" if name.lower().endswith(".tsv") else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = next(reader, None)
    if not header:
        raise GanscaleError(f"{name} is empty; it needs a header row with {key_column!r} and label columns")
    header = [h.strip() for h in header]
    _check_key(header, name, key_column)
    table = Table(name, [h for h in header if h != key_column])
    for row in reader:
        where = f"{name}:{reader.line_num}"
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            table.bad_rows.append((where, f"{len(row)} fields, the header has {len(header)}"))
            continue
        values = dict(zip(header, row, strict=True))
        key = values.pop(key_column).strip()
        if not key:
            table.bad_rows.append((where, f"empty {key_column}"))
            continue
        table.rows.append(Row(where, key, values))
    return table


def _read_jsonl(text: str, name: str, key_column: str) -> Table:
    columns: dict[str, None] = {}
    rows = []
    bad = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{name}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append((where, f"not JSON ({e.msg})"))
            continue
        if not isinstance(obj, dict):
            bad.append((where, "not a JSON object"))
            continue
        key = obj.pop(key_column, None)
        if not isinstance(key, str) or not key.strip():
            bad.append((where, f"no {key_column!r} string"))
            continue
        columns.update(dict.fromkeys(obj))
        rows.append(Row(where, key.strip(), obj))
    if not rows and not bad:
        raise GanscaleError(f"{name} is empty; it needs one JSON object a line with {key_column!r}")
    if not rows:
        _check_key([], name, key_column)
    return Table(name, list(columns), rows, bad)


def _check_key(header: list[str], name: str, key_column: str) -> None:
    if key_column not in header:
        raise GanscaleError(
            f"{name} has no column {key_column!r} (columns: {', '.join(header) or 'none'}); "
            "name the image column with --key-column"
        )


def cell(value: Any) -> str | None | object:
    """A label cell as text; None when missing; ``_UNPARSABLE`` for lists, objects, fractions."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else _UNPARSABLE
    if isinstance(value, str):
        v = value.strip()
        if v.lower() in MISSING:
            return None
        return v.lower() if v.lower() in ("true", "false") else v
    return _UNPARSABLE


def _is_int(v: str) -> bool:
    try:
        int(v)
    except ValueError:
        return False
    return True


def _is_fraction(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return not _is_int(v)


def sort_values(values: set[str] | list[str]) -> list[str]:
    """Stable value order: all integers -> by value; otherwise by text (case-folded, then as is)."""
    vals = set(values)
    if vals and all(_is_int(v) for v in vals):
        return sorted(vals, key=lambda v: (int(v), v))
    return sorted(vals, key=lambda v: (v.casefold(), v))


def why_not_categorical(values: list[str], rows: int) -> str | None:
    """None for a categorical column; else why the default choice leaves it out."""
    distinct = set(values)
    if not distinct:
        return "empty"
    if len(distinct) == 1:
        return f"one value ({next(iter(distinct))!r})"
    if any(_is_fraction(v) for v in distinct):
        return "numbers with fractions, not categories"
    if len(distinct) > MAX_VALUES:
        return f"{len(distinct)} distinct values, more than {MAX_VALUES}"
    if len(distinct) == len(values) and rows >= 10:
        return f"a different value in every row ({len(distinct)}): an identifier or free text"
    return None


@dataclass
class Labelled:
    """The attributes chosen from a table and each row's labels (or its reject)."""

    attributes: dict[str, list[str]]
    labels: dict[int, dict[str, int]]
    """Row index -> {attr: value index} for the rows kept."""
    rejects: list[tuple[int, str, str]]
    """(row index, reason, detail)."""
    notes: list[str]


def choose_attributes(
    table: Table,
    chosen: list[str] | None,
    min_count: int = 1,
    vocab: dict[str, list[str]] | None = None,
) -> Labelled:
    """Pick the attribute columns and label every row (see the module docstring).

    ``vocab`` gives a column's values in a fixed order (``datasets`` ClassLabel names) instead
    of sorting them.
    """
    vocab = vocab or {}
    cells = {c: [cell(r.values.get(c)) for r in table.rows] for c in table.columns}
    notes: list[str] = []
    if chosen is not None:
        unknown = [c for c in chosen if c not in cells]
        if unknown:
            raise GanscaleError(
                f"--attributes: {table.name} has no column {unknown[0]!r}; "
                f"its columns: {', '.join(table.columns) or 'none'}"
            )
        columns = list(dict.fromkeys(chosen))
        for c in columns:
            seen = [v for v in cells[c] if isinstance(v, str)]
            why = why_not_categorical(seen, len(table.rows))
            if c not in vocab and why and why.startswith(("empty", "numbers", f"{len(set(seen))} distinct")):
                raise GanscaleError(f"--attributes: column {c!r} of {table.name} is not categorical: {why}")
            if why:  # named on purpose: kept (a one-valued or per-row attribute), and said so
                notes.append(f"attribute {c}: {why}")
    else:
        columns, left_out = [], []
        for c in table.columns:
            seen = [v for v in cells[c] if isinstance(v, str)]
            why = None if c in vocab else why_not_categorical(seen, len(table.rows))
            if why is None:
                columns.append(c)
            else:
                left_out.append(f"{c} ({why})")
        how = "every categorical column; choose with --attributes"
        notes.append(f"attributes: {', '.join(columns) or 'none'} ({how})")
        if left_out:
            notes.append("columns not used: " + "; ".join(left_out))
    if len(columns) > MAX_ATTRIBUTES:
        raise GanscaleError(
            f"{table.name}: {len(columns)} attribute columns, at most {MAX_ATTRIBUTES} "
            f"(column {columns[MAX_ATTRIBUTES]!r} is one too many); choose with --attributes"
        )
    rejects: list[tuple[int, str, str]] = []
    kept: dict[int, dict[str, str]] = {}
    for i, _row in enumerate(table.rows):
        vals, bad = {}, None
        for c in columns:
            v = cells[c][i]
            if v is None:
                bad = ("missing_label", f"column {c!r} is empty")
            elif v is _UNPARSABLE:
                bad = ("unparsable_label", f"column {c!r}: {str(table.rows[i].values.get(c))[:60]!r}")
            elif c in vocab and v not in vocab[c]:
                bad = ("unknown_attribute", f"column {c!r}: {v!r} is not one of its names")
            else:
                vals[c] = v
                continue
            break
        if bad:
            rejects.append((i, *bad))
        else:
            kept[i] = vals
    while min_count > 1:  # a row dropped for one rare value can make another value rare
        counts = {c: Counter(v[c] for v in kept.values()) for c in columns}
        rare = [(i, c, v[c]) for i, v in kept.items() for c in columns if counts[c][v[c]] < min_count]
        if not rare:
            break
        for i, c, val in rare:
            if i in kept:
                del kept[i]
                rejects.append(
                    (i, "rare_value", f"{c}={val!r} seen {counts[c][val]} times, --min-count {min_count}")
                )
    attributes: dict[str, list[str]] = {}
    for c in columns:
        present = {v[c] for v in kept.values()}
        values = [v for v in vocab[c] if v in present] if c in vocab else sort_values(present)
        if len(values) > MAX_VALUES:
            raise GanscaleError(
                f"column {c!r} of {table.name} has {len(values)} values, at most {MAX_VALUES} per attribute; "
                "leave it out with --attributes or merge values"
            )
        attributes[c] = values
    index = {c: {v: k for k, v in enumerate(vals)} for c, vals in attributes.items()}
    labels = {i: {c: index[c][v[c]] for c in columns} for i, v in kept.items()}
    rejects.sort()
    return Labelled(attributes, labels, rejects, notes)
