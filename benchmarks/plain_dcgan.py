"""The canonical DCGAN loop, written plainly for comparison: pytorch/examples' dcgan/main.py
(Radford et al.), re-implemented here from its recipe, on a corpus packed by `ganscale data pack`.

This is the baseline of benchmarks/time_to_quality.py. It imports nothing of ganscale: it reads
the packed corpus's WebDataset tar shards itself (tarfile + PIL), loads every image into one
uint8 tensor once, and trains over shuffled epochs, as a user who never heard of ganscale would:

- Generator: ConvTranspose2d + BatchNorm + ReLU blocks from z [nz, 1, 1] up to the image, tanh
  out; Discriminator: Conv2d + BatchNorm + LeakyReLU(0.2) blocks down to 4x4 (no BatchNorm on
  the first), one 4x4 conv and a sigmoid out. No biases, as in the example.
- weights_init: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02) and biases 0.
- BCELoss, real label 1, fake label 0; Adam lr 2e-4, betas (0.5, 0.999) for both networks;
  z ~ N(0, 1) of nz=100; ngf = ndf = 64; batch 64.
- Per batch: one D step (real batch, then G(z).detach(), each through its own backward), then
  one G step on the same fake with the real label (the non-saturating loss). No EMA.

At 64 px the networks are the example's, layer for layer. At 32 px (the example has no such
size) one up-sampling block of G and one down-sampling block of D are dropped: the widest ones
(ngf*8 / ndf*8), the usual DCGAN-at-32 shape. The example's DataLoader keeps a short last
batch; here the ragged end of an epoch is dropped, so every step sees a batch of 64.

``--seconds B`` is a wall-clock budget counted from this script's start (imports and reading
the corpus included). At 1/4, 1/2, 3/4 of it and at its end the generator is saved:
OUT/snapshot-Kof4/generator.safetensors, snapshot.json beside it (elapsed seconds, steps,
images seen, the network's shape) and grid.png (64 samples of one fixed z, drawn with BatchNorm
in training mode, as the example draws them). SIGUSR1 or SIGTERM ends the run early the same
way (the end snapshot is written at once).

    python benchmarks/plain_dcgan.py --corpus runs/corpora/emoji32 --size 32 --seconds 240 --out /tmp/plain
"""

from __future__ import annotations

import time

START = time.monotonic()  # before torch is imported: the budget counts the imports too

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import signal  # noqa: E402
import tarfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor, nn  # noqa: E402

SNAPSHOTS = (1, 2, 3, 4)  # quarters of the budget
IMAGE_SUFFIXES = ("png", "jpg", "jpeg", "webp", "bmp", "ppm")
GRID_COLS = 8


# --------------------------------------------------------------------------- networks


def n_blocks(size: int) -> int:
    """Stride-2 blocks between 4x4 and ``size``: 4 at 64 px (the example), 3 at 32 px."""
    if size not in (32, 64):
        raise ValueError(f"--size {size}: 32 or 64")
    return int(math.log2(size)) - 2


class Generator(nn.Module):
    """z [B, nz, 1, 1] -> image [B, 3, size, size] in [-1, 1]."""

    def __init__(self, nz: int = 100, ngf: int = 64, size: int = 64, nc: int = 3) -> None:
        super().__init__()
        blocks = n_blocks(size)
        ch = ngf * 2 ** (blocks - 1)  # ngf*8 at 64 px, ngf*4 at 32 px
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, ch, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(True),
        ]
        for _ in range(blocks - 1):
            layers += [
                nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch // 2),
                nn.ReLU(True),
            ]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.main(z)


class Discriminator(nn.Module):
    """image [B, 3, size, size] -> probability of real [B]."""

    def __init__(self, ndf: int = 64, size: int = 64, nc: int = 3) -> None:
        super().__init__()
        blocks = n_blocks(size)
        layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        ch = ndf
        for _ in range(blocks - 1):
            layers += [
                nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch * 2),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, 4, 1, 0, bias=False), nn.Sigmoid()]
        self.main = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x).view(-1)


def weights_init(m: nn.Module) -> None:
    """The example's init: conv N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
    name = m.__class__.__name__
    if "Conv" in name:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif "BatchNorm" in name:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


# --------------------------------------------------------------------------- data


def _decode(data: bytes, suffix: str, meta: dict[str, Any] | None, size: int) -> np.ndarray:
    if suffix == "u8":  # raw pixels (`data pack --format raw`): shape in the record's json
        arr = np.frombuffer(data, dtype=np.uint8).reshape(meta["shape"]) if meta else None
        if arr is None:
            raise ValueError("raw record without its json")
        img = Image.fromarray(arr)
    else:
        img = Image.open(io.BytesIO(data))
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def load_corpus(folder: Path, size: int) -> Tensor:
    """Every image of the packed corpus's shards (``*.tar``), as uint8 [N, 3, size, size]."""
    shards = sorted(Path(folder).glob("*.tar"))
    if not shards:
        raise SystemExit(f"{folder}: no *.tar shards (a folder written by `ganscale data pack`)")
    images = []
    for shard in shards:
        records: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                head, _, base = member.name.rpartition("/")
                key, _, suffix = base.partition(".")  # WebDataset: the key ends at the first dot
                f = tar.extractfile(member)
                if f is not None:
                    records.setdefault(f"{head}/{key}", {})[suffix.lower()] = f.read()
        for rec in records.values():
            meta = json.loads(rec["json"]) if "json" in rec else None
            suffix = next((s for s in (*IMAGE_SUFFIXES, "u8") if s in rec), None)
            if suffix is not None:
                images.append(_decode(rec[suffix], suffix, meta, size))
    if not images:
        raise SystemExit(f"{folder}: no images in {len(shards)} shard(s)")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------- outputs


def save_grid(images: Tensor, path: Path, cols: int = GRID_COLS) -> None:
    """Images in [-1, 1] [N, 3, s, s] as one PNG, ``cols`` per row, 2 px apart."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    n, s = len(x), x.shape[1]
    rows, pad = math.ceil(n / cols), 2
    canvas = np.full((rows * (s + pad) + pad, cols * (s + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(x):
        r, c = divmod(i, cols)
        canvas[
            pad + r * (s + pad) : pad + r * (s + pad) + s, pad + c * (s + pad) : pad + c * (s + pad) + s
        ] = img
    Image.fromarray(canvas).save(path)


def save_snapshot(out: Path, k: int, G: Generator, fixed_z: Tensor, info: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    folder = out / f"snapshot-{k}of4"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {n: t.detach().cpu().contiguous() for n, t in G.state_dict().items()},
        str(folder / "generator.safetensors"),
    )
    with torch.no_grad():  # in training mode (batch statistics), as the example draws its samples
        save_grid(G(fixed_z), folder / "grid.png")
    (folder / "snapshot.json").write_text(json.dumps(info | {"snapshot": f"{k}/4"}, indent=1) + "\n")
    return folder


def load_snapshot(folder: Path, device: str | torch.device = "cpu") -> tuple[Generator, dict[str, Any]]:
    """(G in eval mode, its snapshot.json) of a snapshot folder written by this script."""
    from safetensors.torch import load_file

    info = json.loads((Path(folder) / "snapshot.json").read_text())
    G = Generator(info["nz"], info["ngf"], info["size"])
    G.load_state_dict(load_file(str(Path(folder) / "generator.safetensors")))
    return G.to(device).eval(), info


# --------------------------------------------------------------------------- the loop


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train until the budget ends; returns the last snapshot's info."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stop = {"signal": None}

    def on_signal(signum: int, frame: Any) -> None:
        stop["signal"] = signum

    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, on_signal)

    data = load_corpus(Path(args.corpus), args.size)
    load_s = time.monotonic() - START
    print(f"[plain] {len(data)} images at {args.size} px read in {load_s:.1f} s; device {device}", flush=True)

    G = Generator(args.nz, args.ngf, args.size).to(device)
    D = Discriminator(args.ndf, args.size).to(device)
    G.apply(weights_init)
    D.apply(weights_init)
    criterion = nn.BCELoss()
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
    fixed_z = torch.randn(64, args.nz, 1, 1, device=device)
    real_label, fake_label = 1.0, 0.0
    bs = min(args.batch_size, len(data))

    step, epoch, k = 0, 0, 0
    deadlines = [args.seconds * q / 4 for q in SNAPSHOTS]
    info: dict[str, Any] = {}

    def snapshot_info() -> dict[str, Any]:
        return {
            "elapsed_s": round(time.monotonic() - START, 2),
            "budget_s": args.seconds,
            "steps": step,
            "images_seen": step * bs,
            "epochs": epoch,
            "load_s": round(load_s, 2),
            "nz": args.nz,
            "ngf": args.ngf,
            "ndf": args.ndf,
            "size": args.size,
            "batch_size": bs,
            "seed": args.seed,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "stopped_by": "budget" if stop["signal"] is None else f"signal {stop['signal']}",
        }

    while k < len(SNAPSHOTS):
        order = torch.randperm(len(data))
        for i in range(0, len(data) - bs + 1, bs):
            real = data[order[i : i + bs]].to(device).float().div(127.5).sub(1.0)
            b = real.shape[0]
            # (1) D: maximise log D(x) + log(1 - D(G(z)))
            D.zero_grad()
            label = torch.full((b,), real_label, device=device)
            err_d_real = criterion(D(real), label)
            err_d_real.backward()
            fake = G(torch.randn(b, args.nz, 1, 1, device=device))
            label.fill_(fake_label)
            err_d_fake = criterion(D(fake.detach()), label)
            err_d_fake.backward()
            opt_d.step()
            # (2) G: maximise log D(G(z)), on the same fake
            G.zero_grad()
            label.fill_(real_label)
            err_g = criterion(D(fake), label)
            err_g.backward()
            opt_g.step()
            step += 1
            if args.log_every and step % args.log_every == 0:
                print(
                    f"[plain] step {step} epoch {epoch} {time.monotonic() - START:.0f} s "
                    f"loss_d {(err_d_real + err_d_fake).item():.3f} loss_g {err_g.item():.3f}",
                    flush=True,
                )
            elapsed = time.monotonic() - START
            if stop["signal"] is not None:  # early end: only the end snapshot is left to write
                deadlines = [0.0] * len(SNAPSHOTS)
                k = len(SNAPSHOTS) - 1
            while k < len(SNAPSHOTS) and elapsed >= deadlines[k]:
                info = snapshot_info()
                folder = save_snapshot(out, SNAPSHOTS[k], G, fixed_z, info)
                print(f"[plain] snapshot {folder.name}: step {step}, {info['elapsed_s']:.1f} s", flush=True)
                k += 1
            if k == len(SNAPSHOTS):
                break
        epoch += 1
    (out / "plain.json").write_text(json.dumps(info | {"args": vars(args)}, indent=1, default=str) + "\n")
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, required=True, help="Packed corpus folder (*.tar + dataset.json).")
    p.add_argument("--out", type=Path, required=True, help="Output folder (snapshots, plain.json).")
    p.add_argument("--seconds", type=float, required=True, help="Wall-clock budget from the script's start.")
    p.add_argument("--size", type=int, default=64, choices=(32, 64), help="Image size (default 64).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: PyTorch's default).")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available).")
    p.add_argument("--nz", type=int, default=100, help="Size of z.")
    p.add_argument("--ngf", type=int, default=64, help="G's width.")
    p.add_argument("--ndf", type=int, default=64, help="D's width.")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.0002)
    p.add_argument("--beta1", type=float, default=0.5)
    p.add_argument("--log-every", type=int, default=100, help="Print losses every N steps (0: never).")
    args = p.parse_args(argv)
    if args.seconds <= 0:
        p.error("--seconds must be > 0")
    return args


if __name__ == "__main__":
    train(parse_args())
