"""Differential check of the paper-judge scoring against the official AlpsBench code.

    python bench/alpsbench_official_differential.py --official ~/AlpsBench --data benchmark_data/examples

``--official`` is a clone of ThisIsCosine/AlpsBench checked out at 0fd801c. The official
``score_records`` (T1/T2) and the five T4 curators are imported from it (their API call replaced by
canned replies) and compared with :mod:`flythinker.evaluation.alpsbench.official_judges` on the same
replies: random T1 prediction variants with random reviews (every error type, severities in and out
of range, text, Infinity, NaN, fenced and malformed replies), the T1/T2 payload byte for byte, and
canned T4 replies for every ability. Prints the counts; exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import random
import sys
import types
from pathlib import Path

from flythinker.evaluation.alpsbench.official_judges import (
    T4_JUDGE_DIRS,
    OfficialPrompts,
    judge_memory_rows,
    judge_t4_rows,
    memory_judge_payload,
)


class Canned:
    """An endpoint stand-in: request k gets reply k."""

    def __init__(self, texts):
        self.texts = texts

    def complete_many(self, reqs):
        return [self.texts[i] for i in range(len(reqs))]


def load_official(root: Path):
    """Import the official modules with their API call replaced by a canned reply (returned holder)."""
    for name in ("src", "src.agents", "src.agents.task4_memory_grounded_qa"):
        m = types.ModuleType(name)
        m.__path__ = []
        sys.modules[name] = m
    shared = types.ModuleType("src.agents.shared")
    sys.modules["src.agents.shared"] = shared
    canned = {"text": ""}
    shared.call_model_api = lambda *a, **k: canned["text"]

    def load(name, path):
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod

    return canned, load


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", required=True, help="ThisIsCosine/AlpsBench at commit 0fd801c")
    ap.add_argument("--data", required=True, help="a split folder with task1/reference_output.jsonl")
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    off = Path(args.official)
    canned, load = load_official(off)
    cmr = load("src.agents.compare_memory_records", off / "src/agents/compare_memory_records.py")
    prompts = OfficialPrompts.load(off)
    rng = random.Random(args.seed)
    refs = [json.loads(line) for line in open(Path(args.data) / "task1" / "reference_output.jsonl")]
    gold = refs[0]["gold"]["memory_items"]
    kinds = ["VALUE_DRIFT", "HALLUCINATION", "LABEL_WRONG", "TYPE_WRONG", "OVERGENERAL", "UNDERGENERAL",
             "OTHER", "EQUIVALENT", "weird", None]  # fmt: skip
    sevs = [0, 1, 2, 3, 5, -1, 2.7, "2", "2.0", True, None, "Infinity", "NaN", "x"]

    def review_text():
        d = {
            "pair_reviews": [{"error_type": rng.choice(kinds), "severity": rng.choice(sevs)} for _ in range(rng.randint(0, 4))],
            "missing_reviews": [{"should_have_extracted": rng.choice([True, False, "true"]), "severity": rng.choice(sevs)} for _ in range(rng.randint(0, 3))],
            "extra_reviews": [{"hallucinated": rng.choice([True, False]), "severity": rng.choice(sevs)} for _ in range(rng.randint(0, 3))],
        }  # fmt: skip
        t = json.dumps(d).replace('"Infinity"', "Infinity").replace('"NaN"', "NaN")
        r = rng.random()
        if r < 0.15:
            t = "Here you go:\n```json\n" + t + "\n```"
        elif r < 0.2:
            t = "I cannot comply."
        elif r < 0.25:
            t = "[1, 2]"
        return t

    rows, texts = [], []
    for _ in range(args.rows):
        pred = []
        for g in gold:
            if rng.random() < 0.7:
                p = copy.deepcopy(g)
                if rng.random() < 0.5:
                    p["value"] = p["value"][: rng.randint(0, len(p["value"]))] + rng.choice(
                        ["", " extra words"]
                    )
                if rng.random() < 0.3:
                    p["type"] = "indirect"
                if rng.random() < 0.3:
                    p["confidence"] = rng.choice([0.1, 0.5, 1.0, "high", None])
                p["memory_id"] = f"p{len(pred) + 1}"
                pred.append(p)
        if rng.random() < 0.3:
            pred.append({"memory_id": f"p{len(pred) + 1}", "type": "direct", "label": "X/Y", "value": "random fact",
                         "confidence": 0.5})  # fmt: skip
        rows.append((gold, pred))
        texts.append(review_text())
    ours = judge_memory_rows(Canned(texts), prompts, rows)
    agree = both_fail = mismatch = 0
    for (g, p), text, o in zip(rows, texts, ours):
        try:
            res = cmr.score_records(
                {"memory_items": g},
                {"memory_items": p},
                llm_judge=lambda _p, t=text: cmr._extract_json(t),
                matcher="greedy",
            )
            official = (res["llm_score"]["score_100"], res["final_score"]["score_100"])
        except Exception:  # noqa: BLE001 - the official scorer raises on an unparseable reply
            official = None
        if official is None and o["status"] == "judge_failed":
            both_fail += 1
        elif (
            official is not None
            and o["status"] == "ok"
            and (o["llm_score_100"], o["final_score_100"]) == official
        ):
            agree += 1
        else:
            mismatch += 1
            print("MISMATCH", official, o, text[:100])
    print(f"T1/T2: {agree} equal, {both_fail} unparseable in both, {mismatch} mismatches of {len(rows)}")
    g, p = rows[1]
    pairs, miss, extra = cmr.greedy_match(g, p, min_pair_score=0.3, w_label=0.4, w_value=0.4, w_type=0.1,
                                          w_confidence=0.1, token_weight=0.6)  # fmt: skip
    official_payload = cmr.build_judge_payload({"memory_items": g}, {"memory_items": p}, pairs, miss, extra)
    same_payload = json.dumps(official_payload, ensure_ascii=False) == json.dumps(
        memory_judge_payload(g, p)[0], ensure_ascii=False
    )
    print("T1/T2 payload identical:", same_payload)
    t4_texts = [
        '{"alignment": 0.3, "overall_weighted_score": 0.6, "reasoning": "x"}',
        '```json\n{"overall_weighted_score": 0.9}\n```', "no idea", 'text {"overall_weighted_score": 0.25} more',
        '``` {"overall_weighted_score": 1} ```', "[0.5]",
        '{"emotional_grounding": 1, "fact_match": 0.5, "empathy_quality": 0.75}', '{"overall_weighted_score": 0.4,}',
    ]  # fmt: skip
    t4_agree = t4_mismatch = 0
    memory, output = {"memory_id": "m1", "value": "v"}, {"answer": "a", "used_memory_fact": "f"}
    for ability, folder in T4_JUDGE_DIRS.items():
        cur = load(f"src.agents.task4_memory_grounded_qa.{folder}.curator",
                   off / f"src/agents/task4_memory_grounded_qa/{folder}/curator.py")  # fmt: skip
        cls = next(v for k, v in vars(cur).items() if k.endswith("Curator"))
        items = [{"selected_memory": memory, **output}] * len(t4_texts)
        for text, o in zip(t4_texts, judge_t4_rows(Canned(t4_texts), prompts, ability, items)):
            canned["text"] = text
            res = cls().score(memory, output)
            fallback = not isinstance(res, dict) or str(res.get("reasoning", "")).startswith(
                "Failed to parse"
            )
            for d, v in o.items():
                if d in ("status", "critical_rule_violated", "error"):
                    continue
                if fallback:
                    ok = o["status"] == "unparsed" and v == 0.0
                elif d in res:
                    ok = v == res[d]
                else:
                    ok = o["status"] == "incomplete"
                t4_agree += ok
                t4_mismatch += not ok
                if not ok:
                    print("T4 MISMATCH", ability, text[:60], d, v, res)
    print(f"T4: {t4_agree} equal fields, {t4_mismatch} mismatches")
    return 1 if mismatch or t4_mismatch or not same_payload else 0


if __name__ == "__main__":
    sys.exit(main())
