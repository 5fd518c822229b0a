"""Where shards come from, and the one way they are read.

A packed folder, a brace pattern, a list of URLs or a ``dataset.json`` (path or URL) -> checked
URLs (:func:`shard_source`). Checks happen here, at loader build time, so a bad path fails before
training starts: a missing local shard is a one-line error naming it; ``pipe:`` URLs (they run a
shell command) need ``data.allow_pipe``; fsspec URLs (s3://, gs://, ...) need their backend;
http(s) URLs are read by :mod:`ganscale.data.remote` (retries, resume at the byte, one-line errors).
A ``dataset.json`` URL lists its shards relative to itself; a brace pattern of http(s) URLs uses
the ``dataset.json`` beside them when the server has one (exact record counts).

A *record* is one stored corpus item as WebDataset groups it: ``{"__key__", "__url__",
<ext>: bytes, ...}`` (``png`` + ``json`` for our shards). :func:`iter_records` is the reader
that training, inspection and evaluation all use; :func:`shard_keys` lists keys from tar
headers only.
"""

from __future__ import annotations

import functools
import json
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlparse

import braceexpand
import webdataset as wds
from webdataset.gopen import gopen_schemes as _GOPEN_SCHEMES  # the module's dispatch table

from ganscale.data import remote
from ganscale.errors import GanscaleError
from ganscale.shardformat import MANIFEST, read_manifest


@dataclass
class ShardSource:
    """Resolved shard URLs, their record counts (-1 = unknown) and the manifest if there is one."""

    urls: list[str]
    sizes: list[int]
    manifest: dict | None = None
    origin: str = ""
    complete: bool = False
    """The manifest describes exactly these shards (a folder or a dataset.json URL), so its
    ``num_samples``/``image_size`` are the corpus facts."""


def _split_list(text: str) -> list[str]:
    """Split on commas outside braces: 'a-{0..3}.tar,b.tar' -> ['a-{0..3}.tar', 'b.tar']."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def scheme_of(url: str) -> str:
    if url.startswith("pipe:"):
        return "pipe"
    s = urlparse(url).scheme
    return "" if len(s) <= 1 else s  # "C:\\..." is a drive letter, not a scheme


def local_path(url: str) -> Path | None:
    s = scheme_of(url)
    if s == "":
        return Path(url)
    if s == "file":
        return Path(urlparse(url).path)
    return None


def shard_source(source: str | Path | list[str], *, allow_pipe: bool = True) -> ShardSource:
    """Turn a folder / brace pattern / URL list into checked shard URLs."""
    items = [str(s) for s in source] if isinstance(source, (list, tuple)) else _split_list(str(source))
    if not items:
        raise GanscaleError(
            "data.path is empty; set it to a folder with dataset.json, a brace pattern or URLs"
        )
    if len(items) == 1:
        p = local_path(items[0])
        if p is not None and p.is_dir():
            return _from_folder(p)
        if _is_manifest(items[0]):
            if p is not None and p.is_file():  # a local dataset.json: its folder
                return _from_folder(p.parent)
            if scheme_of(items[0]) in remote.SCHEMES:
                return _from_manifest_url(items[0])
    urls: list[str] = []
    for item in items:
        expanded = list(braceexpand.braceexpand(item))
        urls += expanded
    for u in urls:
        _check_url(u, allow_pipe)
    manifest = _manifest_beside(urls)
    sizes = _sizes_from_manifest(urls, manifest)
    return ShardSource(urls, sizes, manifest, origin=",".join(items))


def _is_manifest(url: str) -> bool:
    return urlparse(url).path.rsplit("/", 1)[-1] == MANIFEST if scheme_of(url) else Path(url).name == MANIFEST


def _from_manifest_url(url: str) -> ShardSource:
    """A dataset.json served over http(s): its shards, resolved relative to its URL."""
    try:
        m = json.loads(remote.fetch(url))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GanscaleError(f"{url} is not valid JSON ({e}); point data.path at a dataset.json") from None
    if not isinstance(m, dict) or not isinstance(m.get("shards"), list) or not m["shards"]:
        raise GanscaleError(f"{url} has no 'shards' list; is it a `ganscale data pack` dataset.json?")
    urls, sizes = [], []
    for s in m["shards"]:
        if not isinstance(s, dict) or not isinstance(s.get("url"), str):
            raise GanscaleError(f"{url}: shard entry {s!r} has no 'url'; re-run `ganscale data pack`")
        u = urljoin(url, s["url"])
        if local_path(u) is not None or scheme_of(u) == "pipe":  # a remote file must not read local files
            raise GanscaleError(
                f"{url} lists shard {s['url']!r}, which is not a remote URL; fix the manifest"
            )
        _check_url(u, allow_pipe=False)
        urls.append(u)
        n = s.get("num_samples", -1)
        sizes.append(n if isinstance(n, int) and n >= 0 else -1)
    complete = -1 not in sizes and "num_samples" in m and "image_size" in m
    return ShardSource(urls, sizes, m, origin=url, complete=complete)


def _from_folder(folder: Path) -> ShardSource:
    if (folder / MANIFEST).is_file():
        m = read_manifest(folder)
        urls, sizes = [], []
        for s in m["shards"]:
            url = str(s["url"])
            urls.append(url if scheme_of(url) else str(folder / url))
            sizes.append(int(s.get("num_samples", -1)))
        for u in urls:
            _check_url(u, allow_pipe=False)
        return ShardSource(urls, sizes, m, origin=str(folder), complete=True)
    tars = sorted(str(p) for p in folder.glob("*.tar"))
    if not tars:
        raise GanscaleError(
            f"{folder} has neither {MANIFEST} nor *.tar shards; run `ganscale data pack SRC {folder}` first"
        )
    return ShardSource(tars, [count_local(t) for t in tars], None, origin=str(folder))


def _check_url(url: str, allow_pipe: bool) -> None:
    s = scheme_of(url)
    if s == "pipe":
        if not allow_pipe:
            raise GanscaleError(
                f"shard URL {url!r} is a pipe: (it runs a shell command); "
                "set data.allow_pipe: true (--set data.allow_pipe=true) if you trust it"
            )
        return
    p = local_path(url)
    if p is not None:
        if not p.is_file():
            raise GanscaleError(f"shard {p} not found; check data.path (did `ganscale data pack` finish?)")
        return
    if s in remote.SCHEMES:
        remote.register()
        return
    _register_fsspec(s, url)


@functools.cache
def _register_fsspec(scheme: str, example: str) -> None:
    """Open ``scheme://`` URLs with fsspec when it and the scheme's backend are installed."""
    try:
        import fsspec
    except ImportError:
        fsspec = None
    if fsspec is not None:
        try:
            fsspec.get_filesystem_class(scheme)
        except ImportError as e:
            if scheme in _GOPEN_SCHEMES:  # e.g. https without aiohttp: webdataset's curl
                return
            raise GanscaleError(
                f"shard URL {example!r} needs an fsspec backend for {scheme}:// that is not installed ({e})"
            ) from None
        except ValueError:
            pass  # fsspec does not know it; webdataset may (curl, gsutil, ais ...)
        else:

            def gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **kw: object):
                return fsspec.open(url, mode).open()

            _GOPEN_SCHEMES[scheme] = gopen_fsspec
            return
    if scheme not in _GOPEN_SCHEMES:
        raise GanscaleError(
            f"shard URL {example!r}: no reader for {scheme}:// (install fsspec and its backend)"
        )


def iter_records(
    urls: Iterable[str], on_error: Callable[[Exception], bool] = wds.reraise_exception
) -> Iterator[dict]:
    """The records of ``urls`` in order, grouped by key as WebDataset does.

    ``on_error(exn)`` decides about unreadable shard data: return True to skip and go on
    (the loader counts and skips), or raise (the default: evaluation wants a sound corpus).
    A remote shard that stays unreachable (:class:`~ganscale.data.remote.ShardUnavailable`)
    is always raised: a server that went away is not a corrupt shard to skip.
    """
    remote.register()  # here too: a spawned (not forked) worker starts with WebDataset's table

    def handler(exn: Exception) -> bool:
        if isinstance(exn, remote.ShardUnavailable):
            raise exn
        return on_error(exn)

    return wds.tarfile_samples(({"url": u} for u in urls), handler=handler)


def _record_key(member_name: str) -> str:
    """WebDataset's key of a tar member: the path up to the first dot of its base name."""
    folder, _, base = member_name.rpartition("/")
    stem = base.split(".", 1)[0]
    return f"{folder}/{stem}" if folder else stem


def _member_keys(path: str | Path) -> Iterator[str]:
    """The record key of every regular member of a local tar (headers only, no data read)."""
    with tarfile.open(path, "r:*") as tf:
        for m in tf:
            if m.isreg() and not m.name.startswith("__"):
                yield _record_key(m.name)


def shard_keys(path: str | Path) -> list[str]:
    """Record keys of a local tar in order (headers only); raises on an unreadable tar."""
    keys: list[str] = []
    for key in _member_keys(path):
        if not keys or keys[-1] != key:
            keys.append(key)
    return keys


def count_local(path: str | Path) -> int:
    """Records in a local tar (distinct keys), reading headers only; -1 if unreadable."""
    keys = set()
    try:
        for key in _member_keys(path):
            keys.add(key)
    except (OSError, tarfile.TarError, EOFError):
        return len(keys) if keys else -1
    return len(keys)


def _manifest_beside(urls: list[str]) -> dict | None:
    if urls and all(scheme_of(u) in remote.SCHEMES for u in urls):
        return _remote_manifest_beside(urls)
    paths = [local_path(u) for u in urls]
    if urls and all(p is not None for p in paths):
        folders = {p.parent for p in paths if p is not None}
        if len(folders) == 1:
            folder = folders.pop()
            if (folder / MANIFEST).is_file():
                try:
                    return read_manifest(folder)
                except GanscaleError:
                    return None
    return None


def _remote_manifest_beside(urls: list[str]) -> dict | None:
    """The dataset.json in the one folder URL of ``urls``, if the server has one (else None)."""
    folders = {u.rsplit("/", 1)[0] for u in urls}
    if len(folders) != 1:
        return None
    try:
        with remote.using(remote.current_policy().without_retries()):
            m = json.loads(remote.fetch(f"{folders.pop()}/{MANIFEST}"))
    except (GanscaleError, ValueError):  # no manifest there (404), or not JSON: count instead
        return None
    ok = isinstance(m, dict) and isinstance(m.get("shards"), list)
    return m if ok and all(isinstance(s, dict) and "url" in s for s in m["shards"]) else None


def _sizes_from_manifest(urls: list[str], m: dict | None) -> list[int]:
    known = {}
    if m is not None:
        known = {Path(str(s["url"])).name: int(s.get("num_samples", -1)) for s in m["shards"]}
    sizes = []
    for u in urls:
        p = local_path(u)
        name = p.name if p is not None else u.rsplit("/", 1)[-1]
        if name in known:
            sizes.append(known[name])
        elif p is not None:
            sizes.append(count_local(p))
        else:
            sizes.append(-1)
    return sizes
