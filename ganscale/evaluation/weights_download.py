"""The standard InceptionV3 file of the FID literature, fetched once (when allowed) and pinned.

``eval.inception: download`` (or ``--inception download``, or ``GANSCALE_INCEPTION=download``)
asks for NVIDIA's TorchScript translation of TensorFlow's 2015-12-05 Inception graph, the
detector stylegan2-ada-pytorch, StyleGAN3, clean-fid and k-diffusion compute FID/KID with. It is
looked for in the ganscale cache folder (``$GANSCALE_CACHE_DIR``, else
``$XDG_CACHE_HOME/ganscale``, else ``~/.cache/ganscale``; read by
:func:`ganscale.runtime.env.cache_dir`); when it is not there it is downloaded once with the
standard library's ``urllib`` into a temporary file beside it, its sha256 checked against the
pinned value, and only then renamed into place (under a file lock, so the ranks of a launch
download it once). A file whose sha256 differs, downloaded or found in the cache, is refused
and nothing is kept. When the download fails (offline), one line says where to put the file
and how.

Nothing here runs without being asked: no file, no ``download`` -> no network.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ganscale.errors import GanscaleError

DOWNLOAD = "download"
"""The eval.inception / --inception / $GANSCALE_INCEPTION value that asks for the standard file."""


@dataclass(frozen=True)
class PinnedFile:
    """A file known by name, URL and sha256."""

    name: str
    url: str
    sha256: str


INCEPTION_2015_12_05 = PinnedFile(
    name="inception-2015-12-05.pt",
    # The TorchScript file (loads with torch.jit.load, no pickle). NVIDIA's NGC folder for
    # StyleGAN3 publishes the same network as a pickle (inception-2015-12-05.pkl), which is not
    # loaded here.
    url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
    # NOT verified by a download from this project (its machines cannot reach NVIDIA's CDN).
    # Taken from published code that pins this exact URL to this digest: crowsonkb/k-diffusion
    # (k_diffusion/evaluation.py, InceptionV3FeatureExtractor), and several independent
    # projects record the same digest for the same file (one notes 95,607,719 bytes). If a
    # download is refused with a checksum mismatch, check the file by hand before changing it.
    sha256="f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4",
)

CHUNK = 1 << 20
TIMEOUT_S = 60.0


class DownloadFailed(Exception):
    """The file could not be fetched (network, server, disk); ``str()`` is the one-line reason."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def manual_instructions(pinned: PinnedFile, dest: Path) -> str:
    """How to put the file in place by hand (the tail of the offline line)."""
    return (
        f"put {pinned.name} (sha256 {pinned.sha256}) at {dest}, e.g. `curl -fL -o {dest} {pinned.url}` "
        f"on a machine with network access, then run again with --inception {DOWNLOAD}"
    )


def verify(path: Path, pinned: PinnedFile) -> Path:
    """``path`` when its sha256 is the pinned one; else a one-line refusal (the file is left alone:
    the user put it there)."""
    digest = sha256_of(path)
    if digest != pinned.sha256:
        raise GanscaleError(
            f"{path}: sha256 {digest} is not the pinned {pinned.sha256} of {pinned.name}; "
            f"delete it (it is not the standard file) and run again with --inception {DOWNLOAD}"
        )
    return path


def fetch(pinned: PinnedFile, folder: Path, timeout: float = TIMEOUT_S) -> Path:
    """``folder/<name>``, verified: from the cache when there, else downloaded once from
    ``pinned.url``, checked, and renamed into place.

    Raises :class:`DownloadFailed` when it cannot be fetched and :class:`GanscaleError` when
    what was fetched (or found) has another sha256; in both cases nothing new is left in
    ``folder``.
    """
    from filelock import FileLock

    dest = Path(folder).expanduser() / pinned.name
    if dest.is_file():
        return verify(dest, pinned)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadFailed(f"cannot create {dest.parent} ({e.strerror or e})") from None
    with FileLock(str(dest.with_name(f".{dest.name}.lock"))):
        if dest.is_file():  # another rank fetched it while this one waited
            return verify(dest, pinned)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        try:
            h = hashlib.sha256()
            with urllib.request.urlopen(pinned.url, timeout=timeout) as response, open(tmp, "wb") as f:
                for block in iter(lambda: response.read(CHUNK), b""):
                    h.update(block)
                    f.write(block)
            if h.hexdigest() != pinned.sha256:
                raise GanscaleError(
                    f"{pinned.url}: downloaded file has sha256 {h.hexdigest()}, not the pinned "
                    f"{pinned.sha256} of {pinned.name}; refused, nothing kept in {dest.parent}"
                )
            os.replace(tmp, dest)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
            raise DownloadFailed(f"could not download {pinned.url} ({reason})") from None
        finally:
            tmp.unlink(missing_ok=True)
    return dest
