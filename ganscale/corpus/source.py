"""What a source layout scan yields: records to pack, rejects, notes; and the source flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ganscale.corpus.tree import ZipMember

SPLIT_NAMES = ("train", "test", "validation", "valid", "val", "dev", "eval", "evaluation", "training")
METADATA_NAMES = ("metadata.csv", "metadata.jsonl")

ImageRef = Path | ZipMember | object
"""A file, a zip member or anything with ``read() -> bytes`` (a ``datasets`` row's image)."""


@dataclass
class Record:
    """One image to pack: where it is and its labels (None = unlabelled)."""

    source_id: str
    path: ImageRef
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
    notes: list[str] = field(default_factory=list)
    """What was read and chosen, for the user (printed by `data pack`)."""
    used: set[str] = field(default_factory=set)
    """Label files (tree paths) this scan read."""
    ignored: set[str] = field(default_factory=set)
    """Folders deliberately not read (other splits), reported in ``notes``."""


@dataclass
class SourceOptions:
    """`data pack`'s source flags."""

    layout: str | None = None
    unconditional: bool = False
    split: str | None = None
    labels: Path | None = None
    key_column: str | None = None
    attributes: list[str] | None = None
    min_count: int = 1
    image_column: str | None = None
