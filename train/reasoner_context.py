"""Training and generation data for ``FlyThinkerConfig(reasoner_context=True)`` (docs/design.md §1).

The reasoner reads the user's profile, the generator does not (or only K tokens of it)::

    generator   x = prefix + content(request, profile ≤ K tokens) + suffix + target      (PromptBuilder)
    reasoner    z = profile block + x                                                    x is z's suffix
    profile block = "<header>\\n\\n<item>\\n\\n…<item>\\n\\n", fitted so that len(z) ≤ max_length

``x`` is exactly what :class:`~flythinker.train.prompts.PromptBuilder` makes with
``profile_tokens=K`` (K = 0: request only); the profile block follows the builder's own rules (whole
items by ``profile_drop`` priority, then a cut item) within ``max_length − reserved target − len(prompt
of x)`` tokens, so the reasoner's sequence is as long as the shared model's single prompt would be.
Labels are x's (−100 on the prompt). :class:`ReasonerContextCollator` left-pads x and z each to its own
width, so their right ends meet: the model's alignment (``flythinker.modeling.reasoner_context``) then
puts reasoner column c + D − 1 on generator column c, i.e. each generator token receives the state of
the reasoner token just before the same token, and the first prompt token the end of the profile block.
Packing is not supported (refused by the model and by ``FinetuneConfig``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .collators import PaddingCollator
from .prompts import PromptBuilder
from .records import PersonalizedRecord


class ReasonerContextBuilder:
    """Generator ids from ``builder`` (set its ``profile_tokens`` to K) plus reasoner ids = profile block + them.

    Example::

        builder = ReasonerContextBuilder(PromptBuilder(tok, max_length=1024, max_target_tokens=256, profile_tokens=0))
        ex = builder.encode(record)          # input_ids, labels, reasoner_input_ids, ... (training)
        gen = builder.encode_prompt(record)  # the same prompts, for flythinker.generate / model.generate
    """

    def __init__(self, builder: PromptBuilder):
        self.builder = builder

    def profile_ids(self, record: PersonalizedRecord, budget: int) -> list[int]:
        """The profile block of ``record`` in at most ``budget`` tokens (none when nothing fits)."""
        if budget <= 0 or not record.profile:
            return []
        block, _ = self.builder.build_content(record, budget, with_request=False)
        return self.builder._tok(block)

    def _with_reasoner(
        self, record: PersonalizedRecord, example: dict[str, Any], reserved: int
    ) -> dict[str, Any]:
        prompt = example["input_ids"][: example["prompt_length"]]
        budget = self.builder.config.max_length - reserved - len(prompt)
        profile = self.profile_ids(record, budget)
        reasoner_ids = profile + list(example["input_ids"])
        return {
            **example,
            "reasoner_input_ids": reasoner_ids,
            "reasoner_attention_mask": [1] * len(reasoner_ids),
            "reasoner_profile_tokens": len(profile),
        }

    def encode(self, record: PersonalizedRecord) -> dict[str, Any]:
        """``PromptBuilder.encode`` (the generator's example) + ``reasoner_input_ids`` / ``reasoner_attention_mask``
        and ``reasoner_profile_tokens`` (the length of the profile block)."""
        example = self.builder.encode(record)
        config = self.builder.config
        n_target = len(example["input_ids"]) - example["prompt_length"]
        reserved = config.max_target_tokens + 1 if config.reserve_target else n_target
        return self._with_reasoner(record, example, reserved)

    def encode_prompt(self, record: PersonalizedRecord) -> dict[str, Any]:
        """The generation prompts: ``PromptBuilder.encode_prompt`` + the reasoner's (same as in :meth:`encode`
        when ``reserve_target=True``)."""
        example = self.builder.encode_prompt(record)
        return self._with_reasoner(record, example, self.builder.config.max_target_tokens + 1)

    __call__ = encode


class ReasonerContextCollator:
    """Left-pads the generator's (``input_ids``, ``labels``) and the reasoner's ids, each to its own width.

    Returns ``input_ids``, ``attention_mask``, ``labels`` (when the features have them),
    ``reasoner_input_ids`` and ``reasoner_attention_mask``: what ``FlyThinkerForCausalLM.forward`` takes.
    """

    def __init__(self, pad_token_id: int, *, pad_to_multiple_of: int | None = None):
        self.pad = PaddingCollator(pad_token_id, padding_side="left", pad_to_multiple_of=pad_to_multiple_of)

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        missing = [i for i, f in enumerate(features) if "reasoner_input_ids" not in f]
        if missing:
            raise ValueError(
                f"features {missing} have no reasoner_input_ids: encode them with ReasonerContextBuilder"
            )
        generator = self.pad(
            [{k: f[k] for k in ("input_ids", "labels") if f.get(k) is not None} for f in features]
        )
        reasoner = self.pad([{"input_ids": f["reasoner_input_ids"]} for f in features])
        return {
            **generator,
            "reasoner_input_ids": reasoner["input_ids"],
            "reasoner_attention_mask": reasoner["attention_mask"],
        }
