"""`--inception download`: the pinned file fetched once, checked, cached; refused when its
checksum differs; one line when offline. Against a local HTTP server serving a small
stand-in TorchScript file with its own checksum: nothing leaves the machine."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from pathlib import Path

import pytest
import torch

from ganscale.errors import GanscaleError
from ganscale.evaluation.features import InceptionFeatures, load_inception
from ganscale.evaluation.weights_download import INCEPTION_2015_12_05, PinnedFile
from ganscale.runtime.env import CACHE_ENV, INCEPTION_ENV, cache_dir, inception_weights


class _StyleganLike(torch.nn.Module):
    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return torch.stack([x.mean((2, 3)), x.std((2, 3))], 1).flatten(1)


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("standin") / "inception.pt"
    torch.jit.script(_StyleganLike()).save(str(path))
    return path.read_bytes()


class _Server:
    """http.server on 127.0.0.1 in a thread: serves ``files`` by path and counts requests."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.requests = files, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                outer.requests.append(self.path)
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(stand_in):
    s = _Server({"/metrics/inception-2015-12-05.pt": stand_in, "/other.pt": b"not the file"})
    yield s
    s.close()


def pinned(url: str, data: bytes) -> PinnedFile:
    return PinnedFile(INCEPTION_2015_12_05.name, url, hashlib.sha256(data).hexdigest())


def leftovers(folder: Path) -> list[str]:
    """Files in the cache folder other than lock files."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.exists() else []


def test_download_once_then_the_cache(server, stand_in, tmp_path):
    file = pinned(f"{server.url}/metrics/inception-2015-12-05.pt", stand_in)
    cache = tmp_path / "cache"
    extractor, message = load_inception("download", env_value=None, cache_dir=cache, pinned=file)
    assert isinstance(extractor, InceptionFeatures) and message == ""
    assert extractor.path == cache / file.name and extractor.digest == file.sha256
    assert (cache / file.name).read_bytes() == stand_in and leftovers(cache) == [file.name]
    assert extractor(torch.zeros(2, 3, 8, 8)).shape == (2, 6)
    again, _ = load_inception("download", env_value=None, cache_dir=cache, pinned=file)
    assert again.path == extractor.path
    assert server.requests == ["/metrics/inception-2015-12-05.pt"]  # one request, then the cache
    # GANSCALE_INCEPTION=download means the same; the value is read at the edge (runtime.env)
    assert load_inception(None, env_value="download", cache_dir=cache, pinned=file)[0].path == extractor.path
    assert len(server.requests) == 1


def test_checksum_mismatch_is_refused_and_nothing_is_kept(server, stand_in, tmp_path):
    cache = tmp_path / "cache"
    wrong = PinnedFile(
        INCEPTION_2015_12_05.name, f"{server.url}/other.pt", hashlib.sha256(stand_in).hexdigest()
    )
    with pytest.raises(GanscaleError, match="sha256 .* not the pinned .*refused, nothing kept") as info:
        load_inception("download", env_value=None, cache_dir=cache, pinned=wrong)
    assert "\n" not in str(info.value)
    assert leftovers(cache) == [] and server.requests == ["/other.pt"]
    # a file put in the cache by hand with another checksum is refused too (and left alone)
    (cache / wrong.name).write_bytes(b"something else")
    with pytest.raises(GanscaleError, match=f"{wrong.name}.*not the pinned.*delete it"):
        load_inception("download", env_value=None, cache_dir=cache, pinned=wrong)
    assert len(server.requests) == 1


def test_offline_gives_one_line_that_says_where_to_put_the_file(stand_in, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    file = pinned(f"http://127.0.0.1:{port}/inception-2015-12-05.pt", stand_in)
    cache = tmp_path / "cache"
    extractor, message = load_inception("download", env_value=None, cache_dir=cache, pinned=file)
    assert extractor is None and "\n" not in message
    dest = cache / file.name
    assert message.startswith("Inception FID/KID skipped: could not download")
    assert f"at {dest}" in message and f"curl -fL -o {dest} {file.url}" in message
    assert file.sha256 in message and "--inception download" in message
    assert leftovers(cache) == []
    # the file put where the line says is used, without the network
    dest.write_bytes(stand_in)
    assert load_inception("download", env_value=None, cache_dir=cache, pinned=file)[0].path == dest


def test_nothing_is_downloaded_unless_asked(server, stand_in, tmp_path):
    file = pinned(f"{server.url}/metrics/inception-2015-12-05.pt", stand_in)
    cache = tmp_path / "cache"
    extractor, message = load_inception(None, env_value=None, cache_dir=cache, pinned=file)
    assert extractor is None and "\n" not in message
    assert (
        "--inception download" in message and str(cache / file.name) in message and INCEPTION_ENV in message
    )
    assert server.requests == [] and not cache.exists()
    with pytest.raises(GanscaleError, match="no cache folder"):
        load_inception("download", env_value=None, cache_dir=None, pinned=file)


def test_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert cache_dir() == str(tmp_path / "c")
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == str(tmp_path / "xdg" / "ganscale")
    monkeypatch.setenv(INCEPTION_ENV, "download")
    assert inception_weights() == "download"


def test_the_pinned_file_is_the_standard_one():
    # the detector of stylegan2-ada-pytorch / clean-fid: a TorchScript .pt, never a pickle
    assert INCEPTION_2015_12_05.url.endswith("/metrics/inception-2015-12-05.pt")
    assert INCEPTION_2015_12_05.url.startswith("https://")
    assert len(INCEPTION_2015_12_05.sha256) == 64 and int(INCEPTION_2015_12_05.sha256, 16) >= 0
