# The two front-door commands (README): `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench bench-speed

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
