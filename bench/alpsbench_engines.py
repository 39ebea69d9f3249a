"""AlpsBench rows/s of the model under test per engine, and whether the engines' rows agree.

    PYTHONPATH=. /work/vllm-venv/bin/python bench/alpsbench_engines.py --model smollm2 --out runs/alps-engines

Runs ``flythinker alpsbench run`` once per engine (``--engines hf,vllm`` by default), each in a fresh
process with the same options (T1, T2, T4 of ``--data``; whole-pool T3 only with ``--track`` naming
it), then prints, per engine, the model's rows, seconds and rows/s from ``summary.json``
(``timing``: model loading excluded, and shown apart), and the number of rows whose prediction or
log differs from the first engine's (greedy fp32 engines should agree). Writes ``<out>/engines.json``.
Each engine's run folder is ``<out>/<engine>``; it must not exist (a resumed run would skip rows).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "alpsbench" / "examples"


def read_rows(path: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["benchmark_id"]: r for r in rows}


def differing_rows(first: Path, other: Path) -> int:
    """Rows whose prediction or log entry differs between two run folders (tracks of the first)."""
    count = 0
    for pred in sorted(first.rglob("predictions.jsonl")):
        rel = pred.relative_to(first)
        for name in ("predictions.jsonl", "log.jsonl"):
            a, b = pred.with_name(name), (other / rel).with_name(name)
            if not a.is_file():
                continue
            want, got = read_rows(a), (read_rows(b) if b.is_file() else {})
            count += sum(1 for bid, row in want.items() if got.get(bid) != row)
    return count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2", help="model folder or 'smollm2' (default)")
    p.add_argument(
        "--engines", default="hf,vllm", help="comma-separated: hf, flythinker, vllm (default: hf,vllm)"
    )
    p.add_argument(
        "--data", default=str(FIXTURES), help="AlpsBench data (default: the repository's fixture slice)"
    )
    p.add_argument("--split", default="examples")
    p.add_argument("--track", default="t1,t2,t4")
    p.add_argument("--limit", type=int, default=None, help="rows per track")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-prompt-tokens", type=int, default=1024)
    p.add_argument("--max-new-tokens", type=int, default=64, help="T1/T2 and T4 answer tokens (default: 64)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    engines = [e for e in args.engines.split(",") if e]
    for engine in engines:
        if (out / engine).exists():
            raise SystemExit(f"{out / engine} exists: use another --out (a resumed run would skip rows)")
    results = {}
    for engine in engines:
        command = [
            sys.executable, "-m", "flythinker.cli", "alpsbench", "run", "--data", args.data, "--split",
            args.split, "--track", args.track, "--model", args.model, "--engine", engine, "--t3-protocol",
            "pool", "--baselines", "none", "--batch-size", str(args.batch_size), "--max-prompt-tokens",
            str(args.max_prompt_tokens), "--max-new-tokens", str(args.max_new_tokens), "--t4-max-new-tokens",
            str(args.max_new_tokens), "--no-progress", "--out", str(out / engine),
        ]  # fmt: skip
        if args.limit is not None:
            command += ["--limit", str(args.limit)]
        print("$", " ".join(command), file=sys.stderr, flush=True)
        rc = subprocess.run(command, env=dict(os.environ), stdout=subprocess.DEVNULL).returncode
        summary_path = out / engine / "summary.json"
        if rc not in (0, 1) or not summary_path.is_file():  # 1: every row of a track failed, reports written
            raise SystemExit(f"--engine {engine}: the run failed (exit {rc}); see the messages above")
        timing = json.loads(summary_path.read_text(encoding="utf-8"))["timing"]
        results[engine] = {"exit": rc, **timing}
        if engine != engines[0]:
            results[engine]["rows_differing_from_" + engines[0]] = differing_rows(
                out / engines[0], out / engine
            )
    (out / "engines.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print("| engine | rows | model s | rows/s | load s | rows differing from the first |")
    print("|---|---|---|---|---|---|")
    for engine, r in results.items():
        diff = r.get("rows_differing_from_" + engines[0], "–")
        print(
            f"| {engine} | {r['model_rows']} | {r['model_s']} | {r['model_rows_per_s']} | {r['model_load_s']} | {diff} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
