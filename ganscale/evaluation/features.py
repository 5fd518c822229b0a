"""Image batches -> feature vectors: the attribute classifier's, and InceptionV3's when local.

Inception weights are never downloaded. They are used only when a local TorchScript file is
named by ``eval.inception`` in the config, ``--inception PATH`` or the ``GANSCALE_INCEPTION``
environment variable (read by :func:`ganscale.runtime.env.inception_weights`, whose value the
caller passes in as ``env_value``). Two conventions are understood:

- the TorchScript detector of stylegan2-ada-pytorch / clean-fid (``inception-2015-12-05.pt``):
  called as ``m(images_uint8_range, return_features=True)`` -> [N, 2048] pool features; it
  resizes to 299 px itself;
- any other TorchScript module that maps float images in [-1, 1] at 299 x 299 to [N, D]
  features (e.g. a traced pytorch-fid ``InceptionV3([3])`` with its output flattened).

Without a file, :func:`inception_unavailable_message` is the one line to show.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganscale.errors import GanscaleError
from ganscale.runtime.env import INCEPTION_ENV

INCEPTION_SIZE = 299


def inception_unavailable_message() -> str:
    return (
        f"Inception FID/KID skipped: no local InceptionV3 weights; set {INCEPTION_ENV}=/path/to/"
        f"inception-2015-12-05.pt (TorchScript, as used by stylegan2-ada-pytorch) or eval.inception "
        f"in the config (nothing is downloaded)"
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

    def __init__(self, path: Path, device: str | torch.device = "cpu") -> None:
        self.path = Path(path)
        self.device = torch.device(device)
        try:
            self.module: nn.Module = torch.jit.load(str(self.path), map_location=self.device).eval()
        except (RuntimeError, ValueError, OSError) as e:
            raise GanscaleError(
                f"{self.path}: not a loadable TorchScript Inception ({e}); see `ganscale eval --help`"
            ) from None
        self._style: str | None = None

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
) -> tuple[InceptionFeatures | None, str]:
    """(extractor, "") when a local file is given; (None, the one-line message) otherwise.

    ``configured``: ``eval.inception`` or ``--inception``; ``env_value``: what
    :func:`ganscale.runtime.env.inception_weights` returned (None: unset), looked up by the
    caller at the edge (the CLI, the trainer).
    """
    path = inception_path(configured, env_value)
    if path is None:
        return None, inception_unavailable_message()
    return InceptionFeatures(path, device), ""
