"""Image batches -> feature vectors: the attribute classifier's, and InceptionV3's when asked for.

Inception is used only when asked for, by ``eval.inception`` in the config, ``--inception`` or
the ``GANSCALE_INCEPTION`` environment variable (read by
:func:`ganscale.runtime.env.inception_weights`, whose value the caller passes in as
``env_value``), with either value:

- ``download``: the standard ``inception-2015-12-05.pt`` of the FID literature, from the
  ganscale cache folder, downloaded there once if missing and checked against its pinned
  sha256 (:mod:`ganscale.evaluation.weights_download`); offline, one line says where to put it;
- a path to a local TorchScript file (used as it is, not checksummed).

Two calling conventions are understood:

- the TorchScript detector of stylegan2-ada-pytorch / clean-fid (``inception-2015-12-05.pt``):
  called as ``m(images_uint8_range, return_features=True)`` -> [N, 2048] pool features; it
  resizes to 299 px itself;
- any other TorchScript module that maps float images in [-1, 1] at 299 x 299 to [N, D]
  features (e.g. a traced pytorch-fid ``InceptionV3([3])`` with its output flattened).

Without either, :func:`inception_unavailable_message` is the one line to show.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganscale.errors import GanscaleError
from ganscale.evaluation.weights_download import (
    DOWNLOAD,
    INCEPTION_2015_12_05,
    DownloadFailed,
    PinnedFile,
    fetch,
    manual_instructions,
    sha256_of,
)
from ganscale.runtime.env import INCEPTION_ENV

INCEPTION_SIZE = 299


def inception_unavailable_message(cache_dir: str | Path | None = None) -> str:
    where = Path(cache_dir).expanduser() / INCEPTION_2015_12_05.name if cache_dir else "the ganscale cache"
    return (
        f"Inception FID/KID skipped: no InceptionV3 weights asked for; --inception {DOWNLOAD} (or "
        f"eval.inception: {DOWNLOAD}) fetches the standard {INCEPTION_2015_12_05.name} once into {where}, "
        f"or set {INCEPTION_ENV}=/path/to/a/TorchScript/file (or eval.inception / --inception PATH)"
    )


def inception_path(configured: str | Path | None = None, env_value: str | None = None) -> Path | None:
    """The local Inception file to use: the configured path, else ``env_value`` (the value of
    $GANSCALE_INCEPTION, from :func:`ganscale.runtime.env.inception_weights`), else None.

    A path that is given but missing is an error (a typo should not silently skip a metric).
    """
    raw = str(configured) if configured else (env_value or "")
    if not raw:
        return None
    path = Path(raw).expanduser()
    if not path.is_file():
        source = "eval.inception" if configured else INCEPTION_ENV
        raise GanscaleError(
            f"{source}={raw}: file not found; point it at a local InceptionV3 TorchScript file or unset it"
        )
    return path


class InceptionFeatures:
    """A loaded TorchScript Inception; ``__call__(images in [-1, 1] or uint8) -> [N, D] float32 cpu``."""

    def __init__(self, path: Path, device: str | torch.device = "cpu", digest: str | None = None) -> None:
        self.path = Path(path)
        self.device = torch.device(device)
        self._digest = digest
        try:
            self.module: nn.Module = torch.jit.load(str(self.path), map_location=self.device).eval()
        except (RuntimeError, ValueError, OSError) as e:
            raise GanscaleError(
                f"{self.path}: not a loadable TorchScript Inception ({e}); see `ganscale eval --help`"
            ) from None
        self._style: str | None = None

    @property
    def digest(self) -> str:
        """The file's sha256: the identity of this feature space (real statistics are cached by it)."""
        if self._digest is None:
            self._digest = sha256_of(self.path)
        return self._digest

    def _call(self, x: Tensor) -> Tensor:
        if self._style in (None, "stylegan"):
            try:
                out = self.module(x.add(1).mul(127.5).clamp(0, 255), return_features=True)
                self._style = "stylegan"
                return out
            except (RuntimeError, TypeError):
                if self._style == "stylegan":
                    raise
                self._style = "plain"
        resized = F.interpolate(
            x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False
        )
        return self.module(resized)

    @torch.no_grad()
    def __call__(self, images: Tensor, batch_size: int = 64) -> Tensor:
        out = []
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(self.device)
            f = self._call(x.float().div(127.5).sub(1.0) if x.dtype == torch.uint8 else x.float())
            out.append(f.reshape(f.shape[0], -1).float().cpu())
        return torch.cat(out)


def load_inception(
    configured: str | Path | None = None,
    device: str | torch.device = "cpu",
    *,
    env_value: str | None,
    cache_dir: str | Path | None = None,
    pinned: PinnedFile = INCEPTION_2015_12_05,
) -> tuple[InceptionFeatures | None, str]:
    """(extractor, "") when a file is given or ``download`` fetched/found the standard one;
    (None, the one-line message) when none is asked for or the download failed.

    ``configured``: ``eval.inception`` or ``--inception``; ``env_value``: what
    :func:`ganscale.runtime.env.inception_weights` returned (None: unset); ``cache_dir``: what
    :func:`ganscale.runtime.env.cache_dir` returned; all looked up by the caller at the edge
    (the CLI, the trainer). ``pinned``: the file ``download`` means (tests give a stand-in).
    A downloaded or cached file with another sha256 is refused (GanscaleError).
    """
    raw = str(configured) if configured else (env_value or "")
    if raw.strip().lower() == DOWNLOAD:
        if cache_dir is None:
            source = "eval.inception" if configured else INCEPTION_ENV
            raise GanscaleError(f"{source}={raw}: no cache folder to download into; pass a file path instead")
        folder = Path(cache_dir).expanduser()
        try:
            path = fetch(pinned, folder)
        except DownloadFailed as e:
            return (
                None,
                f"Inception FID/KID skipped: {e}; {manual_instructions(pinned, folder / pinned.name)}",
            )
        return InceptionFeatures(path, device, digest=pinned.sha256), ""
    path = inception_path(configured, env_value)
    if path is None:
        return None, inception_unavailable_message(cache_dir)
    return InceptionFeatures(path, device), ""
