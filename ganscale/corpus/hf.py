"""``--layout hf``: a Hugging Face ``datasets`` dataset, read through ``datasets`` itself.

SRC is a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``--split``
picks a split of a DatasetDict), a ``.parquet`` file or a folder of them, or a Hub dataset name
(``load_dataset(name, split=...)``, where the network allows). The image column is the one
``Image`` feature (or ``--image-column``); ``ClassLabel`` features keep their names, in their
order; other columns go through the same categorical choice as a metadata table
(:mod:`ganscale.corpus.tables`). Needs the optional extra: ``pip install 'ganscale[hf]'``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ganscale.corpus.source import Record, Reject, Scan, SourceOptions
from ganscale.corpus.tables import Row, Table, choose_attributes
from ganscale.errors import GanscaleError


def looks_like_hf(src: Path) -> bool:
    """A ``save_to_disk`` folder, a parquet file, or a folder of parquet files only."""
    if src.is_file():
        return src.suffix.lower() == ".parquet"
    if not src.is_dir():
        return False
    if (src / "dataset_dict.json").is_file() or (
        (src / "state.json").is_file() and (src / "dataset_info.json").is_file()
    ):
        return True
    seen = False
    for p in src.rglob("*"):  # stops at the first file that is not parquet
        if p.name.startswith(".") or p.name == "README.md" or not p.is_file():
            continue
        if p.suffix.lower() != ".parquet":
            return False
        seen = True
    return seen


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise GanscaleError(
            "--layout hf reads through the `datasets` library, which is not installed; "
            "pip install 'ganscale[hf]' (or pip install datasets)"
        ) from None
    return datasets


def _load(src: str, split: str | None) -> Any:
    datasets = _datasets()
    path = Path(src)
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            ds = datasets.load_from_disk(str(path))
        elif path.exists():
            files = [str(path)] if path.is_file() else sorted(str(p) for p in path.rglob("*.parquet"))
            ds = datasets.load_dataset("parquet", data_files=files, split=split or "train")
        else:  # a Hub name: the same call, where the network allows
            ds = datasets.load_dataset(src, split=split or "train")
    except GanscaleError:
        raise
    except Exception as e:  # datasets raises many types (missing files, network, formats)
        msg = " ".join(str(e).split())[:200]
        raise GanscaleError(
            f"--layout hf: cannot load {src} with datasets ({type(e).__name__}: {msg})"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        chosen = split or ("train" if "train" in ds else (splits[0] if len(splits) == 1 else None))
        if chosen is None or chosen not in ds:
            raise GanscaleError(f"{src} has splits {', '.join(splits)}; choose one with --split")
        ds = ds[chosen]
    return ds


@dataclass(frozen=True)
class HFImage:
    """The image of one row, read on demand (encoded bytes, or the file it points at)."""

    ds: Any
    index: int
    column: str

    def read(self) -> bytes:
        value = self.ds[self.index][self.column]
        if value is None:
            raise ValueError(f"row {self.index}: no image")
        if value.get("bytes"):
            return value["bytes"]
        return Path(value["path"]).read_bytes()

    def __str__(self) -> str:
        return f"row {self.index}"


def scan_hf(src: str, opts: SourceOptions) -> Scan:
    datasets = _datasets()
    ds = _load(src, opts.split)
    features = ds.features
    images = [c for c, f in features.items() if isinstance(f, datasets.Image)]
    column = opts.image_column
    if column is None:
        if len(images) != 1:
            what = f"image columns {', '.join(images)}" if images else "no Image column"
            raise GanscaleError(
                f"{src} has {what} (columns: {', '.join(features)}); name one with --image-column"
            )
        column = images[0]
    elif column not in features:
        raise GanscaleError(f"--image-column {column}: {src} has columns {', '.join(features)}")
    ds = ds.cast_column(column, datasets.Image(decode=False))
    others = [c for c in features if c != column]
    labels_of = {c: features[c] for c in others if _scalar(features[c], datasets)}
    vocab = {c: list(f.names) for c, f in labels_of.items() if isinstance(f, datasets.ClassLabel)}
    cols = ds.select_columns(list(labels_of)).to_dict() if labels_of else {}
    rows = []
    for i in range(len(ds)):
        values = {}
        for c, f in labels_of.items():
            v = cols[c][i]
            if c in vocab:
                v = f.names[v] if isinstance(v, int) and 0 <= v < len(f.names) else None
            values[c] = v
        rows.append(Row(f"row {i}", str(i), values))
    table = Table(f"{src} ({len(ds)} rows)", list(labels_of), rows)
    notes = [f"image column {column}"]
    skipped = [c for c in others if c not in labels_of]
    if skipped:
        notes.append(f"columns not used: {', '.join(skipped)} (not scalar)")
    if opts.unconditional:
        out = Scan("hf", {}, [Record(str(i), HFImage(ds, i, column), None) for i in range(len(ds))])
        out.notes = notes
        return out
    lab = choose_attributes(table, opts.attributes, opts.min_count, vocab=vocab)
    out = Scan("hf", lab.attributes, notes=notes + lab.notes)
    out.rejects = [Reject(reason, f"row {i}", detail) for i, reason, detail in lab.rejects]
    out.records = [Record(str(i), HFImage(ds, i, column), lab.labels[i]) for i in sorted(lab.labels)]
    if not lab.attributes and out.records:
        raise GanscaleError(
            f"{src}: no categorical column to condition on (columns: {', '.join(others) or 'none'}); "
            "name them with --attributes, or pack with --unconditional"
        )
    return out


def _scalar(feature: Any, datasets: Any) -> bool:
    return isinstance(feature, (datasets.ClassLabel, datasets.Value))
