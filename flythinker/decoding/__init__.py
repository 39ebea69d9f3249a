"""flythinker.decoding: the concurrent think-while-generating decoding engine (DESIGN §1).

Entry points::

    from flythinker.decoding import generate, stream
    out = generate(model, input_ids, attention_mask, max_new_tokens=128, schedule="concurrent",
                   do_sample=True, temperature=0.7, top_p=0.9, seed=0, tokenizer=tok, stop_strings=["\\n\\n"])
    out.sequences, out.texts, out.settings, out.timings
    for piece in stream(model, input_ids, tokenizer=tok, max_new_tokens=64):
        print(piece, end="")

Schedules: ``sequential`` (reference), ``concurrent`` (picks ``cuda-streams`` / ``two-device`` /
the CPU default), ``threads``, ``processes``. The tokens never depend on the schedule.
"""

from .engine import (
    CPU_CONCURRENT_DEFAULT,
    SCHEDULES,
    DecodingSettings,
    GenerationOutput,
    TextStream,
    Timings,
    generate,
    stream,
)
from .sampling import SamplingSettings, resolve_sampling
from .workers import shutdown_workers

__all__ = [
    "generate",
    "stream",
    "GenerationOutput",
    "DecodingSettings",
    "SamplingSettings",
    "Timings",
    "TextStream",
    "SCHEDULES",
    "CPU_CONCURRENT_DEFAULT",
    "resolve_sampling",
    "shutdown_workers",
]
