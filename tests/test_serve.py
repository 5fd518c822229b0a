"""`ganscale serve`: a real server on 127.0.0.1, driven by HTTP clients and a headless Chromium.

The browser tests need Debian's chromium + chromium-driver and Selenium: they skip without
them locally, and fail under CI=true (CI installs them; see .ci/run).
"""

import base64
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import urllib.request

import pytest
from conftest import REPO
from PIL import Image

pytest.importorskip("fastapi")

_spec = importlib.util.spec_from_file_location("serve_load", REPO / "benchmarks" / "serve_load.py")
serve_load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serve_load)

TILE = 16 + 2  # tiny.yaml's 16 px images, 2 px padding


def train_tiny(out, cache, *extra):
    r = subprocess.run(
        [sys.executable, "-m", "ganscale", "train", "configs/tiny.yaml", "--out", str(out)]
        + ["--set", "train.max_steps=4", "--set", f"data.cache_dir={cache}"]
        + [a for x in extra for a in ("--set", x)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory, corpus_cache):
    run = train_tiny(tmp_path_factory.mktemp("serve") / "run", corpus_cache)
    r = subprocess.run(
        [sys.executable, "-m", "ganscale", "eval", str(run), "--n", "64"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return run


@pytest.fixture(scope="module")
def server(run):
    port = serve_load.free_port()
    proc = serve_load.start_server(run, port)
    yield f"http://127.0.0.1:{port}", proc
    proc.terminate()
    proc.wait(10)


def get_json(url):
    import json

    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def raw_post(url, data, headers=None):
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def png_size(data_url):
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).size


def test_info_has_vocab_and_run_facts(server):
    info = get_json(server[0] + "/api/info")
    assert "blue" in info["attributes"]["hair"] and "red" in info["attributes"]["eyes"]
    f = info["facts"]
    assert (f["step"], f["images_seen"]) == (4, 32)
    ev = f["eval"]
    assert ev["n"] == 64 and set(ev["accuracy"]) == {"hair", "eyes", "joint"}
    assert set(ev["per_value_accuracy"]["hair"]) == set(info["attributes"]["hair"])
    assert "fid_classifier" in ev["metrics"]


def test_generate_grid_tags_and_seed(server):
    url = server[0] + "/api/generate"
    status, data = serve_load.post(url, {"conditions": {"hair": "blue", "eyes": "red"}, "n": 9, "seed": 5})
    assert status == 200
    assert png_size(data["image"]) == (3 * TILE + 2, 3 * TILE + 2) == (data["width"], data["height"])
    assert data["tags"] == ["blue hair red eyes"] * 9 and data["seed"] == 5
    again = serve_load.post(url, {"conditions": {"hair": "blue", "eyes": "red"}, "n": 9, "seed": 5})[1]
    assert again["image"] == data["image"]
    mixed = serve_load.post(url, {"conditions": {"hair": "any", "eyes": "red"}, "n": 20, "seed": 1})[1]
    assert all(t.endswith(" hair red eyes") for t in mixed["tags"]) and len(set(mixed["tags"])) > 1
    rand = serve_load.post(url, {"conditions": {}, "n": 1})[1]
    assert isinstance(rand["seed"], int)  # "random": the seed used comes back, to reproduce it


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b'{"conditions": {"hair": "teal", "eyes": "red"}}', 422, ["teal", "aqua", "hair"]),
        (
            b'{"conditions": {"hair": "blue", "eyes": "red"}, "n": 0}',
            422,
            ["n:", "greater than or equal to 1"],
        ),
        (b'{"n": 10000}', 422, ["n:", "less than or equal to 64"]),
        (b"\x00garbage{{", 400, ["not valid JSON"]),
        (b"[1, 2]", 422, ["JSON object"]),
        (b'{"n": 4, "weights": "/etc/passwd"}', 422, ["weights", "unknown field"]),
        (b'{"truncation": 99}', 422, ["truncation"]),
        (b'{"truncation": 0}', 422, ["truncation", "greater than 0"]),
        (b'{"truncation": 1.5}', 422, ["truncation", "less than or equal to 1"]),
        (b'{"conditions": {"skin": "green"}}', 422, ["unknown attribute", "skin"]),
    ],
)
def test_bad_requests_get_a_clear_error_and_the_server_keeps_serving(server, body, status, words):
    got, raw = raw_post(server[0] + "/api/generate", body)
    import json

    message = json.loads(raw)["error"]
    assert got == status and all(w in message for w in words), message
    assert "\n" not in message
    ok, data = serve_load.post(server[0] + "/api/generate", {"n": 1, "seed": 0})
    assert ok == 200 and data["n"] == 1
    assert server[1].poll() is None


def test_truncation_is_psi_as_in_sample(server, run):
    """psi 1 is no truncation (the same grid as none); psi < 1 pulls faces to G(0, y), as
    `ganscale sample --truncation` does (the same draw_z on both backends)."""
    import numpy as np

    from ganscale.outputs.engines import load_engine

    url = server[0] + "/api/generate"
    body = {"conditions": {"hair": "blue", "eyes": "red"}, "n": 16, "seed": 7}
    none, one = (serve_load.post(url, body | extra)[1] for extra in ({}, {"truncation": 1.0}))
    assert none["image"] == one["image"] and one["truncation"] == 1.0
    info = get_json(server[0] + "/api/info")["truncation"]
    assert (info["min"], info["max"], info["min_exclusive"]) == (0.0, 1.0, True)
    engine = load_engine(run)
    meta = engine.meta
    mean_face = engine.images(
        np.zeros((1, meta["z_dim"]), np.float32),
        np.array([[meta["attributes"]["hair"].index("blue"), meta["attributes"]["eyes"].index("red")]]),
    ).astype(float)

    def spread(data):
        g = np.asarray(
            Image.open(io.BytesIO(base64.b64decode(data["image"].split(",", 1)[1]))).convert("RGB")
        )
        faces = [
            g[2 + r * TILE : r * TILE + TILE, 2 + c * TILE : c * TILE + TILE]
            for r in range(4)
            for c in range(4)
        ]
        return float(np.mean([np.abs(f - mean_face[0]).mean() for f in faces]))

    dist = [spread(serve_load.post(url, body | {"truncation": p})[1]) for p in (1.0, 0.7, 0.4, 0.1)]
    assert all(a > b for a, b in zip(dist, dist[1:], strict=False)), dist


def test_sample_seed_3_is_the_pages_seed_3_pixel_for_pixel(run, tmp_path):
    """One sampling stack: `ganscale sample RUN --seed 3` and the page's API, seed 3, the same
    condition and count, give the same faces, byte for byte (both on the CPU here)."""
    import numpy as np
    from fastapi.testclient import TestClient

    from ganscale.serve.cli import build_app

    r = subprocess.run(
        [sys.executable, "-m", "ganscale", "sample", str(run), "--seed", "3", "--n", "4", "--device", "cpu"]
        + ["--tags", "blue hair red eyes", "--out", f"{tmp_path}/faces/"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    cli_faces = [np.asarray(Image.open(tmp_path / "faces" / f"{i:05d}.png")) for i in range(4)]
    client = TestClient(build_app(run), base_url="http://127.0.0.1")
    body = {"conditions": {"hair": "blue", "eyes": "red"}, "n": 4, "seed": 3}
    data = client.post("/api/generate", json=body).json()
    grid = np.asarray(Image.open(io.BytesIO(base64.b64decode(data["image"].split(",", 1)[1]))).convert("RGB"))
    assert data["ncol"] == 2 and data["tags"] == ["blue hair red eyes"] * 4
    page_faces = [
        grid[2 + r * TILE : r * TILE + TILE, 2 + c * TILE : c * TILE + TILE]
        for r in range(2)
        for c in range(2)
    ]
    for i, (a, b) in enumerate(zip(cli_faces, page_faces, strict=True)):
        assert a.shape == b.shape == (16, 16, 3) and np.array_equal(a, b), f"face {i} differs"
    other = client.post("/api/generate", json=body | {"seed": 4}).json()["image"]
    assert other != data["image"]  # the seed matters: the equality above is not a constant image


def test_oversized_body_and_foreign_host_are_refused(server):
    status, raw = raw_post(server[0] + "/api/generate", b'{"n": 1, "seed": ' + b" " * 20000 + b"1}")
    assert status == 413 and b"bytes" in raw
    status, _ = raw_post(server[0] + "/api/generate", b'{"n": 1}', {"Host": "evil.example"})
    assert status == 400  # a DNS-rebinding page cannot drive a server bound to 127.0.0.1


def test_interpolate_strip_and_gif(server):
    body = {
        "start": {"conditions": {"hair": "blue", "eyes": "red"}, "seed": 1},
        "end": {"conditions": {"hair": "pink", "eyes": "green"}, "seed": 2},
        "frames": 6,
    }
    status, data = serve_load.post(server[0] + "/api/interpolate", body)
    assert status == 200 and png_size(data["image"]) == (6 * TILE + 2, TILE + 2)
    gif = Image.open(io.BytesIO(base64.b64decode(data["gif"].split(",", 1)[1])))
    assert gif.n_frames == 6 and gif.size == (16, 16)
    assert (data["start"]["tags"], data["end"]["tags"]) == ("blue hair red eyes", "pink hair green eyes")
    body["frames"] = 1000
    assert serve_load.post(server[0] + "/api/interpolate", body)[0] == 422


@pytest.mark.slow
def test_load_200_requests_from_8_clients_without_errors(server):
    stats = serve_load.load(server[0], requests=200, clients=8, n=16)
    print(
        f"\nserve load: p50 {stats['p50_ms']} ms, p95 {stats['p95_ms']} ms, {stats['requests_per_s']} req/s"
    )
    assert stats["errors"] == [] and stats["requests"] == 200
    assert server[1].poll() is None


def test_unconditional_run_takes_only_seed_and_count(tmp_path, corpus_cache):
    from fastapi.testclient import TestClient

    from ganscale.serve.cli import build_app

    run = train_tiny(tmp_path / "uncond", corpus_cache, "model.conditional=false")
    client = TestClient(build_app(run), base_url="http://127.0.0.1")
    info = client.get("/api/info").json()
    assert info["conditional"] is False and info["attributes"] == {}
    r = client.post("/api/generate", json={"n": 4, "seed": 2})
    assert r.status_code == 200 and png_size(r.json()["image"]) == (2 * TILE + 2, 2 * TILE + 2)
    r = client.post("/api/generate", json={"n": 4, "conditions": {"hair": "blue"}})
    assert r.status_code == 422 and "unconditional" in r.json()["error"]
    r = client.post("/api/interpolate", json={"start": {"seed": 1}, "end": {"seed": 2}, "frames": 3})
    assert r.status_code == 200


def test_cli_refuses_a_bad_device_and_a_missing_source(tmp_path):
    import typer
    from typer.testing import CliRunner

    from ganscale.errors import GanscaleError
    from ganscale.serve.cli import register

    app = typer.Typer()
    register(app)
    r = CliRunner().invoke(app, ["serve", str(tmp_path / "nope"), "--device", "tpu"])
    assert isinstance(r.exception, GanscaleError) and "tpu" in str(r.exception)
    r = CliRunner().invoke(app, ["serve", str(tmp_path / "nope")])
    assert isinstance(r.exception, GanscaleError) and "no such" in str(r.exception)


# ---------------------------------------------------------------- the page, in a real browser
def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        chromium = None
    if not (chromium and driver):
        message = "needs chromium + chromium-driver (apt-get install chromium chromium-driver) and selenium"
        if os.environ.get("CI") == "true":
            pytest.fail(message + ": CI must install them")
        pytest.skip(message)
    return chromium, driver


@pytest.fixture(scope="session")
def browser_paths():
    """Session scope: set up before the module's trained run, so a skip costs nothing."""
    return _browser()


@pytest.fixture
def browser(browser_paths, tmp_path):
    chromium, driver_path = browser_paths
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(arg)
    opts.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def _wait(driver, condition, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


@pytest.mark.slow
def test_page_generate_download_interpolate_in_chromium(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    d = browser
    d.get(server[0] + "/")
    _wait(d, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    assert "4" in d.find_element(By.ID, "facts-body").text  # step 4 beside the controls
    assert "hair accuracy per colour" in d.find_element(By.ID, "facts-body").text
    Select(d.find_element(By.ID, "attr-hair")).select_by_value("blue")
    Select(d.find_element(By.ID, "attr-eyes")).select_by_value("red")
    for field, value in (("n", "16"), ("seed", "7")):
        box = d.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    d.find_element(By.ID, "generate").click()
    grid = _wait(d, lambda d: (g := d.find_element(By.ID, "grid")).get_attribute("naturalWidth") != "0" and g)
    assert (int(grid.get_attribute("naturalWidth")), int(grid.get_attribute("naturalHeight"))) == (74, 74)
    assert "16 x blue hair red eyes" in d.find_element(By.ID, "tags").text

    d.find_element(By.ID, "download").click()
    path = d.downloads / "ganscale-blue-hair-red-eyes-seed7.png"
    _wait(d, lambda d: path.is_file() and path.stat().st_size > 0)
    assert Image.open(path).size == (74, 74)

    Select(d.find_element(By.ID, "to-hair")).select_by_value("pink")
    Select(d.find_element(By.ID, "to-eyes")).select_by_value("green")
    d.find_element(By.ID, "frames").clear()
    d.find_element(By.ID, "frames").send_keys("8")
    d.find_element(By.ID, "interpolate").click()
    strip = _wait(
        d, lambda d: (s := d.find_element(By.ID, "strip")).get_attribute("naturalWidth") != "0" and s
    )
    assert int(strip.get_attribute("naturalWidth")) == 8 * TILE + 2
    assert "pink hair green eyes" in d.find_element(By.ID, "strip-tags").text
    shot = tmp_path / "serve-screenshot.png"
    d.save_screenshot(str(shot))
    assert Image.open(shot).size[0] > 0
    if os.environ.get("GANSCALE_SCREENSHOT"):  # refresh docs/serve-screenshot.png for the README
        shutil.copyfile(shot, REPO / "docs" / "serve-screenshot.png")

    # a bad count is an error on the page; the page and server keep working
    d.find_element(By.ID, "n").clear()
    d.find_element(By.ID, "n").send_keys("0")
    d.find_element(By.ID, "generate").click()
    _wait(d, lambda d: "n:" in d.find_element(By.ID, "error").text)
    d.find_element(By.ID, "n").clear()
    d.find_element(By.ID, "n").send_keys("4")
    d.find_element(By.ID, "generate").click()
    _wait(
        d, lambda d: d.find_element(By.ID, "error").text == "" and "4 x" in d.find_element(By.ID, "tags").text
    )
