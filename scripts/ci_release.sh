#!/usr/bin/env bash
# CI step: a release anyone can install. Builds the sdist and the wheel (dist/), checks what the wheel
# holds (one top-level package, flythinker; the LICENSE; no links), installs the wheel (not editable) into
# a clean venv with the pinned versions of scripts/constraints.txt, and runs scripts/release_smoke.py from
# outside the repository, so the installed copy, not the checkout, is what gets imported. A few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
python="${PYTHON:-python3}"
venv="${FLYTHINKER_RELEASE_VENV:-.venv-release}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
quiet=(--quiet --disable-pip-version-check)

rm -rf dist "$venv" build
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install "${quiet[@]}" build
"$venv/bin/python" -m build --outdir dist . > /dev/null
wheel="$(ls dist/flythinker-*.whl)"
ls dist

# The wheel: exactly the flythinker package (kernels/ modeling/ train/ mapped inside it), and the license.
"$venv/bin/python" - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
assert tops == {"flythinker"}, f"top-level entries besides flythinker: {sorted(tops)}"
for module in ("flythinker/kernels/injection.py", "flythinker/modeling/modeling_flythinker.py",
               "flythinker/train/readers.py", "flythinker/decoding/engine.py"):
    assert module in names, f"{module} missing from the wheel"
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "LICENSE missing from the wheel"
print(f"[release] {sys.argv[1]}: {len(names)} files, top level {sorted(tops)}, LICENSE included")
PY

# A clean venv with the wheel alone (the CPU torch first, as scripts/setup.sh does).
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install "${quiet[@]}" "torch==2.13.0"
"$venv/bin/python" -m pip install "${quiet[@]}" -c scripts/constraints.txt "$wheel"
cd "$(mktemp -d)"
"$repo/$venv/bin/python" "$repo/scripts/release_smoke.py"
