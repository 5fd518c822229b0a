"""Shards over http(s): a reader that waits out a server that goes away for a while.

WebDataset opens http(s) URLs with ``curl`` in a subprocess (``gopen_curl``): 30 retries 2 s
apart, fixed; a transfer cut after bytes reached the pipe is not resumed (``tarfile`` then sees
a short shard, which the loader would skip and count: records silently lost for the epoch);
failures surface as a curl exit status. This module replaces it for ``http://`` and
``https://`` with a stdlib reader (``urllib``, no new dependency) whose behaviour is the run's
config (:class:`RetryPolicy`, from ``data.retry_s``, ``data.retry_backoff_s``,
``data.timeout_s``):

- A failed connect or read (refused, reset, stalled past ``timeout_s``, HTTP 5xx/408/429, a
  body shorter than its Content-Length) is retried with exponential backoff (``backoff_s``,
  doubling, at most 10 s) until ``retry_s`` have passed since the first failure of that
  outage; a successful read resets the clock.
- A retry continues at the byte where the read stopped (``Range: bytes=N-``; a server that
  ignores Range sends the whole shard again and the first N bytes are dropped), so no record
  is read twice or half. A shard whose size changes between attempts stops the read.
- Then it gives up with :class:`ShardUnavailable`: one line naming the URL, the time waited,
  the last error and the fix. It is never skipped as a bad shard (``iter_records`` re-raises
  it): losing a server is not corrupt data. HTTP 4xx (other than 408/429) is not retried.

The policy is process-wide (:func:`configure`): the loader sets it when it is built, and its
DataLoader workers (forked) inherit it.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from webdataset.gopen import gopen_schemes

from ganscale.errors import GanscaleError

log = logging.getLogger("ganscale.data")

SCHEMES = ("http", "https")
MAX_BACKOFF_S = 10.0
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_T = TypeVar("_T")


@dataclass(frozen=True)
class RetryPolicy:
    """How long http(s) shard reads wait for a server (see the module docstring)."""

    retry_s: float = 60.0
    backoff_s: float = 1.0
    timeout_s: float = 30.0

    def without_retries(self) -> RetryPolicy:
        return replace(self, retry_s=0.0)


_policy = RetryPolicy()


def configure(policy: RetryPolicy) -> None:
    """Set the policy of every later http(s) read in this process (and workers forked from it)."""
    global _policy
    _policy = policy


def current_policy() -> RetryPolicy:
    return _policy


@contextlib.contextmanager
def using(policy: RetryPolicy) -> Iterator[None]:
    """Read with ``policy`` inside the block (e.g. no retries for the checks at start-up)."""
    old = _policy
    configure(policy)
    try:
        yield
    finally:
        configure(old)


class ShardUnavailable(GanscaleError):
    """A remote shard could not be read within ``data.retry_s``: one line, URL and fix."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker's exception comes back as type(e)("Caught ... Original Traceback
        # ...\n<module>.ShardUnavailable: <message>"): keep the one line (the traceback's last).
        if "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # WebDataset appends the stream and URL to ``args``: ignore them
        return self.message


class _Retryable(Exception):
    """A failure worth another attempt (the server may come back)."""


def _describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        e = e.reason if isinstance(e.reason, BaseException) else e
    text = " ".join(str(e).split()) or "no detail"
    name = type(e).__name__
    return text if isinstance(e, _Retryable) else f"{name}: {text}"


class HTTPShard(io.RawIOBase):
    """One shard over http(s), read front to back with retries (wrap in a BufferedReader)."""

    def __init__(self, url: str, policy: RetryPolicy) -> None:
        super().__init__()
        self.url = self.name = url
        self.kind = "manifest" if url.endswith(".json") else "shard"
        self.policy = policy
        self.pos = 0
        self.total: int | None = None
        self.failures = 0
        self._resp: http.client.HTTPResponse | None = None
        self._retrying(self._connect)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        return self._retrying(lambda: self._read_some(buf))

    def close(self) -> None:
        self._drop()
        super().close()

    # ------------------------------------------------------------------ internals
    def _read_some(self, buf: Any) -> int:
        if self._resp is None:
            self._connect()
        assert self._resp is not None
        n = self._resp.readinto(buf)
        if n == 0 and len(buf) and self.total is not None and self.pos < self.total:
            # http.client returns b"" (no IncompleteRead) when the server closes early
            raise _Retryable(f"connection closed at byte {self.pos} of {self.total}")
        self.pos += n
        return n

    def _connect(self) -> None:
        self._drop()
        headers = {"User-Agent": "ganscale", "Accept-Encoding": "identity"}
        if self.pos:
            headers["Range"] = f"bytes={self.pos}-"
        try:
            resp = urllib.request.urlopen(
                urllib.request.Request(self.url, headers=headers), timeout=self.policy.timeout_s
            )
        except urllib.error.HTTPError as e:
            e.close()
            if e.code in RETRY_STATUS:
                raise _Retryable(f"HTTP {e.code} {e.reason}") from None
            raise ShardUnavailable(
                f"{self.kind} {self.url}: HTTP {e.code} {e.reason}; "
                "check data.path (the server has no such file)"
            ) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, ssl.SSLCertVerificationError):
                raise ShardUnavailable(
                    f"{self.kind} {self.url}: {_describe(e)}; fix the server's certificate"
                ) from None
            raise
        except ValueError as e:  # http.client.InvalidURL and friends: a wrong URL, not an outage
            raise ShardUnavailable(f"shard URL {self.url!r} is invalid ({e}); check data.path") from None
        start, total = _span(resp)
        if self.total is not None and total is not None and total != self.total:
            resp.close()
            raise ShardUnavailable(
                f"{self.kind} {self.url} changed on the server while being read "
                f"({self.total} -> {total} bytes); keep shards fixed during a run, then --resume latest"
            )
        self.total = total if total is not None else self.total
        if start != self.pos:  # the server ignored Range: drop what was already read
            if start != 0:
                resp.close()
                raise _Retryable(f"server answered Range bytes={self.pos}- from byte {start}")
            _discard(resp, self.pos)
        self._resp = resp

    def _drop(self) -> None:
        if self._resp is not None:
            with contextlib.suppress(Exception):
                self._resp.close()
            self._resp = None

    def _retrying(self, attempt: Callable[[], _T]) -> _T:
        first: float | None = None
        wait = self.policy.backoff_s
        while True:
            try:
                result = attempt()
            except ShardUnavailable:
                self._drop()
                raise
            except (OSError, http.client.HTTPException, _Retryable) as e:
                self._drop()
                now = time.monotonic()
                first = now if first is None else first
                self.failures += 1
                waited = now - first
                if waited >= self.policy.retry_s:
                    raise ShardUnavailable(self._give_up(e, waited)) from None
                pause = min(wait, self.policy.retry_s - waited)
                log.warning(
                    "%s %s: %s; retrying in %.1f s (%.1f s of data.retry_s=%g left)",
                    self.kind,
                    self.url,
                    _describe(e),
                    pause,
                    self.policy.retry_s - waited,
                    self.policy.retry_s,
                )
                time.sleep(pause)
                wait = min(wait * 2, MAX_BACKOFF_S)
            else:
                return result

    def _give_up(self, e: BaseException, waited: float) -> str:
        at = f" at byte {self.pos}" if self.pos else ""
        if self.policy.retry_s <= 0:
            why = _describe(e)
            return f"cannot read {self.url}{at} ({why}); check data.path and that its server is up"
        return (
            f"{self.kind} {self.url} unreachable{at} for {waited:.1f} s ({self.failures} attempts; "
            f"{_describe(e)}); with the server back, rerun with --resume latest (checkpoints are "
            f"intact), or raise data.retry_s ({self.policy.retry_s:g} s)"
        )


def _span(resp: http.client.HTTPResponse) -> tuple[int, int | None]:
    """(first byte, total size or None) of a 200 or 206 response."""
    if resp.status == 206:
        m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", resp.headers.get("Content-Range", ""))
        if m is None:
            raise _Retryable(
                f"HTTP 206 with an unreadable Content-Range {resp.headers.get('Content-Range')!r}"
            )
        return int(m.group(1)), None if m.group(2) == "*" else int(m.group(2))
    length = resp.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None


def _discard(resp: http.client.HTTPResponse, n: int) -> None:
    while n > 0:
        got = len(resp.read(min(n, 1 << 16)))
        if got == 0:
            raise _Retryable(f"connection closed while skipping to byte {n}")
        n -= got


def open_shard(url: str, mode: str = "rb", bufsize: int = 8192, **kw: object) -> io.BufferedReader:
    """WebDataset ``gopen`` handler for http(s): the shard as a buffered, retrying stream."""
    if mode != "rb":
        raise GanscaleError(f"{url}: ganscale only reads http(s) shards (mode {mode!r})")
    return io.BufferedReader(HTTPShard(url, _policy), buffer_size=1 << 16)


def fetch(url: str) -> bytes:
    """The whole body of ``url`` (e.g. a dataset.json), read with the current policy."""
    with open_shard(url) as f:
        return f.read()


def register() -> None:
    """Route WebDataset's http(s) opens (its ``gopen`` table) to :func:`open_shard`."""
    for scheme in SCHEMES:
        gopen_schemes[scheme] = open_shard
