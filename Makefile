# The two front-door commands (README): `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench bench-speed gpu-check

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/flythinker demo

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/bench_kernels.py

# Issue 12's tables: training step vs its floor + decoding vs transformers' generate (~12 min, quiet machine).
# DATA: the folder of the PEP splits (docs/data.md), e.g. `make bench-speed DATA=~/data/peps`
bench-speed: setup
	$(PY) bench/speed.py --data "$(DATA)"

# The one prepared GPU check (docs/gpu-check.md): < 8 min on one H100/H200, writes bench/results/gpu_check.*.
# It uses the machine's own Python with torch (.venv when present); without CUDA it exits 2 at once.
GPU_PYTHON ?= $(shell [ -x $(PY) ] && echo $(PY) || echo python3)
gpu-check:
	$(GPU_PYTHON) bench/gpu_check.py
