import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# DeepSpeed's CPU accelerator only where there is no GPU to test (ganscale.runtime.env does the
# same for runs). On CUDA, cuBLAS's deterministic workspace from the first handle on: the tests
# compare resumed runs bit for bit (configs/tiny.yaml: train.deterministic).
if torch.cuda.is_available():
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
else:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(autouse=True)
def _environment_restored():
    """A test's changes to os.environ end with it: an in-process DeepSpeed runtime describes a
    one-process group there (RANK, WORLD_SIZE, MASTER_PORT ...), and a later test's
    subprocess would inherit it and try to listen on the same port."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def corpus_cache(tmp_path_factory) -> Path:
    """One cache folder for the built-in synthetic corpus, shared by every test of the session."""
    return tmp_path_factory.mktemp("ganscale-cache")


@pytest.fixture
def tiny_overrides(corpus_cache) -> list[str]:
    return [f"data.cache_dir={corpus_cache}"]


# --- fault drills: print the drill numbers at the end of `pytest -m faults` (tests/faultlib.py)
def pytest_terminal_summary(terminalreporter):
    import sys

    faultlib = sys.modules.get("faultlib")
    if faultlib is None or not faultlib.RESULTS:
        return
    terminalreporter.section("fault drills")
    for line in faultlib.table():
        terminalreporter.write_line(line)
