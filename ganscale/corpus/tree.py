"""A source's files, from a folder or a ``.zip`` (read in place, never unpacked).

Paths are relative POSIX strings (``train/a.png``); hidden files and folders (``.name``) and
``__MACOSX/`` are left out. A zip whose every file sits in one top folder (``zip -r x.zip
corpus/``) is read from inside that folder, so zipping a folder changes nothing.
"""

from __future__ import annotations

import functools
import os
import posixpath
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ganscale.errors import GanscaleError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class ZipMember:
    """One file inside a zip, read on demand."""

    zip_path: Path
    name: str

    def read(self) -> bytes:
        return _open_zip(self.zip_path).read(self.name)

    def __str__(self) -> str:
        return f"{self.zip_path}:{self.name}"


@functools.lru_cache(maxsize=4)
def _open_zip(path: Path) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)


def is_image(rel: str) -> bool:
    return os.path.splitext(rel)[1].lower() in IMAGE_EXTS


def _hidden(parts: list[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


class Tree:
    """The files of a folder or a zip: ``rel path -> Path | ZipMember``."""

    def __init__(self, label: str, files: dict[str, Path | ZipMember], is_zip: bool = False) -> None:
        self.label = label
        self.files = dict(sorted(files.items()))
        self.is_zip = is_zip
        self._direct: dict[str, list[str]] = {}  # folder -> the files directly in it (sorted)
        for rel in self.files:
            self._direct.setdefault(posixpath.dirname(rel), []).append(rel)

    @classmethod
    def open(cls, src: str | Path) -> Tree:
        src = Path(src)
        if src.is_file() and src.suffix.lower() == ".zip":
            return cls._from_zip(src)
        if not src.is_dir():
            raise GanscaleError(f"{src} is not a folder or a .zip; pass a folder of images (or a zip of one)")
        files: dict[str, Path | ZipMember] = {}
        for root, dirs, names in os.walk(src):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
            rel_root = Path(root).relative_to(src).as_posix()
            for n in names:
                if not n.startswith("."):
                    rel = n if rel_root == "." else f"{rel_root}/{n}"
                    files[rel] = Path(root) / n
        return cls(str(src), files)

    @classmethod
    def _from_zip(cls, path: Path) -> Tree:
        try:
            zf = _open_zip(path)
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
        except (zipfile.BadZipFile, OSError) as e:
            raise GanscaleError(f"{path} is not a readable zip ({e})") from None
        names = [n for n in names if not _hidden(n.split("/"))]
        tops = {n.split("/", 1)[0] for n in names}
        strip = ""
        if len(tops) == 1 and all("/" in n for n in names):  # zip -r x.zip folder/
            strip = tops.pop() + "/"
        files = {n[len(strip) :]: ZipMember(path, n) for n in names}
        return cls(str(path), files, is_zip=True)

    def path(self, rel: str) -> str:
        """How messages name a file: ``SRC/rel`` (or ``SRC.zip:rel``)."""
        return f"{self.label}:{rel}" if self.is_zip else str(Path(self.label) / rel)

    def exists(self, rel: str) -> bool:
        return rel in self.files

    def read_text(self, rel: str) -> str:
        ref = self.files[rel]
        data = ref.read() if isinstance(ref, ZipMember) else ref.read_bytes()
        return data.decode("utf-8-sig", errors="replace")

    def under(self, prefix: str = "") -> list[str]:
        """Every file below the folder ``prefix`` ("" = the root), recursively."""
        if not prefix:
            return list(self.files)
        p = prefix.rstrip("/") + "/"
        return [r for r in self.files if r.startswith(p)]

    def images_in(self, folder: str = "") -> dict[str, str]:
        """stem -> rel path of the images directly in ``folder`` (first extension wins)."""
        out: dict[str, str] = {}
        for rel in self._direct.get(folder.rstrip("/"), []):
            if is_image(rel):
                out.setdefault(posixpath.splitext(posixpath.basename(rel))[0], rel)
        return out

    def subfolders(self, folder: str = "") -> list[str]:
        """Names of the folders directly in ``folder`` that hold files (sorted)."""
        p = folder.rstrip("/") + "/" if folder else ""
        return sorted({r[len(p) :].split("/", 1)[0] for r in self.under(folder) if "/" in r[len(p) :]})
