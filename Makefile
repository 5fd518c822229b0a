# Two commands on a fresh machine: `make demo` (install + train the quick-start ACGAN on the
# built-in corpus + sample grid) and `make test` (install + the test suite; .ci/run calls it).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU build of torch is pinned in the same pip command as everything that asks for torch,
# so nothing resolves a multi-GB CUDA build. On a GPU machine: TORCH_SPEC="torch" make install.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" -e ".[dev,serve]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/ganscale train configs/quickstart.yaml --out runs/quickstart
	$(VENV)/bin/ganscale sample runs/quickstart --n 48 --out runs/quickstart/demo-grid.png --labels --min-cell 64 \
	  --tags "aqua hair orange eyes; blue hair blue eyes; blue hair red eyes; green hair blue eyes; pink hair green eyes; blonde hair purple eyes"
	@echo "demo grid: runs/quickstart/demo-grid.png"

# DS_ACCELERATOR=cpu is set by tests/conftest.py only where CUDA is not available.
test: install
	WANDB_MODE=offline $(VENV)/bin/pytest --durations=20 $(PYTEST_ARGS)

test-fast: install
	WANDB_MODE=offline $(VENV)/bin/pytest -m "not slow and not slurm" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf runs wandb .cache
