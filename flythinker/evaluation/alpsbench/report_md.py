"""``summary.md``: the paper's table form, the per-track table, and which numbers compare with the paper.

Paper's table form (one line per method, 0–100): T1 and T2 are the paper-judge
``final_score_100`` (0.5·algo + 0.5·API-judge penalty score), T3 the selected-memory accuracy per
distractor level (×100), PA / PF / VRA / CF the paper judge's ``overall_weighted_score`` (×100), EI
the mean of the official EI judge's three dimensions (×100; the official EI prompt emits no
overall score, so this mean is ours), split by language where the ids say it (``english_12``).
A cell is ``–`` when that number was not computed (e.g. no ``--judge-endpoint``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from flythinker.evaluation.alpsbench.data import ABILITY_NAMES

COMPARABLE = (
    ("paper judge: T1/T2 `final_score_100`, T4 `overall_weighted_score` and dimensions", "yes*"),
    (
        "matcher `algo_score_100`, precision / recall / F1 (greedy; hungarian is the other official matcher)",
        "yes (a component)",
    ),
    ("release scorer `main_score` (mean_f1, accuracy, grounding_accuracy)", "no: the release's local proxy"),
    ("T3 accuracy, `whole-pool` method (the LM reads every candidate)", "yes (the paper's protocol)"),
    (
        "T3 accuracy, `lm-rerank` method (the LM picks among a BM25/MiniLM top-k)",
        "no: capped by first-stage recall",
    ),
    ("EI (mean of the three dimensions)", "partly: exact dimensions, our mean"),
    ("`local_judge*` (a local LM's P(yes) / PERM expectation)", "no: a local proxy"),
)
COMPARABLE_NOTE = (
    "*exact to the official code's definitions given the judge's replies; equal to the paper's numbers "
    "only with the paper's judge model behind `--judge-endpoint`."
)
_LANG = re.compile(r"^([A-Za-z]+)_\d+")


def _fmt(x: Any, digits: int = 4) -> str:
    return "–" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def _track_label(track: str) -> str:
    if track.startswith("task4_"):
        ability = track.split("_", 1)[1]
        return f"{track} ({ABILITY_NAMES.get(ability, ability)})"
    return track


def ei_value(paper: Mapping[str, Any]) -> float | None:
    dims = [paper.get(d) for d in ("emotional_grounding", "fact_match", "empathy_quality")]
    return None if any(d is None for d in dims) else sum(dims) / 3


def language_of(benchmark_id: str) -> str | None:
    """``english`` of ``english_77``; ``None`` for ids without a language prefix (``ability5_0``)."""
    m = _LANG.match(benchmark_id)
    return m.group(1).lower() if m and not m.group(1).startswith("ability") else None


def paper_table(summary: Mapping[str, Any]) -> tuple[list[str], dict[str, dict[str, float | None]]]:
    """(columns, {method: {column: value 0–100}}) of the paper's table form."""
    table: dict[str, dict[str, float | None]] = {}
    levels = sorted(
        {int(t["track"].split("_d")[1]) for t in summary["tracks"] if t["track"].startswith("task3_d")}
    )
    columns = ["T1", "T2", *(f"T3 d{lv}" for lv in levels), "PA", "PF", "VRA", "CF", "EI"]
    langs: set[str] = set()
    for s in summary["tracks"]:
        row = table.setdefault(s["method"], {})
        paper = s.get("paper_judge") or {}
        track = s["track"]
        if track in ("task1", "task2"):
            v = paper.get("final_score_100")
            row["T1" if track == "task1" else "T2"] = v
        elif track.startswith("task3_d"):
            row[f"T3 d{track.split('_d')[1]}"] = 100 * s["main_score"]
        elif track.startswith("task4_"):
            name = ABILITY_NAMES.get(track.split("_", 1)[1])
            if name == "EI":
                v = ei_value(paper)
                row["EI"] = None if v is None else 100 * v
                for lang, dims in (s.get("paper_judge_by_language") or {}).items():
                    langs.add(lang)
                    lv = ei_value(dims)
                    row[f"EI {lang}"] = None if lv is None else 100 * lv
            elif name:
                v = paper.get("overall_weighted_score")
                row[name] = None if v is None else 100 * v
    columns += [f"EI {lang}" for lang in sorted(langs)]
    return columns, {m: r for m, r in table.items() if any(v is not None for v in r.values())}


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """The paper's table form, one row per (track, method), T3 by level, and the comparability legend."""
    lines = [f"# AlpsBench — split `{summary.get('split')}`", ""]
    columns, table = paper_table(summary)
    if table:
        lines += [
            "## The paper's table form (0–100)",
            "",
            "| method | " + " | ".join(columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for method, row in table.items():
            lines.append(f"| {method} | " + " | ".join(_fmt(row.get(c), 2) for c in columns) + " |")
        lines += ["", "T1/T2/PA–CF need `--judge-endpoint` (the paper's judges); `–` = not computed.", ""]
    lines += [
        "## Per track",
        "",
        "| track | method | rows | failed | release proxy (metric: score) | matcher algo_score_100 "
        "(greedy / hungarian) | paper judge | local judge (proxy) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary["tracks"]:
        algo = "–"
        if "match_greedy" in s:
            algo = f"{_fmt(s['match_greedy']['algo_score_100'], 2)} / {_fmt(s['match_hungarian']['algo_score_100'], 2)}"
        local = [f"{d} {_fmt(v, 3)}" for d, v in s.get("local_judge", {}).items()]
        if "local_judge_final_score_100" in s.get("match_greedy", {}):
            local.append(
                f"local_judge_final_score_100 {_fmt(s['match_greedy']['local_judge_final_score_100'], 2)}"
            )
        paper = s.get("paper_judge") or {}
        shown = [
            f"{k} {_fmt(v, 3)}"
            for k, v in paper.items()
            if not k.startswith("rows_") and k != "algo_score_100"
        ]
        counts = [f"{k[5:]} {v}" for k, v in paper.items() if k.startswith("rows_") and k != "rows_scored"]
        paper_cell = ", ".join(shown + ([f"({', '.join(counts)})"] if counts else [])) or "–"
        lines.append(
            f"| {_track_label(s['track'])} | {s['method']} | {s['num_rows']} | {_fmt(s.get('failed_rows'))} | "
            f"{s['main_metric']}: {_fmt(s['main_score'])} | {algo} | {paper_cell} | {', '.join(local) or '–'} |"
        )
    for u in summary.get("not_scored", []):
        lines.append(
            f"| {_track_label(u['track'])} | {u['method']} | {u['rows']} | – | not scored: the test split hides "
            f"its references; the file passed the contract check, submit it | – | – | – |"
        )
    by_level = summary.get("task3_accuracy_by_level") or {}
    if by_level:
        levels = sorted({int(lv) for m in by_level.values() for lv in m})
        lines += [
            "",
            "T3 accuracy by distractor level:",
            "",
            "| method | " + " | ".join(f"d{lv}" for lv in levels) + " |",
            "|---|" + "---|" * len(levels),
        ]
        for method, accs in by_level.items():
            lines.append(
                f"| {method} | " + " | ".join(_fmt(accs.get(str(lv), accs.get(lv))) for lv in levels) + " |"
            )
    timing = summary.get("timing") or {}
    if timing.get("model_rows"):
        engine = (summary.get("manifest") or {}).get("engine")
        lines += [
            "",
            f"Model under test ({engine} engine), this invocation: {timing['model_rows']} rows in "
            f"{_fmt(timing['model_s'], 1)} s = {_fmt(timing['model_rows_per_s'], 4)} rows/s "
            f"(loading {_fmt(timing.get('model_load_s'), 1)} s not included).",
        ]
    lines += ["", "## Comparable with the paper?", "", "| number | comparable |", "|---|---|"]
    lines += [f"| {what} | {yes} |" for what, yes in COMPARABLE]
    lines += ["", COMPARABLE_NOTE]
    return "\n".join(lines) + "\n"
