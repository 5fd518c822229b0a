"""Layouts labelled by a table: ``imagefolder`` (``metadata.csv``/``.jsonl``) and ``--labels FILE``.

``imagefolder`` follows Hugging Face's convention: ``file_name`` is relative to the folder of
its metadata file; split folders (``train/``, ``test/``...) are chosen with ``--split`` (default
``train``); without a metadata file an image's folder name is its attribute ``label``.

``--labels FILE --key-column COL`` labels any folder: COL names an image by its path under the
source (``a/b.png``), its file name (``b.png``) or its stem (``b``) when that is unique.
"""

from __future__ import annotations

import json
import posixpath
from collections import defaultdict
from pathlib import Path

from ganscale.corpus.source import METADATA_NAMES, SPLIT_NAMES, Record, Reject, Scan, SourceOptions
from ganscale.corpus.tables import Row, Table, choose_attributes, read_table
from ganscale.corpus.tree import Tree, is_image
from ganscale.errors import GanscaleError


def _source_id(rel: str) -> str:
    return posixpath.splitext(rel)[0]


def scan_imagefolder(tree: Tree, opts: SourceOptions) -> Scan:
    root, notes, ignored = _split_root(tree, opts.split)
    images = [r for r in tree.under(root) if is_image(r)]
    metas = [r for r in tree.under(root) if r.rsplit("/", 1)[-1] in METADATA_NAMES]
    key_column = opts.key_column or "file_name"
    if opts.unconditional:
        found = Scan("imagefolder", {}, [Record(_source_id(r), tree.files[r], None) for r in images])
    elif metas:
        found = _scan_metadata(tree, root, images, metas, key_column, opts)
    else:
        if opts.attributes or opts.min_count > 1 or opts.key_column:
            raise GanscaleError(
                f"--attributes, --key-column and --min-count read a metadata file; {tree.label} has none "
                "under the split read (class folders give the one attribute 'label')"
            )
        found = _scan_label_folders(tree, root, images)
    found.notes[:0] = notes
    found.ignored |= ignored
    return found


def _split_root(tree: Tree, split: str | None) -> tuple[str, list[str], set[str]]:
    """The folder read (a split folder or the root), notes, and the folders left unread."""
    top = tree.subfolders()
    splits = [d for d in top if d.lower() in SPLIT_NAMES]
    if not splits:
        if split is not None:
            raise GanscaleError(
                f"--split {split}: {tree.label} has no split folders ({', '.join(SPLIT_NAMES[:3])}, ...)"
            )
        return "", [], set()
    if split is None:
        if "train" not in splits:
            raise GanscaleError(
                f"{tree.label} has split folders {', '.join(splits)} and none is 'train'; choose with --split"
            )
        split = "train"
    if split not in splits:
        raise GanscaleError(f"--split {split}: {tree.label} has split folders {', '.join(splits)}")
    notes = [f"split {split}"]
    for d in top:
        if d != split:
            n = sum(1 for r in tree.under(d) if is_image(r))
            notes.append(f"not read: {d}/ ({n} images; only --split {split} is packed)")
    return split, notes, set(top) - {split}


def _scan_label_folders(tree: Tree, root: str, images: list[str]) -> Scan:
    """No metadata: the folder an image is in (below the split root) is its ``label``."""
    prefix = root + "/" if root else ""
    if all("/" not in r[len(prefix) :] for r in images):
        out = Scan("imagefolder", {}, [Record(_source_id(r), tree.files[r], None) for r in images])
        out.notes.append("no metadata file and no class folders: unlabelled")
        return out
    by_label: dict[str, list[str]] = defaultdict(list)
    out = Scan("imagefolder", {})
    for r in images:
        rest = r[len(prefix) :]
        if "/" not in rest:
            out.rejects.append(Reject("missing_label", r, "beside the class folders, in none of them"))
        else:
            by_label[posixpath.basename(posixpath.dirname(rest))].append(r)
    labels = sorted(by_label, key=lambda v: (v.casefold(), v))
    out.attributes = {"label": labels}
    out.notes.append(f"attributes: label (class folder names, {len(labels)} values)")
    for i, lab in enumerate(labels):
        out.records += [Record(_source_id(r), tree.files[r], {"label": i}) for r in by_label[lab]]
    return out


def _scan_metadata(
    tree: Tree, root: str, images: list[str], metas: list[str], key_column: str, opts: SourceOptions
) -> Scan:
    folders = defaultdict(list)
    for m in metas:
        folders[posixpath.dirname(m)].append(m)
    for ms in folders.values():
        if len(ms) > 1:
            raise GanscaleError(
                f"{tree.path(ms[0])} and {tree.path(ms[1])}: one metadata file per folder; remove one"
            )
    tables = []
    for m in metas:
        t = read_table(tree.read_text(m), m, key_column)
        base = posixpath.dirname(m)
        for row in t.rows:  # file_name is relative to the metadata file's folder
            row.key = (
                posixpath.normpath(posixpath.join(base, row.key)) if base else posixpath.normpath(row.key)
            )
        tables.append(t)
    table = _merge(tables, " + ".join(metas))
    known = set(images)
    found = _label_rows(
        tree, "imagefolder", table, images, lambda row: row.key if row.key in known else None, opts
    )
    found.used |= set(metas)
    found.notes.insert(0, f"labels from {', '.join(metas)} ({key_column} + {len(table.columns)} columns)")
    return found


def _merge(tables: list[Table], name: str) -> Table:
    if len(tables) == 1:
        return tables[0]
    out = Table(name, list(dict.fromkeys(c for t in tables for c in t.columns)))
    for t in tables:
        out.rows += t.rows
        out.bad_rows += t.bad_rows
    return out


def scan_labels_file(tree: Tree, opts: SourceOptions) -> Scan:
    path = Path(opts.labels) if opts.labels is not None else None
    if path is None:
        raise GanscaleError("--layout labels needs --labels FILE.csv|.jsonl (and --key-column COL)")
    if not path.is_file():
        inside = str(path) if path.is_absolute() else path.as_posix()
        if not tree.exists(inside):
            raise GanscaleError(f"--labels {path}: no such file")
        text, used = tree.read_text(inside), inside
    else:
        text, used = path.read_text(encoding="utf-8-sig", errors="replace"), _rel_in_tree(tree, path)
    key_column = opts.key_column or "file_name"
    try:
        table = read_table(text, path.name, key_column)
    except GanscaleError as e:
        if opts.key_column is None and "has no column" in str(e):
            raise GanscaleError(
                f"{e}".replace("name the image column", "name the image column (default file_name)")
            ) from None
        raise
    images = [r for r in tree.files if is_image(r)]
    by_name, by_stem = defaultdict(list), defaultdict(list)
    for r in images:
        base = posixpath.basename(r)
        by_name[base].append(r)
        by_stem[posixpath.splitext(base)[0]].append(r)
    known = set(images)

    def resolve(row: Row) -> str | None:
        key = posixpath.normpath(row.key.replace("\\", "/").lstrip("./") or ".")
        if key in known:
            return key
        for index in (by_name, by_stem):
            hits = index.get(posixpath.basename(key), [])
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise _Ambiguous(f"{row.key!r} names {len(hits)} images ({hits[0]}, {hits[1]}, ...)")
        return None

    found = _label_rows(tree, "labels", table, images, resolve, opts)
    if used is not None:
        found.used.add(used)
    found.notes.insert(0, f"labels from {path} ({key_column} + {len(table.columns)} columns)")
    return found


def _rel_in_tree(tree: Tree, path: Path) -> str | None:
    if tree.is_zip:
        return None
    try:
        return path.resolve().relative_to(Path(tree.label).resolve()).as_posix()
    except ValueError:
        return None


class _Ambiguous(Exception):
    pass


def _label_rows(
    tree: Tree, layout: str, table: Table, images: list[str], resolve, opts: SourceOptions
) -> Scan:
    """Match rows to images, choose attributes, label; every row and image kept or rejected."""
    out = Scan(layout, {})
    out.rejects += [Reject("unparsable_row", where, why) for where, why in table.bad_rows]
    matched = Table(table.name, table.columns)
    image_of: list[str] = []
    seen: set[str] = set()
    for row in table.rows:
        try:
            rel = resolve(row)
        except _Ambiguous as e:
            out.rejects.append(Reject("ambiguous_key", row.where, str(e)))
            continue
        if rel is None:
            out.rejects.append(Reject("missing_image", row.where, f"no image {row.key!r} in {tree.label}"))
            continue
        if rel in seen:
            out.rejects.append(Reject("duplicate_row", row.where, f"second row for {rel}"))
            continue
        seen.add(rel)
        matched.rows.append(row)
        image_of.append(rel)
    lab = choose_attributes(matched, opts.attributes, opts.min_count)
    out.attributes, out.notes = lab.attributes, lab.notes
    for i, reason, detail in lab.rejects:
        out.rejects.append(Reject(reason, f"{matched.rows[i].where} {image_of[i]}", detail))
    for i, rel in enumerate(image_of):
        if i in lab.labels:
            out.records.append(Record(_source_id(rel), tree.files[rel], lab.labels[i]))
    for rel in images:
        if rel not in seen:
            out.rejects.append(
                Reject("missing_row", rel, f"no row in {table.name} (kept only with --unconditional)")
            )
    if not out.attributes and out.records:
        raise GanscaleError(
            f"{table.name}: no categorical column to condition on "
            f"(columns: {', '.join(table.columns) or 'none'}); "
            "name them with --attributes, or pack with --unconditional"
        )
    return out


STYLEGAN_LABELS = "dataset.json"
"""StyleGAN's dataset tool: ``{"labels": [["00000/img00000000.png", 6], ...]}`` beside the images."""


def stylegan_labels(tree: Tree) -> list | None:
    """The ``labels`` list of a StyleGAN ``dataset.json`` in the source root (None if absent)."""
    if not tree.exists(STYLEGAN_LABELS):
        return None
    try:
        data = json.loads(tree.read_text(STYLEGAN_LABELS))
    except json.JSONDecodeError:
        return None
    labels = data.get("labels") if isinstance(data, dict) else None
    return labels if isinstance(labels, list) else None


def scan_stylegan(tree: Tree, opts: SourceOptions) -> Scan:
    """StyleGAN's ``dataset.json``: an integer class label per image -> the attribute ``label``."""
    entries = stylegan_labels(tree)
    if entries is None:
        raise GanscaleError(f"{tree.path(STYLEGAN_LABELS)} has no 'labels' list; --layout stylegan needs one")
    images = [r for r in tree.files if is_image(r)]
    if opts.unconditional:
        found = Scan("stylegan", {}, [Record(_source_id(r), tree.files[r], None) for r in images])
        found.used.add(STYLEGAN_LABELS)
        return found
    table = Table(STYLEGAN_LABELS, ["label"])
    for n, entry in enumerate(entries):
        where = f"{STYLEGAN_LABELS} labels[{n}]"
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            table.bad_rows.append((where, f"not [file name, label]: {str(entry)[:60]}"))
            continue
        value = entry[1]
        table.rows.append(Row(where, posixpath.normpath(entry[0]), {"label": value}))
    known = set(images)
    found = _label_rows(
        tree, "stylegan", table, images, lambda row: row.key if row.key in known else None, opts
    )
    found.used.add(STYLEGAN_LABELS)
    found.notes.insert(0, f"labels from {STYLEGAN_LABELS} (StyleGAN dataset tool)")
    return found
