"""The CPU loss path against the eager loss: is a crossover rule needed? (issue 12, item 1)

    python bench/bench_loss_path.py        # ≈ 1 minute on 2 cores; writes bench/results/loss_path_cpu.{json,md}

For d = 576 (SmolLM2) and vocabularies of 8k, 32k and 49k, N = 256 and 2,048 tokens, with every row
labelled and with half the rows unlabelled (a prompt), forward + backward of

* ``eager``: ``F.cross_entropy(F.linear(h, W).float(), y)`` — builds the [N, V] logits and their gradient;
* ``default``: ``flythinker.kernels.fused_linear_cross_entropy`` — on CPU its chunked PyTorch step
  (labelled rows only, 256 MiB chunks, gradients in the forward pass).

Medians of 3 timed runs after one warm-up, the two interleaved; the ratio is default / eager (lower is
faster). Peak memory is analytic: eager holds at least N·V fp32 logits and their gradient, the default one
fp32 chunk of labelled rows (its gradient overwrites it in place); ``kernels_cpu.md`` measures 0.13× at
2,048 × 32k.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"


def eager(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(h, w).float(), y, ignore_index=-100)


def main() -> dict:
    from flythinker.kernels.host_memory import keep_freed_host_memory
    from flythinker.kernels.linear_cross_entropy import default_chunk_size, fused_linear_cross_entropy

    keep_freed_host_memory()
    torch.manual_seed(0)
    load = list(os.getloadavg())
    rows = []
    for vocab in (8192, 32768, 49152):
        for tokens in (256, 2048):
            for labelled in (1.0, 0.5):
                h = torch.randn(tokens, 576, requires_grad=True)
                w = (torch.randn(vocab, 576) * 0.02).requires_grad_()
                y = torch.randint(0, vocab, (tokens,))
                y[: int(tokens * (1 - labelled))] = -100
                times = {"eager": [], "default": []}
                for r in range(4):
                    for name, fn in (("eager", eager), ("default", fused_linear_cross_entropy)):
                        h.grad = w.grad = None
                        began = time.perf_counter()
                        fn(h, w, y).backward()
                        if r:
                            times[name].append(time.perf_counter() - began)
                t_eager, t_default = (statistics.median(times[k]) for k in ("eager", "default"))
                chunk = default_chunk_size(int((y != -100).sum()), vocab, 576, "cpu")
                rows.append({
                    "vocab": vocab, "tokens": tokens, "labelled": labelled,
                    "eager_ms": 1e3 * t_eager, "default_ms": 1e3 * t_default, "ratio": t_default / t_eager,
                    "eager_logits_mib": 2 * tokens * vocab * 4 / 2**20,
                    "default_chunk_mib": min(chunk, int((y != -100).sum())) * vocab * 4 / 2**20,
                })  # fmt: skip
                print(rows[-1], flush=True)
    report = {"load_average_before": load, "load_average_after": list(os.getloadavg()), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "loss_path_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# CPU loss path vs the eager loss (`python bench/bench_loss_path.py`)",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, d = 576, fp32, forward + backward, "
        f"medians of 3 interleaved runs. Load average before {[round(x, 2) for x in load]}.",
        "",
        "| V | N | labelled | eager ms | default ms | default / eager | eager logits + grad MiB (≥) | default chunk MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['vocab']:,} | {r['tokens']:,} | {r['labelled']:.0%} | {r['eager_ms']:.1f} | {r['default_ms']:.1f} | "
            f"{r['ratio']:.2f} | {r['eager_logits_mib']:,.0f} | {r['default_chunk_mib']:,.0f} |"
        )
    worst = max(r["ratio"] for r in rows)
    lines += ["", f"Slowest default / eager: {worst:.2f}."]
    (RESULTS / "loss_path_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
