"""A scripted stand-in for LocalLM (no model): prompts are characters, answers come from a function."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from flythinker.evaluation.alpsbench.data import load_split
from tests.fixtures import ALPSBENCH_EXAMPLES

EXAMPLES = ALPSBENCH_EXAMPLES  # one real row per track (tests/fixtures/alpsbench)


class FakeTokenizer:
    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]


class FakeLM:
    """``respond(prompt_text) -> str`` answers generate(); ``pick(prompt_text) -> digit`` drives next-token reads."""

    name = "fake-lm"

    def __init__(
        self,
        respond=lambda prompt: "",
        pick=lambda prompt: 1,
        max_prompt_tokens=100_000,
        batch_size=2,
        fail_after_calls=None,
    ):
        self.respond, self.pick = respond, pick
        self.max_prompt_tokens, self.batch_size = max_prompt_tokens, batch_size
        self.tokenizer = FakeTokenizer()
        self.prompts: list[str] = []
        self.calls = 0
        self.fail_after_calls = fail_after_calls

    def render(self, messages, prefill=""):
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>" + prefill
        return [ord(c) for c in text]

    def count(self, messages, prefill=""):
        return len(self.render(messages, prefill))

    def generate(self, prompts, max_new_tokens, desc=""):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt  # a killed run
        self.calls += 1
        texts = ["".join(map(chr, p)) for p in prompts]
        self.prompts += texts
        return [self.respond(t) for t in texts]

    def token_ids(self, words):
        table = {str(d): [d] for d in range(1, 10)} | {"yes": [10], "Yes": [10], "no": [11], "No": [11]}
        return sorted({i for w in words for i in table.get(w, table.get(w.lower(), []))})

    def next_token_logprobs(self, prompts, desc=""):
        texts = ["".join(map(chr, p)) for p in prompts]
        self.prompts += texts
        logits = torch.zeros(len(prompts), 16)
        for k, t in enumerate(texts):
            logits[k, int(self.pick(t))] = 5.0
        return torch.log_softmax(logits, -1)


def examples():
    return load_split(EXAMPLES, None, "all")


def replicated(track_data, n):
    """``n`` copies of a track's first row with ids ``<id>#k`` (and their references)."""
    from flythinker.evaluation.alpsbench.data import TrackData

    base = track_data.inputs[0]
    ref = track_data.references[base["benchmark_id"]] if track_data.references else None
    inputs, refs = [], {}
    for k in range(n):
        row = copy.deepcopy(base)
        row["benchmark_id"] = f"{base['benchmark_id']}#{k}"
        inputs.append(row)
        if ref is not None:
            r = copy.deepcopy(ref)
            r["benchmark_id"] = row["benchmark_id"]
            refs[row["benchmark_id"]] = r
    return TrackData(track_data.track, track_data.directory, inputs, refs if ref is not None else None)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
