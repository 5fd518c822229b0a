"""Two real ranks (processes, gloo): disjoint shards whose union is everything, in lockstep."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    import torch.distributed as dist
    from ganscale.config import DataConfig
    from ganscale.data.loader import build_loader

    cache, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = DataConfig(cache_dir=cache, synthetic_n=64, num_workers=workers, shuffle_buffer=16,
                     pin_memory=False)
    s = build_loader(cfg, image_size=16, batch_size=8, seed=0, rank=rank, world_size=world)
    keys, it = [], s.iter_with_keys()
    for _ in range(s.batches_per_epoch):
        images, labels, ks = next(it)
        keys += ks
        t = torch.ones(1)
        dist.all_reduce(t)  # a collective per batch: unequal batch counts would hang here
        assert t.item() == world
    json.dump({"keys": keys, "bpe": s.batches_per_epoch, "shards": list(s.rank_shards)}, open(out, "w"))
    del it
    import gc; gc.collect()
    dist.barrier()
    dist.destroy_process_group()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_two_ranks_see_disjoint_shards_covering_everything(tmp_path, workers):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cache = tmp_path / "cache"
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(cache), str(tmp_path / f"r{rank}.json"), str(workers)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()[-2000:]
    r = [json.loads((tmp_path / f"r{k}.json").read_text()) for k in range(2)]
    assert r[0]["bpe"] == r[1]["bpe"] == 64 // (2 * 8)
    assert not set(r[0]["shards"]) & set(r[1]["shards"])
    k0 = [k.rsplit("#", 1)[1] for k in r[0]["keys"]]
    k1 = [k.rsplit("#", 1)[1] for k in r[1]["keys"]]
    assert not set(k0) & set(k1)
    assert sorted(k0 + k1, key=int) == [str(i) for i in range(64)]
    # both ranks asked for the corpus at once: built once, no temporary folder left behind
    built = [p.name for p in cache.iterdir() if not p.name.endswith(".lock")]
    assert len(built) == 1 and built[0].startswith("synthetic-")
