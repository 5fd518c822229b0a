"""Source layouts that `ganscale data pack` reads, each turned into records + rejects.

- ``imagefolder`` (Hugging Face's convention): images anywhere under the folder + ``metadata.csv``
  or ``metadata.jsonl`` (a ``file_name`` column, one column per attribute); split folders
  (``train/``, ``test/``, ...) chosen with ``--split``; without a metadata file the class-folder
  names become the attribute ``label`` (see :mod:`ganscale.corpus.labelled`);
- ``labels``: any folder + ``--labels FILE.csv|.jsonl --key-column COL``;
- ``stylegan``: StyleGAN's dataset tool output, images + ``dataset.json``
  ``{"labels": [[file name, class index], ...]}`` -> the attribute ``label``;
- ``hf``: a ``datasets`` dataset (``save_to_disk`` folder, parquet files, or a Hub name), read
  through ``datasets`` (:mod:`ganscale.corpus.hf`);
- ``mlds_extra``: ``images/<id>.<ext>`` + ``tags.csv`` rows ``<id>,<hair> hair <eyes> eyes``;
- ``mlds_faces``: ``<id>.jpg`` (in SRC or SRC/faces) + ``tags_clean.csv`` rows
  ``<id>,<tag>:<count>\\t<tag>:<count>...`` (danbooru tags; hair/eye colours are taken from
  the ``<colour> hair`` / ``<colour> eyes`` tags);
- ``classes``: ``SRC/<class>/<image>``, one attribute ``class``;
- ``plain``: ``SRC/<image>``, unconditional.

Any of the folder layouts may come as a ``.zip`` (read in place, :mod:`ganscale.corpus.tree`).
A label file (``.csv``, ``.jsonl``, ``.tsv``) in the source that the layout does not read is an
error naming it and the flag that would read it. Labels are checked here; images are decoded
(and rejected if unreadable) by the packer.
"""

from __future__ import annotations

import re
from pathlib import Path

from ganscale.corpus import hf
from ganscale.corpus.labelled import (
    STYLEGAN_LABELS,
    scan_imagefolder,
    scan_labels_file,
    scan_stylegan,
    stylegan_labels,
)
from ganscale.corpus.source import METADATA_NAMES, SPLIT_NAMES, Record, Reject, Scan, SourceOptions
from ganscale.corpus.tree import IMAGE_EXTS, Tree
from ganscale.errors import GanscaleError
from ganscale.shardformat.vocab import (
    EYE_COLOURS,
    HAIR_COLOURS,
    MLDS_ATTRIBUTES,
    TagError,
    normalise_words,
    parse_tags,
)

LAYOUTS = ("imagefolder", "labels", "hf", "stylegan", "mlds_extra", "mlds_faces", "classes", "plain")
LABEL_FILE_EXTS = (".csv", ".jsonl", ".tsv")
__all__ = ["IMAGE_EXTS", "LAYOUTS", "Record", "Reject", "Scan", "SourceOptions", "detect_layout", "scan"]


def detect_layout(src: str | Path) -> str:
    """Guess the layout of ``src`` (see module docstring)."""
    if hf.looks_like_hf(Path(src)):
        return "hf"
    return _detect(Tree.open(src))


def _detect(tree: Tree) -> str:
    if tree.exists("tags.csv") and "images" in tree.subfolders():
        return "mlds_extra"
    if tree.exists("tags_clean.csv"):
        return "mlds_faces"
    if any(r.rsplit("/", 1)[-1] in METADATA_NAMES for r in tree.files):
        return "imagefolder"
    if stylegan_labels(tree) is not None:
        return "stylegan"
    if any(d.lower() in SPLIT_NAMES for d in tree.subfolders()):
        return "imagefolder"
    if tree.images_in(""):
        return "plain"
    if any(tree.images_in(d) for d in tree.subfolders()):
        return "classes"
    raise GanscaleError(
        f"no images found in {tree.label}; expected images/ + tags.csv, <id>.jpg + tags_clean.csv, "
        "metadata.csv + images, class sub-folders or a folder of images"
    )


def scan(
    src: str | Path,
    layout: str | None = None,
    unconditional: bool = False,
    options: SourceOptions | None = None,
) -> Scan:
    """Read ``src`` in ``layout`` (detected if None) into records, label rejects and notes."""
    opts = options or SourceOptions(layout=layout, unconditional=unconditional)
    layout = opts.layout
    if layout is not None and layout not in LAYOUTS:
        raise GanscaleError(f"--layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if opts.labels is not None and layout not in (None, "labels"):
        raise GanscaleError(f"--labels is read by --layout labels, not --layout {layout}; drop one of them")
    if opts.min_count < 1:
        raise GanscaleError(f"--min-count {opts.min_count}: must be >= 1")
    if layout == "hf" or (layout is None and opts.labels is None and hf.looks_like_hf(Path(src))):
        return hf.scan_hf(str(src), opts)
    if opts.image_column is not None:
        raise GanscaleError("--image-column is read by --layout hf only; drop it")
    tree = Tree.open(src)
    if layout is None:
        layout = "labels" if opts.labels is not None else _detect(tree)
    if opts.split is not None and layout != "imagefolder":
        raise GanscaleError(f"--split is read by --layout imagefolder, not {layout}; drop it")
    if layout not in ("imagefolder", "labels", "stylegan") and (
        opts.attributes or opts.key_column or opts.min_count > 1
    ):
        raise GanscaleError(
            f"--attributes, --key-column and --min-count apply to label tables (--layout imagefolder "
            f"or --labels), not --layout {layout}"
        )
    if layout in ("imagefolder", "labels"):
        found = scan_imagefolder(tree, opts) if layout == "imagefolder" else scan_labels_file(tree, opts)
    elif layout == "stylegan":
        found = scan_stylegan(tree, opts)
    elif layout == "mlds_extra":
        found = _scan_tagged(tree, layout, tree.images_in("images"), "tags.csv", _extra_row, opts)
    elif layout == "mlds_faces":
        images = tree.images_in("") or tree.images_in("faces")
        found = _scan_tagged(tree, layout, images, "tags_clean.csv", _faces_row, opts)
    elif layout == "classes":
        found = _scan_classes(tree, opts.unconditional)
    else:
        images = tree.images_in("")
        found = Scan(layout, {}, [Record(k, tree.files[r], None) for k, r in images.items()])
    if not opts.unconditional:
        refuse_unused_label_files(tree, found)
    return found


def refuse_unused_label_files(tree: Tree, found: Scan) -> None:
    """A label file in the source that this layout did not read: one line naming it and the flag."""
    if STYLEGAN_LABELS not in found.used and stylegan_labels(tree) is not None:
        raise GanscaleError(
            f"{tree.path(STYLEGAN_LABELS)} holds StyleGAN labels but --layout {found.layout} does not read "
            "them; read them with --layout stylegan (or --unconditional to pack without labels)"
        )
    for rel in tree.files:
        name = rel.rsplit("/", 1)[-1]
        if not name.lower().endswith(LABEL_FILE_EXTS) or rel in found.used or name == "rejects.jsonl":
            continue
        if any(rel.startswith(d.rstrip("/") + "/") for d in found.ignored):
            continue
        where = tree.path(rel)
        if name in METADATA_NAMES:
            if found.layout == "imagefolder":
                fix = "put it beside the images it names (or in the chosen --split folder)"
            else:
                fix = "read it with --layout imagefolder"
        else:
            fix = f"read it with --labels {where} --key-column COLUMN"
        raise GanscaleError(
            f"{where} is present but --layout {found.layout} does not read it; {fix} "
            "(or --unconditional to pack without labels)"
        )


def _read_rows(tree: Tree, rel: str) -> list[str]:
    if not tree.exists(rel):
        raise GanscaleError(f"{tree.path(rel)} not found; --layout needs it")
    return tree.read_text(rel).splitlines()


def _extra_row(rest: str) -> list[int]:
    return parse_tags(rest, MLDS_ATTRIBUTES)


_TAG_COUNT = re.compile(r"^(.*?)(?::\s*(-?\d+(?:\.\d+)?))?\s*$")


def _faces_row(rest: str) -> list[int]:
    """``tag:count<TAB>tag:count...`` -> [hair, eyes] from the ``<colour> hair/eyes`` tags."""
    found: dict[str, set[int]] = {"hair": set(), "eyes": set()}
    items = [t for t in rest.split("\t") if t.strip()]
    if not items:
        raise TagError("no tags", "unparsable_row")
    for item in items:
        if ":" not in item:
            raise TagError(f"tag {item.strip()!r} has no ':<count>'", "unparsable_row")
        tag = item.rsplit(":", 1)[0]
        words = normalise_words(tag)
        if len(words) == 2 and words[1] in found:
            vocab = HAIR_COLOURS if words[1] == "hair" else EYE_COLOURS
            if words[0] in vocab:
                found[words[1]].add(vocab.index(words[0]))
    labels = []
    for attr, vocab in MLDS_ATTRIBUTES.items():
        if len(found[attr]) > 1:
            names = ", ".join(vocab[i] for i in sorted(found[attr]))
            raise TagError(f"two {attr} colours ({names})", "ambiguous_attribute")
        if not found[attr]:
            raise TagError(f"no {attr} colour tag among {len(items)} tags", "missing_attribute")
        labels.append(found[attr].pop())
    return labels


def _scan_tagged(
    tree: Tree, layout: str, images: dict[str, str], csv_rel: str, parse_row, opts: SourceOptions
) -> Scan:
    out = Scan(layout, {} if opts.unconditional else dict(MLDS_ATTRIBUTES), used={csv_rel})
    rows = _read_rows(tree, csv_rel)
    if opts.unconditional:
        out.records = [Record(k, tree.files[r], None) for k, r in images.items()]
        return out
    labelled: dict[str, list[int]] = {}
    for n, row in enumerate(rows, 1):
        if not row.strip():
            continue
        where = f"{csv_rel}:{n}"
        if "," not in row:
            out.rejects.append(Reject("unparsable_row", where, f"no comma in {row[:60]!r}"))
            continue
        rid, rest = row.split(",", 1)
        rid = rid.strip()
        if not rid:
            out.rejects.append(Reject("unparsable_row", where, f"empty id in {row[:60]!r}"))
            continue
        try:
            labels = parse_row(rest)
        except TagError as e:
            out.rejects.append(Reject(e.reason, f"{where} id {rid}", str(e)))
            labelled.setdefault(rid, [])  # the image is accounted for by this reject
            continue
        if rid in labelled:
            out.rejects.append(Reject("duplicate_row", f"{where} id {rid}", "second row for this id"))
            continue
        labelled[rid] = labels
        if rid not in images:
            out.rejects.append(Reject("missing_image", f"{where} id {rid}", f"no image {rid}.* for this row"))
    for rid, rel in images.items():
        labels = labelled.get(rid)
        if labels is None:
            out.rejects.append(
                Reject(
                    "missing_tags",
                    rel,
                    f"no row for id {rid} in {csv_rel} (kept only with --unconditional)",
                )
            )
        elif labels:
            out.records.append(Record(rid, tree.files[rel], dict(zip(MLDS_ATTRIBUTES, labels, strict=True))))
    return out


def _scan_classes(tree: Tree, unconditional: bool) -> Scan:
    folders = {d: tree.images_in(d) for d in tree.subfolders()}
    classes = [name for name, imgs in folders.items() if imgs]
    out = Scan("classes", {} if unconditional else {"class": classes})
    for ci, name in enumerate(classes):
        for stem, rel in folders[name].items():
            out.records.append(
                Record(f"{name}/{stem}", tree.files[rel], None if unconditional else {"class": ci})
            )
    return out
