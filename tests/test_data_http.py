"""Shards over HTTP from a real server on 127.0.0.1 (http.server in a thread, stopped at the end
of each test): brace-URL and dataset.json-URL sources, a connection cut mid-shard (resumed at the
byte, with and without Range support), a server that goes away mid-epoch (retries for
data.retry_s, then one line naming the URL, last checkpoint intact) and a resume that sees every
record of the epoch exactly once."""

from __future__ import annotations

import functools
import re
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from faultlib import TINY, record, verify_run

from ganscale.cli import main
from ganscale.config import ConfigError, DataConfig, load_config
from ganscale.corpus.synthetic import ensure_synthetic_corpus
from ganscale.data.loader import ShardStream, build_loader
from ganscale.data.remote import ShardUnavailable
from ganscale.data.sources import iter_records, shard_keys
from ganscale.errors import GanscaleError
from ganscale.runtime import build_runtime
from ganscale.train.checkpoint import latest_checkpoint, read_state
from ganscale.train.trainer import Trainer, plan_for

N, SHARDS, SIZE, B = 256, 16, 16, 8  # the tiny config's synthetic corpus; batch 8 -> 32 steps an epoch
BRACE = "synth-{000000..000015}.tar"


class QuietFiles(SimpleHTTPRequestHandler):
    """Static files; records each request (path, Range header) instead of logging it."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.server.requests.append((self.path, self.headers.get("Range"), int(code)))

    def log_message(self, *args: object) -> None:
        pass


class Server:
    """An HTTP server bound to 127.0.0.1 in a thread; stop() and start() again on the same port."""

    def __init__(self, folder: Path, handler: type = QuietFiles, **attrs: object) -> None:
        self.folder, self.handler, self.attrs = folder, handler, attrs
        self.port, self.requests = 0, []
        self._httpd: ThreadingHTTPServer | None = None
        self.start()

    def start(self) -> None:
        httpd = ThreadingHTTPServer(
            ("127.0.0.1", self.port), functools.partial(self.handler, directory=str(self.folder))
        )
        httpd.daemon_threads = True
        httpd.requests, httpd.folder = self.requests, self.folder
        for k, v in self.attrs.items():
            setattr(httpd, k, v)
        self.port = httpd.server_address[1]
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self._httpd = httpd

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()  # new connections are refused from here on
            self._httpd = None

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def got(self, fragment: str) -> list[tuple[str, str | None, int]]:
        return [r for r in self.requests if fragment in r[0]]


@pytest.fixture
def corpus(corpus_cache) -> Path:
    return ensure_synthetic_corpus(corpus_cache, N, SIZE, 0)


@pytest.fixture
def serve():
    servers: list[Server] = []

    def start(folder: Path, handler: type = QuietFiles, **attrs: object) -> Server:
        servers.append(Server(folder, handler, **attrs))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def all_keys(corpus: Path) -> list[str]:
    return sorted(k for t in sorted(corpus.glob("*.tar")) for k in shard_keys(t))


def stream(path: str, **kw: object) -> ShardStream:
    base = dict(source="shards", path=path, shuffle_buffer=64, pin_memory=False, retry_backoff_s=0.1)
    cfg = DataConfig(**(base | kw))
    return build_loader(cfg, image_size=SIZE, batch_size=B, seed=0, rank=0, world_size=1)


def epoch(s: ShardStream) -> list[tuple]:
    it = s.iter_with_keys()
    return [next(it) for _ in range(s.batches_per_epoch)]


def record_keys(batches: list[tuple]) -> list[str]:
    return [k.rsplit("#", 1)[1] for _, _, ks in batches for k in ks]


def _cli(capsys, argv: list[str]) -> tuple[int, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def _train_argv(run: Path, cache: Path, path: str, *sets: str) -> list[str]:
    argv = ["train", str(TINY), "--out", str(run)]
    for s in (
        f"data.cache_dir={cache}",
        "data.source=shards",
        f"data.path={path}",
        "log.sample_every=0",
        *sets,
    ):
        argv += ["--set", s]
    return argv


# --------------------------------------------------------------------------- sources


def test_tiny_run_trains_from_a_brace_url(corpus, corpus_cache, serve, tmp_path, capsys):
    srv = serve(corpus)
    code, err = _cli(capsys, _train_argv(tmp_path / "run", corpus_cache, srv.url(BRACE), "train.max_steps=4"))
    assert code == 0, err[-3000:]
    assert verify_run(tmp_path / "run")[-1] == 4
    assert srv.got("/dataset.json")  # counts from the manifest beside the shards
    assert len({p for p, _, c in srv.requests if p.endswith(".tar") and c == 200}) >= 4


def test_dataset_json_url_lists_its_shards_relative_to_it(corpus, serve, tmp_path):
    site = tmp_path / "site"
    shutil.copytree(corpus, site / "corpora" / "v1")
    srv = serve(site)
    remote = stream(srv.url("corpora/v1/dataset.json"))
    local = stream(str(corpus))
    assert remote.info.num_records == N and remote.info.num_shards == SHARDS
    assert (
        remote.info.attributes == local.info.attributes and remote.info.shard_sizes == local.info.shard_sizes
    )
    assert all(u.startswith(srv.url("corpora/v1/synth-")) for u in remote.info.shard_urls)
    got, want = epoch(remote), epoch(local)
    assert sorted(record_keys(got)) == all_keys(corpus)  # every record once
    # the same batches as from the folder: augmentation is seeded by the shard's name, not its URL
    assert record_keys(got) == record_keys(want)
    assert all((a[0] == b[0]).all() for a, b in zip(got, want, strict=True))


class CutOnce(BaseHTTPRequestHandler):
    """Serves shards with or without Range support; the first full transfer of each is cut halfway."""

    def log_message(self, *args: object) -> None:
        pass

    def __init__(self, *args: object, directory: str = "", **kw: object) -> None:
        super().__init__(*args, **kw)

    def do_GET(self) -> None:
        srv = self.server
        path = srv.folder / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1)) if rng and srv.ranges else 0
        srv.requests.append((self.path, rng, 206 if start else 200))
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if path.suffix == ".tar" and self.path not in srv.cut:
            srv.cut.add(self.path)
            self.wfile.write(data[: len(data) // 2 + 123])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the client sees a short body
            return
        self.wfile.write(data[start:])


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no-range"])
def test_a_connection_cut_mid_shard_resumes_at_the_byte(corpus, serve, ranges):
    srv = serve(corpus, CutOnce, ranges=ranges, cut=set())
    names = [f"synth-{i:06d}.tar" for i in range(3)]
    remote = [(r["__key__"], r["png"], r["json"]) for r in iter_records([srv.url(n) for n in names])]
    local = [(r["__key__"], r["png"], r["json"]) for r in iter_records([str(corpus / n) for n in names])]
    assert remote == local  # nothing lost, nothing twice
    assert srv.attrs["cut"] == {f"/{n}" for n in names}
    for n in names:  # one cut transfer, then one retry that asked for the rest
        (first, second) = srv.got(n)
        assert first[1] is None and second[1] is not None and second[1].startswith("bytes=")
        assert second[2] == (206 if ranges else 200)


def test_a_missing_remote_shard_is_one_line_not_retried(corpus, serve):
    srv = serve(corpus)
    s = stream(srv.url("synth-{000000..000016}.tar"), retry_s=30)  # 17 named, 16 served
    with pytest.raises(ShardUnavailable) as e:
        for _ in range(3):
            epoch(s)
    msg = str(e.value)
    assert "\n" not in msg and srv.url("synth-000016.tar") in msg and "HTTP 404" in msg
    assert len(srv.got("synth-000016.tar")) == 1  # a wrong URL is not an outage: no retries


def test_retry_keys_are_validated():
    for key, bad in (("retry_s", "-1"), ("retry_backoff_s", "0"), ("timeout_s", "nan")):
        with pytest.raises(ConfigError, match=f"data.{key}"):
            load_config(TINY, [f"data.{key}={bad}"])
    assert load_config(TINY, ["data.retry_s=0"]).data.retry_s == 0


# --------------------------------------------------------------------------- outages


class Tars503(QuietFiles):
    """dataset.json is served; every shard answers 503 (an overloaded server)."""

    def do_GET(self) -> None:
        if self.path.endswith(".tar"):
            self.send_error(503)
            return
        super().do_GET()


def test_workers_outage_is_one_cli_line_naming_the_url(corpus, corpus_cache, serve, tmp_path, capsys):
    srv = serve(corpus, Tars503)
    run = tmp_path / "run"
    argv = _train_argv(
        run,
        corpus_cache,
        srv.url("dataset.json"),
        "data.num_workers=2",
        "data.retry_s=1",
        "data.retry_backoff_s=0.2",
    )
    code, err = _cli(capsys, argv)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err[-3000:]
    line = errors[0]
    assert re.search(rf"shard {re.escape(srv.url())}synth-\d{{6}}\.tar unreachable", line), line
    assert "HTTP 503" in line and "data.retry_s (1 s)" in line and "--resume latest" in line
    assert len(srv.got(".tar")) >= 2  # retried before giving up


class KeyRecorder:
    """The real loader, observed: records the keys of every batch the trainer takes (the batches
    pass unchanged, as the trainer's own loader gives them) and when the stream failed."""

    def __init__(self, stream: ShardStream, on_batch=None) -> None:
        self.stream, self.info, self.on_batch = stream, stream.info, on_batch
        self.batches: list[list[str]] = []
        self.failed_at: float | None = None

    def __iter__(self):
        try:
            for batch in self.stream:
                self.batches.append([k.rsplit("#", 1)[1] for k in batch.keys])
                if self.on_batch is not None:
                    self.on_batch(len(self.batches))
                yield batch
        except GanscaleError:
            self.failed_at = time.monotonic()
            raise

    def stats(self) -> dict[str, int]:
        return self.stream.stats()

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)


def _trainer_run(cfg, run: Path, on_batch=None, resume: str | None = None) -> tuple[KeyRecorder, object]:
    rt = build_runtime(cfg)
    try:
        data = build_loader(
            cfg.data,
            image_size=SIZE,
            batch_size=rt.plan.batch_size,
            seed=cfg.seed,
            rank=0,
            world_size=1,
            output="uint8",  # what the trainer's own loader gives it
        )
        rec = KeyRecorder(data, on_batch)
        try:
            return rec, Trainer(plan_for(cfg, rt, rec), run, rt, resume=resume, data=rec).run()
        except GanscaleError as e:  # the trainer stops every rank on a data error (DataEnded)
            return rec, e
    finally:
        rt.end()


@pytest.mark.faults
def test_server_gone_mid_epoch_then_resume_sees_every_record_once(corpus, corpus_cache, serve, tmp_path):
    srv = serve(corpus)
    retry_s, stop_at = 2.0, 6
    steps = N // B  # one epoch
    cfg = load_config(
        TINY,
        [
            f"data.cache_dir={corpus_cache}",
            "data.source=shards",
            f"data.path={srv.url(BRACE)}",
            f"train.max_steps={steps}",
            "checkpoint.every=4",
            "log.sample_every=0",
            f"data.retry_s={retry_s}",
            "data.retry_backoff_s=0.2",
        ],
    )
    run = tmp_path / "run"
    stopped: list[float] = []

    def stop_server(n: int) -> None:
        if n == stop_at:
            srv.stop()
            stopped.append(time.monotonic())

    first, err = _trainer_run(cfg, run, stop_server)
    assert isinstance(err, GanscaleError) and first.failed_at is not None, err
    took = first.failed_at - stopped[0]
    msg = str(err)  # the CLI prints it as one `error: ...` line
    assert "\n" not in msg, msg
    assert re.search(rf"shard {re.escape(srv.url())}synth-\d{{6}}\.tar unreachable", msg), msg
    assert f"data.retry_s ({retry_s:g} s)" in msg and "--resume latest" in msg
    attempts = int(re.search(r"\((\d+) attempts", msg).group(1))
    assert attempts >= 2 and retry_s <= took < retry_s + 30  # waited the retry time, then stopped

    # the last checkpoint before the failure is intact and records where the epoch stood
    saved = verify_run(run)
    last = latest_checkpoint(run)
    assert saved and last.step == saved[-1] and 4 <= last.step <= len(first.batches)
    position = read_state(last.path)["data"][0]
    assert (position["epoch"], position["batch"]) == (0, last.step)

    srv.start()  # the server is back, on the same port
    second, result = _trainer_run(cfg, run, resume="latest")
    assert not isinstance(result, Exception) and result.step == steps, result
    assert len(second.batches) == steps - last.step
    seen = [k for b in first.batches[: last.step] + second.batches for k in b]
    assert sorted(seen) == all_keys(corpus)  # each record of the epoch exactly once
    record(
        "HTTP server gone mid-epoch",
        1,
        1,
        f"stopped at batch {stop_at}; error after {attempts} attempts naming the URL; "
        f"checkpoint {last.step} intact; resumed, epoch covered once ({len(seen)} records)",
        retry_s=retry_s,
        stop_to_error_s=round(took, 1),
    )
