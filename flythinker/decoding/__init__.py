"""flythinker.decoding: the concurrent think-while-generating decoding engine (docs/design.md §1).

Entry points::

    from flythinker.decoding import generate, stream
    out = generate(model, input_ids, attention_mask, max_new_tokens=128, schedule="concurrent",
                   do_sample=True, temperature=0.7, top_p=0.9, seed=0, tokenizer=tok, stop_strings=["\\n\\n"])
    out.sequences, out.texts, out.settings, out.timings
    for piece in stream(model, input_ids, tokenizer=tok, max_new_tokens=64):
        print(piece, end="")

Schedules: ``sequential`` (reference), ``concurrent`` (the default: picks ``cuda-streams`` /
``two-device`` / a worker process on CPU), ``threads``, ``processes``. The tokens never depend on the
schedule. Modules: ``settings`` (options, checks), ``state`` (per-row state, outputs), ``engine`` (the
loop), ``sampling``, ``stopping``, ``steps`` (the two halves of a step), ``runners`` / ``process_runner``
/ ``workers`` (where the reasoner runs; the worker process pool).
"""

from .engine import TextStream, generate, stream
from .settings import (
    CPU_CONCURRENT_DEFAULT,
    SCHEDULES,
    DecodeOptions,
    DecodingSettings,
    SamplingSettings,
    resolve_sampling,
)
from .state import GenerationOutput, Timings
from .workers import WorkerDied, WorkerStartError, shutdown_workers, worker_pids

__all__ = [
    "generate",
    "stream",
    "GenerationOutput",
    "DecodeOptions",
    "DecodingSettings",
    "SamplingSettings",
    "Timings",
    "TextStream",
    "SCHEDULES",
    "CPU_CONCURRENT_DEFAULT",
    "resolve_sampling",
    "shutdown_workers",
    "worker_pids",
    "WorkerDied",
    "WorkerStartError",
]
