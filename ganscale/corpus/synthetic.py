"""The built-in corpus: synthetic faces rendered and packed once into a cache folder.

``cache_dir/synthetic-v<V>-n<N>-s<S>-seed<K>/shards`` holds the shards + ``dataset.json``.
It is built in a temporary folder beside it and renamed into place, under a file lock, so
concurrent callers (every rank of a launch) build it once and never see half a corpus.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from filelock import FileLock

from ganscale.corpus.pack import MANIFEST, write_shards
from ganscale.corpus.synth import SYNTH_VERSION, iter_faces
from ganscale.shardformat.vocab import MLDS_ATTRIBUTES


def synthetic_corpus_name(n: int, size: int, seed: int) -> str:
    return f"synthetic-v{SYNTH_VERSION}-n{n}-s{size}-seed{seed}"


def synthetic_per_shard(n: int) -> int:
    """At least 16 shards, so 2 ranks x 2 workers (and more) stream without resampling."""
    return max(1, n // 16)


def ensure_synthetic_corpus(
    cache_dir: str | Path, n: int, size: int, seed: int, progress: bool = False
) -> Path:
    """Build (once) and return the shard folder of the synthetic corpus (n, size, seed)."""
    cache_dir = Path(cache_dir)
    final = cache_dir / synthetic_corpus_name(n, size, seed)
    shards = final / "shards"
    if (shards / MANIFEST).is_file():
        return shards
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f".{final.name}.lock")):
        if (shards / MANIFEST).is_file():  # another process built it while we waited
            return shards
        if final.exists():  # left by a crash before the manifest: never complete, rebuild
            shutil.rmtree(final)
        if progress:
            print(
                f"building the built-in synthetic corpus ({n} images, {size} px, seed {seed}) in {final} "
                "(once; reused afterwards)",
                file=sys.stderr,
            )
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache_dir))
        try:
            items = ((str(i), img, {"hair": h, "eyes": e}) for i, img, h, e in iter_faces(n, size, seed))
            write_shards(
                items,
                tmp / "shards",
                attributes=dict(MLDS_ATTRIBUTES),
                size=size,
                fmt="png",
                per_shard=synthetic_per_shard(n),
                name="synth",
                layout="synthetic",
                source=f"ganscale data synth --n {n} --size {size} --seed {seed}",
                total=n,
                progress=progress,
                png_level=1,  # a cache: fast to write, decodes as fast as level 6
            )
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return shards
