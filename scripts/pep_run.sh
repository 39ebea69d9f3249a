#!/usr/bin/env bash
# The real-data run of README "Results": FlyThinker vs SFT (and the untrained generator) on the PEP
# abstract-generation data (LongLaMP schema; DATA=the folder of the PEP splits, docs/data.md), SmolLM2-135M as generator and
# reasoner, same prompts and budget for both methods. Sizes are environment variables so the same
# script runs the CPU-sized version (defaults) or a full run on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${DATA:-}
if [ -z "$DATA" ] || [ ! -f "$DATA/user_train.jsonl" ] || [ ! -f "$DATA/user_val.jsonl" ]; then
    echo "scripts/pep_run.sh: DATA=${DATA:-<unset>} is not the folder of the PEP splits (user_train.jsonl, user_val.jsonl);" \
         "set DATA=DIR (docs/data.md says where to get them) or DATA=tests/fixtures/peps for the small test slice" >&2
    exit 2
fi
OUT=${OUT:-runs/pep}
RECORDS=${RECORDS:-48}        # training records (first N of user_train)
STEPS=${STEPS:-6}             # optimizer steps (global batch 8)
MAXLEN=${MAXLEN:-512}         # tokens per training example (profile truncated first)
TARGET=${TARGET:-160}         # max target tokens
NEW=${NEW:-96}                # generated tokens per request
EVAL=${EVAL:-36}              # val records generated for
BASE=$($PY -c "from flythinker.modeling.smollm import smollm2_path; print(smollm2_path())")

common=(--train-file "$DATA/user_train.jsonl" --generator "$BASE" --max-records "$RECORDS" --max-steps "$STEPS"
        --global-batch-size 8 --per-device-batch-size 4 --max-length "$MAXLEN" --max-target-tokens "$TARGET"
        --learning-rate 5e-5 --warmup-ratio 0 --save-steps "$STEPS" --logging-steps 1 --seed 0)
gen=(--data "$DATA/user_val.jsonl" --max-records "$EVAL" --max-length "$MAXLEN" --max-target-tokens "$TARGET"
     --max-new-tokens "$NEW" --batch-size 12)

$PY -m flythinker.cli train "${common[@]}" --method flythinker --reasoner-mode freeze --output-dir "$OUT/flythinker"
$PY -m flythinker.cli train "${common[@]}" --method sft --output-dir "$OUT/sft"
for method in flythinker sft; do
    $PY -m flythinker.cli generate --model "$OUT/$method/model" "${gen[@]}" --run-dir "$OUT/$method/val"
    $PY -m flythinker.cli evaluate --predictions "$OUT/$method/val/predictions.jsonl"
done
$PY -m flythinker.cli generate --model "$BASE" "${gen[@]}" --run-dir "$OUT/zero_shot/val"
$PY -m flythinker.cli evaluate --predictions "$OUT/zero_shot/val/predictions.jsonl"
