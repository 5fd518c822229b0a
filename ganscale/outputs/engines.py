"""One interface over the two ways to run an exported generator: PyTorch or ONNX Runtime.

``load_engine(path)`` takes a run folder, a model folder (``ganscale export``), a
``.safetensors`` or a ``.onnx`` file. ``engine.images(z, labels, labels_to, t)`` returns uint8
images [B, S, S, 3]; ``labels_to``/``t`` mix two conditions (``(1 - t) * onehot(labels) +
t * onehot(labels_to)``, as ``ganscale sample --interpolate`` does). ``ganscale sample`` and
``ganscale serve`` both run generators through here, fed by :mod:`ganscale.outputs.latents`
(the one way z and conditions are drawn from a seed).

This module imports neither torch nor onnxruntime at import time: the ONNX path works where
torch is not installed.

Concurrency: one lock per engine around the forward pass. On CPU both backends already spread
one forward over every core, so two forwards at once only fight for the same cores and double
peak memory; the lock bounds memory and keeps latency predictable (FIFO-ish). It also keeps a
stray ``.train()`` from ever racing a forward: the model is loaded once, in eval mode, read-only.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ganscale.errors import GanscaleError
from ganscale.outputs.latents import condition_code

if TYPE_CHECKING:
    import torch

ONNX_FILE = "generator.onnx"


def pick_device(device: str | None) -> torch.device:
    """``--device`` as a torch device (default: CUDA when there is one); CUDA asked for where
    there is none is a one-line GanscaleError."""
    import torch

    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise GanscaleError(f"--device {device}: CUDA is not available here; use --device cpu")
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def grid(images: np.ndarray, ncol: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 [N, H, W, 3] -> one uint8 HWC grid on white, ``ncol`` per row."""
    from ganscale.outputs.images import tile

    return tile(images, ncol, pad)


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def gif_bytes(frames: np.ndarray, duration_ms: int = 80) -> bytes:
    from PIL import Image

    ims = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=duration_ms, loop=0)
    return buf.getvalue()


def to_uint8_np(x: np.ndarray) -> np.ndarray:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3] (rounded like images.to_uint8)."""
    return np.round((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)


class Engine:
    """A loaded generator: ``meta`` (generator.json), ``backend`` ("torch"/"onnx"), ``source``."""

    backend = "none"

    def __init__(self, meta: dict[str, Any], source: Path) -> None:
        self.meta, self.source = meta, source
        self.attributes: dict[str, list[str]] = meta["attributes"]
        self._lock = threading.Lock()

    def forward(
        self, z: np.ndarray, labels: np.ndarray | None, labels_to: np.ndarray | None, t: np.ndarray | None
    ) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def raw(
        self,
        z: np.ndarray,
        labels: np.ndarray | None = None,
        labels_to: np.ndarray | None = None,
        t: np.ndarray | None = None,
    ) -> np.ndarray:
        """float32 [B, 3, S, S] in [-1, 1]; one forward at a time (see the module docstring)."""
        if self.attributes and labels is None:
            raise GanscaleError("this generator is conditional: pass labels")
        with self._lock:
            return self.forward(z, labels, labels_to, t)

    def images(self, z: np.ndarray, *labels_to_t: np.ndarray | None) -> np.ndarray:
        """uint8 [B, S, S, 3]; the arguments of :meth:`raw`."""
        return to_uint8_np(self.raw(z, *labels_to_t))


class TorchEngine(Engine):
    backend = "torch"

    def __init__(self, path: Path, device: str | None = "cpu") -> None:
        from ganscale.outputs.export import find_export, load_generator

        self.device = pick_device(device)
        G, meta = load_generator(path, self.device)
        super().__init__(meta, find_export(path)[0])
        self.G = G

    def forward(self, z, labels, labels_to, t):  # noqa: ANN001, ANN201 - see Engine.forward
        import torch

        with torch.inference_mode():
            zt = torch.from_numpy(np.ascontiguousarray(z)).to(self.device)
            if not self.attributes:
                return self.G(zt, None).float().cpu().numpy()
            code = condition_code(labels, self.meta["num_classes"], labels_to, t)
            return self.G(zt, torch.from_numpy(code).to(self.device)).float().cpu().numpy()


class OnnxEngine(Engine):
    backend = "onnx"

    def __init__(self, path: Path, device: str | None = "cpu") -> None:
        onnx_path = path / ONNX_FILE if path.is_dir() else path
        meta = read_meta(onnx_path.with_suffix(".json"))
        super().__init__(meta, onnx_path)
        try:
            import onnxruntime as ort
        except ImportError:
            raise GanscaleError(
                f"{onnx_path}: running ONNX needs onnxruntime: pip install 'ganscale[serve]'"
            ) from None
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise GanscaleError("--device cuda: this onnxruntime has no CUDA provider; use --device cpu")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the overridable-initializer notice is by design
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
            raise GanscaleError(f"{onnx_path}: not a loadable ONNX model ({str(e)[:200]})") from None
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        want = {"z": int(meta["z_dim"])} | ({"labels": len(self.attributes)} if self.attributes else {})
        for name, width in want.items():
            if name not in inputs or inputs[name][1] != width:
                raise GanscaleError(
                    f"{onnx_path}: input {name!r} should be [batch, {width}] as "
                    f"{onnx_path.with_suffix('.json').name} says; the model has {inputs}"
                )

    def forward(self, z, labels, labels_to, t):  # noqa: ANN001, ANN201 - see Engine.forward
        feed: dict[str, np.ndarray] = {"z": np.ascontiguousarray(z, np.float32)}
        if self.attributes:
            feed["labels"] = np.ascontiguousarray(labels, np.int64)
            if labels_to is not None and t is not None:
                feed["labels_to"] = np.ascontiguousarray(labels_to, np.int64)
                feed["t"] = np.ascontiguousarray(t, np.float32)
        return self.session.run(["images"], feed)[0]


def read_meta(path: Path) -> dict[str, Any]:
    """A generator.json (or a model folder's config.json), checked enough to draw from."""
    from ganscale.outputs.export import EXPORT_FORMAT  # torch-free: export.py imports torch lazily

    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise GanscaleError(f"{path}: generator description missing (written beside the model)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GanscaleError(f"{path}: not valid JSON ({e})") from None
    ok = isinstance(meta, dict) and meta.get("format") == EXPORT_FORMAT
    attrs = meta.get("attributes") if ok else None
    ok = ok and isinstance(attrs, dict) and all(isinstance(v, list) and v for v in attrs.values())
    ok = ok and isinstance(meta.get("z_dim"), int) and isinstance(meta.get("image_size"), int)
    if not ok:
        raise GanscaleError(f"{path}: not a ganscale generator description")
    meta["num_classes"] = [len(v) for v in attrs.values()]
    return meta


def is_onnx(path: Path) -> bool:
    """A .onnx file, or a folder holding generator.onnx and no PyTorch weights."""
    path = Path(path)
    if path.suffix == ".onnx":
        return True
    return (
        path.is_dir()
        and (path / ONNX_FILE).is_file()
        and not any((path / w).is_file() for w in ("generator.safetensors", "model.safetensors"))
    )


def load_engine(path: str | Path, device: str | None = "cpu") -> Engine:
    """Load once: ONNX through onnxruntime (no torch), anything else through PyTorch (``device``
    None: CUDA when there is one)."""
    path = Path(path)
    if not path.exists():
        raise GanscaleError(f"{path}: no such run folder, model folder or generator file")
    if is_onnx(path):
        return OnnxEngine(path, device)
    return TorchEngine(path, device)
