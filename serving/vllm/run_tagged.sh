#!/usr/bin/env bash
# Usage: run_tagged.sh LIMIT_S COMMAND [ARGS...]
#
# Runs COMMAND with a wall-clock limit and, however it ends (success, failure, timeout, or this script
# being interrupted / terminated), ends every process it started. vLLM engines are grandchildren
# (pytest -> driver -> VLLM::EngineCore -> VLLM::Worker, ~2 GiB on CPU) and `vllm serve` is started in a
# session of its own, so neither the process group nor the parent links find them all once a parent
# is killed. Instead every process started here carries one environment tag (inherited through fork,
# exec and setsid); at the end every process whose environment holds the tag gets SIGTERM, and SIGKILL
# after a grace period. Exit status: COMMAND's, 124 on timeout (137 if it needed SIGKILL), 130/143
# when interrupted.
set -uo pipefail
if [ $# -lt 2 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
    echo "usage: run_tagged.sh LIMIT_S COMMAND [ARGS...]  (LIMIT_S: whole seconds)" >&2
    exit 2
fi
limit="$1"
shift
grace="${RUN_TAGGED_GRACE_S:-10}"
export RUN_TAGGED_ID="run-tagged-$$-$RANDOM$RANDOM"

tagged() {  # pids whose environment holds our tag, less this shell and the subshell running this
    local path pid
    while IFS= read -r path; do
        pid="${path#/proc/}"
        pid="${pid%%/*}"
        [ "$pid" != "$$" ] && [ "$pid" != "$BASHPID" ] && echo "$pid"
    done < <(env -u RUN_TAGGED_ID grep -lsxzF "RUN_TAGGED_ID=$RUN_TAGGED_ID" /proc/[0-9]*/environ)
}

end_all() {
    local pids left i
    pids="$(tagged)"
    [ -z "$pids" ] && return 0
    echo "[run_tagged] ending $(echo "$pids" | wc -w) leftover process(es): $(echo $pids)" >&2
    kill -TERM $pids 2>/dev/null
    for ((i = 0; i < grace; i++)); do
        sleep 1
        left="$(tagged)"
        [ -z "$left" ] && return 0
    done
    echo "[run_tagged] SIGKILL to: $(echo $left)" >&2
    kill -KILL $left 2>/dev/null
    return 0
}

trap end_all EXIT
trap 'echo "[run_tagged] interrupted" >&2; exit 130' INT
trap 'echo "[run_tagged] terminated" >&2; exit 143' TERM

# `timeout` ends COMMAND's process group at the limit; end_all then ends what escaped it (new sessions).
# COMMAND runs in the background so that a signal to this script is handled at once (`wait` returns).
timeout --kill-after="$grace" "$limit" "$@" &
wait $!
status=$?
if [ "$status" -eq 124 ]; then
    echo "[run_tagged] timed out after $limit s: $*" >&2
elif [ "$status" -eq 137 ]; then
    echo "[run_tagged] killed (SIGKILL: past the limit's grace period, or out of memory): $*" >&2
fi
exit "$status"
