"""``flythinker evaluate``: ROUGE-1/L, METEOR, BLEU and metrics by output position."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import int_at_least


def run(args: argparse.Namespace) -> int:
    from flythinker.evaluation import (
        compute_metrics,
        metrics_by_position,
        read_predictions_jsonl,
        write_metrics_json,
    )

    rows = read_predictions_jsonl(args.predictions)
    if not rows:
        raise ValueError(
            f"--predictions {args.predictions}: holds no predictions (an empty file); run "
            "`flythinker generate` first, or check the path"
        )
    for number, row in enumerate(rows, 1):
        for field in ("prediction", "reference"):
            if not isinstance(row.get(field), str):
                raise ValueError(
                    f"{args.predictions} record {number}: field {field!r} must be a string, "
                    f"got {type(row.get(field)).__name__}"
                )
    predictions = [row["prediction"] for row in rows]
    references = [row["reference"] for row in rows]
    metrics = compute_metrics(predictions, references, metrics=tuple(args.metrics))
    metrics["by_position"] = metrics_by_position(predictions, references, window_words=args.window_words)
    if metrics["unscorable"]:
        first = metrics["unscorable"][0] + 1
        print(
            f"flythinker evaluate: warning: {len(metrics['unscorable'])} of {len(rows)} records of "
            f"{args.predictions} (the first: record {first}) hold no scorable tokens (no letter, digit or CJK "
            "character, e.g. emoji only): every metric scores them 0; listed as 'unscorable' in the metrics",
            file=sys.stderr,
        )
    output = Path(args.output or Path(args.predictions).with_name("metrics.json"))
    write_metrics_json(output, metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k != "by_position"}, indent=2))
    print(f"metrics written to {output}")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    """Register the command on the ``flythinker`` subparsers."""
    ev = sub.add_parser("evaluate", help="ROUGE-1/L, METEOR, BLEU and metrics by output position")
    ev.add_argument(
        "--predictions", required=True, help="predictions.jsonl with 'prediction' and 'reference'"
    )
    ev.add_argument(
        "--output", default=None, help="metrics JSON (default: metrics.json next to the predictions)"
    )
    ev.add_argument(
        "--metrics",
        nargs="+",
        default=["rouge1", "rougeL", "meteor", "bleu"],
        help="metrics to compute (default: rouge1 rougeL meteor bleu)",
    )
    ev.add_argument(
        "--window-words",
        type=int_at_least(1),
        default=50,
        help="window size in words for the by-position (context drift) analysis (default: 50)",
    )
    ev.set_defaults(func=run)
    return ev
