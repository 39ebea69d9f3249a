"""The model under test behind an OpenAI-compatible server: ``vllm serve`` (FlyThinker models through
the project's vLLM plugin) or any hosted model, so the dev split runs at GPU-server speed.

It stands in for :class:`~.lm.LocalLM` in the generative runners (T1, T2, T4) and the whole-pool T3
protocol. Prompts are counted with the model's own tokenizer and chat template (``tokenizer``), so
the prompt budget means what it does locally. Requests go through
:class:`~flythinker.rewards.endpoint.ChatEndpoint` (retries, bounded concurrency, an on-disk
cache) with ``temperature=0`` and ``max_tokens`` = the answer budget.

Pre-fill: with ``prefill=True`` (vLLM) the JSON opening is sent as a final assistant message with
vLLM's ``continue_final_message=True, add_generation_prompt=False``, so the reply continues it as a
local run does. Servers without that extension (OpenAI) take ``prefill=False``: the opening is not
sent and the runners read the model's own JSON (they accept a restarted JSON).

Not available here: next-token reads (the T3 re-ranking protocol and the local judges need a local
LM); a run asking for them is refused before any row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flythinker.rewards.endpoint import ChatEndpoint, EndpointError

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class EndpointPrompt:
    """What :meth:`EndpointLM.render` returns: the chat and the assistant pre-fill."""

    messages: tuple
    prefill: str


class EndpointLM:
    """Args:
    endpoint: the server of the model under test.
    tokenizer: the served model's tokenizer (counts prompt tokens with its chat template).
    max_prompt_tokens: the budget prompt builders fit their variable parts into.
    batch_size: rows handed to the server together (the endpoint bounds requests in flight).
    prefill: send the JSON opening as a continued assistant message (vLLM's extension).
    """

    engine = "endpoint"

    def __init__(
        self,
        endpoint: ChatEndpoint,
        tokenizer,
        *,
        max_prompt_tokens: int = 2048,
        batch_size: int = 16,
        prefill: bool = True,
    ) -> None:
        self.endpoint, self.tokenizer = endpoint, tokenizer
        self.max_prompt_tokens, self.batch_size, self.prefill = (
            int(max_prompt_tokens),
            int(batch_size),
            prefill,
        )
        self.name = endpoint.model
        self.show_progress = False

    def render(self, messages: Messages, prefill: str = "") -> EndpointPrompt:
        return EndpointPrompt(tuple(dict(m) for m in messages), prefill if self.prefill else "")

    def count(self, messages: Messages, prefill: str = "") -> int:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
            return len(tok.encode(text + prefill, add_special_tokens=False))
        text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages)
        return len(tok.encode(text + "Assistant: " + prefill, add_special_tokens=True))

    def generate(self, prompts: Sequence[EndpointPrompt], max_new_tokens: int, desc: str = "") -> list[str]:
        """Greedy replies (the continuation after the pre-fill); a request that failed raises."""
        requests = []
        for p in prompts:
            messages = [dict(m) for m in p.messages]
            params = {"temperature": 0, "max_tokens": int(max_new_tokens)}
            if p.prefill:
                messages.append({"role": "assistant", "content": p.prefill})
                params.update(continue_final_message=True, add_generation_prompt=False)
            requests.append((messages, params))
        replies = self.endpoint.complete_many(requests)
        for r in replies:
            if isinstance(r, EndpointError):
                raise r
        return [str(r) for r in replies]

    def next_token_logprobs(self, prompts, desc: str = ""):
        raise NotImplementedError(
            "a model behind --model-endpoint gives no next-token reads: use --t3-protocol pool and no local --judge"
        )

    def token_ids(self, words):
        raise NotImplementedError("a model behind --model-endpoint cannot serve as a local judge")
