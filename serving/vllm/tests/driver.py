"""Run one vLLM engine on token-id prompts and write what it produced as JSON (one process per engine).

Usage: ``python driver.py SPEC.json OUT.json``. SPEC holds ``model`` (a save_pretrained directory),
``engine`` (keyword arguments of ``vllm.LLM``), ``rounds`` (lists of prompts, each list one
``generate`` call, so later rounds can hit the prefix cache of earlier ones), ``max_tokens`` and
``logprobs`` (and optionally ``probe``, a model attribute to report). OUT holds, per round and request, the generated ids, the top-k logprobs and
``num_cached_tokens``, plus the engine's counters (preemptions, prefix-cache hits).
"""

from __future__ import annotations

import json
import os
import sys


def counters(llm) -> dict[str, float]:
    """vLLM's counters by name (``vllm:num_preemptions``, ``vllm:prefix_cache_hits``, ...)."""
    values: dict[str, float] = {}
    for metric in llm.get_metrics():
        value = getattr(metric, "value", None)
        if isinstance(value, (int, float)):
            values[metric.name] = values.get(metric.name, 0.0) + float(value)
    return values


def main(spec_path: str, out_path: str) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    with open(spec_path) as handle:
        spec = json.load(handle)
    engine = dict(
        dtype="float32", enforce_eager=True, skip_tokenizer_init=True, seed=0, disable_log_stats=False
    )
    engine.update(spec.get("engine", {}))
    llm = LLM(spec["model"], **engine)
    params = SamplingParams(
        max_tokens=spec.get("max_tokens", 8),
        temperature=0.0,
        logprobs=spec.get("logprobs"),
        detokenize=not engine["skip_tokenizer_init"],
        ignore_eos=True,
    )
    rounds = []
    for prompts in spec["rounds"]:
        outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
        rounds.append(
            [
                {
                    "token_ids": list(out.outputs[0].token_ids),
                    "logprobs": [
                        {str(token): lp.logprob for token, lp in step.items()}
                        for step in (out.outputs[0].logprobs or [])
                    ],
                    "num_cached_tokens": out.num_cached_tokens or 0,
                }
                for out in outputs
            ]
        )
    result = {"rounds": rounds, "counters": counters(llm)}
    if spec.get("probe"):  # a model attribute, read in every worker (e.g. overlapped_steps)
        name = spec["probe"]
        result["probe"] = llm.apply_model(lambda model: getattr(model, name, None))
    with open(out_path, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
