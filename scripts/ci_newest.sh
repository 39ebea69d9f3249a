#!/usr/bin/env bash
# CI step: the newest releases that pyproject.toml allows. `make test` runs against the pinned versions of
# scripts/constraints.txt; this step installs, in a separate venv and without any constraints file, the
# newest transformers / accelerate / peft / trl / safetensors that pyproject.toml's ranges admit (plus the
# HF `kernels` package, which transformers >= 5.25 imports unconditionally) and runs a fast subset of the
# tests, so the next upstream release that breaks flythinker is seen the day it ships.
# Usage: bash scripts/ci_newest.sh [extra pytest args]   (a few minutes; the venv is rebuilt every run)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FLYTHINKER_NEWEST_VENV:-.venv-newest}"
python="${PYTHON:-python3}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"

rm -rf "$venv"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch is the one pin kept (the CPU build that scripts/setup.sh installs): this step watches the
# Hugging Face stack, and a fresh torch download is gigabytes.
"${pip[@]}" "torch==2.13.0"
# The requirement strings, read from pyproject.toml so the ranges live in one place.
mapfile -t specs < <("$venv/bin/python" - <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = {"transformers", "safetensors", "tqdm", "accelerate", "peft", "trl", "datasets", "pytest", "hypothesis",
          "parameterized"}
every = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
for requirement in dict.fromkeys(every):
    if re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].lower() in wanted:
        print(requirement)
PY
)
# A fresh venv: pip takes the newest release in range of everything not installed yet; torch, installed
# above, stays (no eager upgrade, which would replace it with the newest CUDA build).
"${pip[@]}" --no-deps -e .
"${pip[@]}" "${specs[@]}" kernels
"$venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
    | grep -iE '^(torch|transformers|tokenizers|accelerate|peft|trl|kernels|safetensors|huggingface.hub) ' \
    | sed 's/^/[newest] /'

# From the repository root, as a user would run it (the root is first on sys.path: nothing in it may
# shadow an installed package), then the subset: the layers and the root, the model and its generate
# paths, saving/loading, the decoding engine's reference checks, and one fine-tuning run (accelerate,
# peft, trl).
"$venv/bin/python" -m flythinker.cli --help > /dev/null
"$venv/bin/python" -m flythinker.cli --version
"$venv/bin/python" -m pytest -q -p no:cacheprovider --durations=10 \
    tests/test_repository_root.py \
    tests/modeling/test_forward.py tests/modeling/test_generate.py tests/modeling/test_loading.py \
    tests/modeling/test_remote_code.py tests/modeling/test_training.py \
    tests/decoding/test_schedules.py \
    tests/train/test_finetune.py tests/train/test_grpo.py \
    "$@"
