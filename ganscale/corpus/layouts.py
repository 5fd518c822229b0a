"""Source layouts that `ganscale data pack` reads, each turned into records + rejects.

- ``mlds_extra``: ``images/<id>.<ext>`` + ``tags.csv`` rows ``<id>,<hair> hair <eyes> eyes``;
- ``mlds_faces``: ``<id>.jpg`` (in SRC or SRC/faces) + ``tags_clean.csv`` rows
  ``<id>,<tag>:<count>\\t<tag>:<count>...`` (danbooru tags; hair/eye colours are taken from
  the ``<colour> hair`` / ``<colour> eyes`` tags);
- ``classes``: ``SRC/<class>/<image>``, one attribute ``class``;
- ``plain``: ``SRC/<image>``, unconditional.

Labels are checked here; images are decoded (and rejected if unreadable) by the packer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ganscale.corpus.vocab import (
    EYE_COLOURS,
    HAIR_COLOURS,
    MLDS_ATTRIBUTES,
    TagError,
    normalise_words,
    parse_tags,
)
from ganscale.errors import GanscaleError

LAYOUTS = ("mlds_extra", "mlds_faces", "classes", "plain")
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class Record:
    """One image to pack: where it is and its labels (None = unlabelled)."""

    source_id: str
    path: Path
    labels: dict[str, int] | None


@dataclass
class Reject:
    reason: str
    item: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "item": self.item, "detail": self.detail}


@dataclass
class Scan:
    layout: str
    attributes: dict[str, list[str]]
    records: list[Record] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def _images_in(folder: Path) -> dict[str, Path]:
    """stem -> path of the image files directly in ``folder`` (sorted, first extension wins)."""
    out: dict[str, Path] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."):
                out.setdefault(p.stem, p)
    return out


def detect_layout(src: Path) -> str:
    """Guess the layout of ``src`` (see module docstring)."""
    if not src.is_dir():
        raise GanscaleError(f"{src} is not a folder; pass a folder of images (or MLDS images/ + tags.csv)")
    if (src / "tags.csv").is_file() and (src / "images").is_dir():
        return "mlds_extra"
    if (src / "tags_clean.csv").is_file():
        return "mlds_faces"
    if _images_in(src):
        return "plain"
    if any(_images_in(d) for d in src.iterdir() if d.is_dir() and not d.name.startswith(".")):
        return "classes"
    raise GanscaleError(
        f"no images found in {src}; expected images/ + tags.csv, <id>.jpg + tags_clean.csv, "
        "class sub-folders or a folder of images"
    )


def scan(src: str | Path, layout: str | None = None, unconditional: bool = False) -> Scan:
    """Read ``src`` in ``layout`` (detected if None) into records and label rejects."""
    src = Path(src)
    layout = layout or detect_layout(src)
    if layout not in LAYOUTS:
        raise GanscaleError(f"--layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if layout == "mlds_extra":
        return _scan_tagged(
            src, layout, _images_in(src / "images"), src / "tags.csv", _extra_row, unconditional
        )
    if layout == "mlds_faces":
        images = _images_in(src) or _images_in(src / "faces")
        return _scan_tagged(src, layout, images, src / "tags_clean.csv", _faces_row, unconditional)
    if layout == "classes":
        return _scan_classes(src, unconditional)
    return Scan(layout, {}, [Record(k, p, None) for k, p in _images_in(src).items()])


def _read_rows(csv_path: Path) -> list[str]:
    if not csv_path.is_file():
        raise GanscaleError(f"{csv_path} not found; --layout needs it")
    return csv_path.read_text(encoding="utf-8", errors="replace").splitlines()


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
    src: Path, layout: str, images: dict[str, Path], csv_path: Path, parse_row, unconditional: bool
) -> Scan:
    out = Scan(layout, {} if unconditional else dict(MLDS_ATTRIBUTES))
    rows = _read_rows(csv_path)
    if unconditional:
        out.records = [Record(k, p, None) for k, p in images.items()]
        return out
    labelled: dict[str, list[int]] = {}
    for n, row in enumerate(rows, 1):
        if not row.strip():
            continue
        where = f"{csv_path.name}:{n}"
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
    for rid, path in images.items():
        labels = labelled.get(rid)
        if labels is None:
            out.rejects.append(
                Reject(
                    "missing_tags",
                    str(path.relative_to(src)),
                    f"no row for id {rid} in {csv_path.name} (kept only with --unconditional)",
                )
            )
        elif labels:
            out.records.append(Record(rid, path, dict(zip(MLDS_ATTRIBUTES, labels, strict=True))))
    return out


def _scan_classes(src: Path, unconditional: bool) -> Scan:
    folders = {
        d.name: _images_in(d) for d in sorted(src.iterdir()) if d.is_dir() and not d.name.startswith(".")
    }
    classes = [name for name, imgs in folders.items() if imgs]
    out = Scan("classes", {} if unconditional else {"class": classes})
    for ci, name in enumerate(classes):
        for stem, path in folders[name].items():
            out.records.append(Record(f"{name}/{stem}", path, None if unconditional else {"class": ci}))
    return out
