"""A fast reader of local, uncompressed tar shards: the same records as WebDataset, 10x cheaper.

Profiling the loader (0 workers, 64 px PNG) showed ``tarfile`` + WebDataset's generator stages
costing ~55 us per record, as much as decoding the PNG: ``TarInfo.frombuf`` parses every
field of every header in Python, then three generator stages pass per-file dicts along. For
local files this module maps the shard and walks the headers itself (name, size, type: the
fields a shard needs), checks each header's checksum (via ``zlib.adler32``, one C call) and
groups files into records exactly as ``webdataset.tarfile_samples`` does: key = path up to
the first dot of the base name, lower-cased extension, a record never spans two shards,
``__key__`` and ``__url__`` set, meta files (``__*__``) skipped, a duplicate extension is an
error passed to ``on_error``.

Errors follow ``tarfile``'s stream mode, so a damaged shard gives what WebDataset gives: an
unreadable first header, an empty file or a member cut short by the end of the file calls
``on_error`` and ends the shard; a damaged header later on ends the shard quietly.

Anything else (remote URLs, ``pipe:``, compressed tars) goes to
:func:`ganscale.data.sources.iter_records`, the reader the rest of ganscale uses.
"""

from __future__ import annotations

import mmap
import re
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ganscale.data.sources import iter_records, local_path

_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")
_REGULAR = (b"0", b"\0", b"7")
_BASE_PLUS_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset.tariterators.base_plus_ext
_META = re.compile(r"__[^/]*__($|/)")
_ZERO = bytes(512)


class _BadHeader(Exception):
    pass


def _plain_tar(url: str) -> str | None:
    """The local path of ``url`` when it is an existing, uncompressed file; else None."""
    p = local_path(url)
    if p is None or not p.is_file():
        return None
    try:
        with open(p, "rb") as f:
            head = f.read(6)
    except OSError:
        return None
    return None if head.startswith(_COMPRESSED) else str(p)


def read_records(
    urls: Iterable[str], on_error: Callable[[Exception], bool] = lambda e: False
) -> Iterator[dict[str, Any]]:
    """The records of ``urls`` in order (local plain tars read here, the rest by WebDataset).

    ``on_error(exn)``: True to skip the damage and go on, False to re-raise it.
    """
    for url in urls:
        path = _plain_tar(url)
        if path is None:
            yield from iter_records([url], on_error=_reraising(on_error))
        else:
            yield from _local_records(path, url, on_error)


def _reraising(on_error: Callable[[Exception], bool]) -> Callable[[Exception], bool]:
    def handler(exn: Exception) -> bool:
        if on_error(exn):
            return True
        raise exn

    return handler


def _nts(b: bytes) -> str:
    i = b.find(b"\0")
    return (b if i < 0 else b[:i]).decode("utf-8", "surrogateescape")


def _number(field: bytes) -> int:
    """A tar numeric field: octal text, or GNU base-256 (first byte 0x80 / 0xff)."""
    if field[0] in (0o200, 0o377):
        n = 0
        for byte in field[1:]:
            n = (n << 8) + byte
        return n - (256 ** (len(field) - 1)) if field[0] == 0o377 else n
    i = field.find(b"\0")
    text = (field if i < 0 else field[:i]).strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise _BadHeader("invalid header") from None


def _octal(field: bytes) -> int:
    """A numeric field, fast path first (plain octal digits padded with NUL or spaces)."""
    try:
        return int(field.strip(b" \0"), 8)
    except ValueError:
        return _number(field)


def _check(hdr: bytes) -> None:
    """tarfile's checksum test (unsigned sum with the field as spaces; signed as a fallback)."""
    field = hdr[148:156]
    stored = _octal(field)
    # adler32's low half is (1 + sum of bytes) mod 65521: one C call instead of a Python sum
    unsigned = ((zlib.adler32(hdr) & 0xFFFF) - 1 - sum(field) + 256) % 65521
    if unsigned == stored % 65521:
        return
    exact = 256 + sum(struct.unpack_from("148B8x356B", hdr))
    signed = 256 + sum(struct.unpack_from("148b8x356b", hdr))
    if stored not in (exact, signed):
        raise _BadHeader("bad checksum")


def _pax(data: bytes) -> dict[str, str]:
    out, pos = {}, 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        length = int(data[pos:sp])
        rec = data[sp + 1 : pos + length - 1]  # without the trailing newline
        key, _, value = rec.partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _split(fname: str) -> tuple[str | None, str | None]:
    """WebDataset's key and extension of a file name (fast path for the common shape)."""
    folder, _, base = fname.rpartition("/")
    if base and base[0] != "." and "." in base:
        stem, ext = base.split(".", 1)
        return (f"{folder}/{stem}" if folder else stem), ext
    m = _BASE_PLUS_EXT.match(fname)
    return (m.group(1), m.group(2)) if m else (None, None)


def _scan(mm: Any) -> tuple[list[tuple[str, int, int]], str | None]:
    """(name, start, end) of every regular member, in order, and the damage that ended the
    scan (None: a clean end), as tarfile's stream mode sees it. One tight loop, no generators."""
    n, off, long_name, local, glob_ = len(mm), 0, None, {}, {}
    adler, out = zlib.adler32, []
    while True:
        if off >= n:
            return out, ("empty file" if off == 0 else None)
        if off + 512 > n:
            return out, ("truncated header" if off == 0 else None)
        hdr = mm[off : off + 512]
        try:  # the usual fields: 11 octal digits + NUL (size), 6 + NUL + space (checksum)
            size = int(hdr[124:135], 8)
            ok = ((adler(hdr) & 0xFFFF) - 1 - sum(hdr[148:156]) + 256) % 65521 == int(hdr[148:154], 8) % 65521
        except ValueError:
            ok = False
        if not ok:
            if hdr == _ZERO:
                return out, None  # end-of-archive marker
            try:
                _check(hdr)
                size = _octal(hdr[124:136])
            except _BadHeader as e:
                return out, (str(e) if off == 0 else None)
        typ = hdr[156:157]
        start = off + 512
        off = start + ((size + 511) & ~511)
        if typ in _REGULAR:
            name = long_name
            if local or glob_:
                if local.get("size") or glob_.get("size"):
                    size = int(local.get("size") or glob_["size"])
                    off = start + ((size + 511) & ~511)
                name = local.get("path") or glob_.get("path") or name
                local = {}
            if start + size > n:
                return out, "unexpected end of data"
            if name is None:
                i = hdr.find(b"\0", 0, 100)
                name = hdr[: i if i >= 0 else 100].decode("utf-8", "surrogateescape")
                if hdr[345]:  # a ustar prefix
                    name = f"{_nts(hdr[345:500])}/{name}"
            long_name = None
            if typ == b"\0" and name.endswith("/"):
                continue  # a V7 directory
            out.append((name, start, start + size))
        elif typ == b"L":
            long_name = _nts(mm[start : start + size])
        elif typ == b"x":
            local = _pax(mm[start : start + size])
        elif typ == b"g":
            glob_ = _pax(mm[start : start + size])
        else:  # directories, links, devices, sparse files: not records
            long_name, local = None, {}


def _fail(on_error: Callable[[Exception], bool], what: str, url: str) -> None:
    exn = tarfile.ReadError(f"{what} @ {url}")
    if not on_error(exn):
        raise exn


def _local_records(path: str, url: str, on_error: Callable[[Exception], bool]) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as f:
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            _fail(on_error, "empty file", url)
            return
    try:
        entries, damage = _scan(mm)
        current: dict[str, Any] | None = None
        key = None
        for fname, start, end in entries:
            if fname.startswith("__") and (("/" not in fname and fname.endswith("__")) or _META.match(fname)):
                continue
            folder, _, base = fname.rpartition("/")
            if base and base[0] != "." and "." in base:  # the usual shape; else webdataset's regex
                stem, suffix = base.split(".", 1)
                prefix = f"{folder}/{stem}" if folder else stem
            else:
                prefix, suffix = _split(fname)
                if prefix is None:
                    continue
            suffix = suffix.lower()
            if prefix != key:
                if current is not None:
                    yield current
                current, key = {"__key__": prefix, "__url__": url}, prefix
            if suffix in current:
                exn = ValueError(
                    f"{fname}: duplicate file name in tar file {suffix} {current.keys()} @ {url}"
                )
                if on_error(exn):
                    continue
                raise exn
            current[suffix] = mm[start:end]
        if current is not None:
            yield current
        if damage is not None:
            _fail(on_error, damage, url)
    finally:
        mm.close()
