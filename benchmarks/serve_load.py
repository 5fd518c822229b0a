"""Load on `ganscale serve`: N generate requests from C concurrent clients, on 127.0.0.1.

    python benchmarks/serve_load.py RUN_OR_EXPORT [--requests 200] [--clients 8] [--n 16] [--device cpu]
    python benchmarks/serve_load.py http://127.0.0.1:7860/ ...   # an already running server

Given a run (or model folder, .safetensors, .onnx) it starts `ganscale serve` on a free port
itself and stops it afterwards. Prints latency p50/p95/max, throughput and the error count;
tests/test_serve.py asserts zero errors, never the timings (they depend on the machine).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SERVE = (
    "import sys, typer; from ganscale.serve.cli import register; "
    "app = typer.Typer(); register(app); app(sys.argv[1:])"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(source: Path, port: int, device: str = "cpu", timeout: float = 120.0) -> subprocess.Popen:
    """`ganscale serve SOURCE --port PORT` in a child process, returned once /api/info answers."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, "serve", str(source), "--port", str(port), "--device", device],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=2):
                return proc
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not answer within the timeout")


def post(url: str, body: dict, timeout: float = 60.0) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def load(base: str, requests: int = 200, clients: int = 8, n: int = 16, conditional: bool = True) -> dict:
    """Fire ``requests`` generate calls from ``clients`` threads; latencies in ms, errors listed."""
    url = base.rstrip("/") + "/api/generate"

    def one(i: int) -> tuple[float, str | None]:
        body: dict = {"n": n, "seed": i}
        if conditional:
            body["conditions"] = {"hair": "blue", "eyes": "red"} if i % 2 else {"hair": "any", "eyes": "any"}
        t0 = time.perf_counter()
        try:
            status, data = post(url, body)
        except Exception as e:  # a dropped connection is an error to count, not to raise
            return (time.perf_counter() - t0) * 1000, f"{type(e).__name__}: {e}"
        ms = (time.perf_counter() - t0) * 1000
        ok = status == 200 and data.get("image", "").startswith("data:image/png;base64,")
        ok = ok and len(data.get("tags", [])) == n and data.get("seed") == i
        return ms, None if ok else f"{status}: {str(data)[:200]}"

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    ms = sorted(r[0] for r in results)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {
        "requests": requests,
        "clients": clients,
        "n": n,
        "errors": [e for _, e in results if e],
        "p50_ms": round(q[49], 1),
        "p95_ms": round(q[94], 1),
        "max_ms": round(ms[-1], 1),
        "requests_per_s": round(requests / wall, 1),
        "wall_s": round(wall, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", help="a run/model folder, .safetensors or .onnx, or an http:// URL")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--n", type=int, default=16, help="faces per request")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    proc = None
    if args.target.startswith("http"):
        base = args.target
    else:
        port = free_port()
        proc = start_server(Path(args.target), port, args.device)
        base = f"http://127.0.0.1:{port}"
    try:
        with urllib.request.urlopen(base.rstrip("/") + "/api/info", timeout=10) as r:
            info = json.loads(r.read())
        stats = load(base, args.requests, args.clients, args.n, info["conditional"])
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    print(
        f"{stats['requests']} requests x {stats['n']} faces, {stats['clients']} clients, "
        f"backend {info['backend']}, {info['image_size']} px: p50 {stats['p50_ms']} ms, "
        f"p95 {stats['p95_ms']} ms, max {stats['max_ms']} ms, {stats['requests_per_s']} req/s, "
        f"{len(stats['errors'])} errors"
    )
    for e in stats["errors"][:5]:
        print("  error:", e)
    sys.exit(1 if stats["errors"] else 0)


if __name__ == "__main__":
    main()
