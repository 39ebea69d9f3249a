"""Prompt building: profile rendering, chat template, token-level truncation, label masking.

A record becomes one chat::

    system: <system_prompt>
    user:   <profile_header>\\n\\n<item 1>\\n\\n<item 2> ... \\n\\n<request>
    assistant: <target><end token>

rendered by the tokenizer's own chat template (``apply_chat_template`` with
``add_generation_prompt=True``). The template is rendered once with a sentinel user message and
split into a *prefix* (everything before the user content) and a *suffix* (end of the user turn +
the generation prompt); both are tokenized once and copied verbatim into every example, so the
template is never cut. The user content is tokenized as one string between them.

Token budget (``L = max_length``, ``T = max_target_tokens``)::

    target      = tokens(target)[:T] + [end token]                         (≤ T + 1 tokens)
    prompt      = prefix + tokens(content) + suffix                        (≤ L − (T + 1) tokens)

By default the prompt budget reserves the whole ``T + 1`` (``reserve_target=True``), so the prompt
of a record is the same in training and in generation and the number of profile items kept never
depends on the target's length. When the prompt is too long the content is shortened in this
order, stopping as soon as it fits:

1. drop whole profile items — oldest first (``profile_drop="oldest"``: by ``date`` when every item
   has one, else the source order, which LongLaMP sorts by date) or least relevant first
   (``"least_relevant"``: score = |W(item) ∩ W(request)| / |W(request)| with W the set of
   lower-cased alphanumeric words minus a small stop-word list; ties drop the older item);
2. when no whole item fits, keep the beginning of the highest-priority item cut at the token level
   (marked with "…") if at least ``min_item_tokens`` of it fit;
3. only then cut the request (keeping its beginning); if even the template alone does not fit,
   raise ``ValueError``.

Kept items are shown in source order. Labels are -100 on every prompt token; the target tokens and
the end token are the labels. ``profile_tokens = K`` caps the user content at ``tokens(request) + K``
(the same rules then keep at most about K tokens of profile; K = 0 leaves the profile out).

Rendering the items and ranking them for dropping live in ``profile_text.py`` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from flythinker.train.profile_text import ITEM_SEP as _ITEM_SEP
from flythinker.train.profile_text import drop_order as drop_order
from flythinker.train.profile_text import relevance_scores as relevance_scores
from flythinker.train.profile_text import render_profile as render_profile
from flythinker.train.profile_text import render_profile_item as render_profile_item
from flythinker.train.records import PersonalizedRecord

IGNORE_INDEX = -100

DEFAULT_SYSTEM_PROMPT = (
    "You are a writing assistant. Write in the personal style of the user whose earlier writing is shown: "
    "match their vocabulary, tone, structure and length."
)
DEFAULT_PROFILE_HEADER = "Earlier writing by this user:"

_SENTINEL = "\u2063FLYTHINKER_USER_CONTENT\u2063"
_ELLIPSIS = "…"


# -------------------------------------------------------------------------------------- builder
@dataclass(frozen=True)
class PromptConfig:
    """Options of :class:`PromptBuilder` (see the module docstring for the budget rules).

    Attributes:
        max_length: maximum total tokens of a training example (prompt + target + end token).
        max_target_tokens: the target is cut to this many tokens; the end token comes on top.
        profile_drop: ``"oldest"`` or ``"least_relevant"``.
        reserve_target: budget the prompt as if the target had ``max_target_tokens`` (default), so
            the prompt does not depend on the target; ``False`` lets short targets leave more room
            for the profile (training prompts then differ from generation prompts).
        system_prompt: the system message (``None``: no system message).
        profile_header: line before the profile items (omitted when no item is kept).
        min_item_tokens: a cut profile item must keep at least this many tokens, else it is dropped.
        end_token: token appended to the target (default: ``tokenizer.eos_token``; for ChatML
            models this must be the end-of-turn ``<|im_end|>``).
        profile_tokens: at most ``tokens(request) + profile_tokens`` content tokens (0: no profile in
            the prompt, e.g. when a reasoner reads it instead); ``None``: as many as fit.
    """

    max_length: int = 2048
    max_target_tokens: int = 512
    profile_drop: str = "oldest"
    reserve_target: bool = True
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    profile_header: str = DEFAULT_PROFILE_HEADER
    min_item_tokens: int = 16
    end_token: str | None = None
    profile_tokens: int | None = None


def _ids(encoded: Any) -> list[int]:
    """input ids from whatever ``tokenizer(...)`` / ``apply_chat_template`` returned."""
    if isinstance(encoded, Mapping):
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    if encoded and isinstance(encoded[0], list):
        (encoded,) = encoded
    return list(encoded)


class PromptBuilder:
    """Turns :class:`PersonalizedRecord` s into token ids for training and generation.

    Args:
        tokenizer: a 🤗 tokenizer with a chat template.
        config: a :class:`PromptConfig`; keyword ``overrides`` replace its fields.

    Example::

        builder = PromptBuilder(tok, max_length=1024, max_target_tokens=256)
        ex = builder.encode(record)        # input_ids, attention_mask, labels, prompt_length, ...
        gen = builder.encode_prompt(record)  # the same prompt, for generate()
    """

    def __init__(self, tokenizer: Any, config: PromptConfig | None = None, **overrides: Any):
        config = config or PromptConfig()
        known = {f.name for f in fields(PromptConfig)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown PromptConfig options {sorted(unknown)}; known: {sorted(known)}")
        self.config = replace(config, **overrides)
        self.tokenizer = tokenizer
        cfg = self.config
        if cfg.max_target_tokens < 1:
            raise ValueError(f"max_target_tokens must be >= 1, got {cfg.max_target_tokens}")
        if cfg.profile_drop not in ("oldest", "least_relevant"):
            raise ValueError(f"profile_drop must be 'oldest' or 'least_relevant', got {cfg.profile_drop!r}")
        if cfg.profile_tokens is not None and (
            isinstance(cfg.profile_tokens, bool) or cfg.profile_tokens < 0
        ):
            raise ValueError(f"profile_tokens must be an integer >= 0 or None, got {cfg.profile_tokens!r}")
        end = cfg.end_token if cfg.end_token is not None else tokenizer.eos_token
        if end is None:
            raise ValueError("the tokenizer has no eos_token: pass end_token= (the end-of-turn token)")
        if end == "<|im_start|>":
            raise ValueError(
                "the end token is '<|im_start|>' (SmolLM2's GGUF metadata names it as EOS); the real "
                "end of turn is '<|im_end|>': set tokenizer.eos_token = '<|im_end|>' or pass "
                "end_token='<|im_end|>'"
            )
        end_id = tokenizer.convert_tokens_to_ids(end)
        if end_id is None or (
            tokenizer.unk_token_id is not None
            and end_id == tokenizer.unk_token_id
            and end != tokenizer.unk_token
        ):
            raise ValueError(f"end token {end!r} is not in the tokenizer's vocabulary")
        self.end_token, self.end_token_id = end, int(end_id)
        self.prefix_ids, self.suffix_ids = self._split_template()
        overhead = len(self.prefix_ids) + len(self.suffix_ids) + 1 + cfg.max_target_tokens + 1
        if cfg.max_length < overhead:
            raise ValueError(
                f"max_length={cfg.max_length} is too small: the chat template takes "
                f"{len(self.prefix_ids) + len(self.suffix_ids)} tokens, the target up to "
                f"{cfg.max_target_tokens} + 1 and the request at least 1"
            )

    # ------------------------------------------------------------------ template
    def messages(self, content: str) -> list[dict[str, str]]:
        """The chat messages for a user ``content`` (system message first when configured)."""
        msgs = []
        if self.config.system_prompt is not None:
            msgs.append({"role": "system", "content": self.config.system_prompt})
        msgs.append({"role": "user", "content": content})
        return msgs

    def _split_template(self) -> tuple[list[int], list[int]]:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError("the tokenizer has no chat_template; set tokenizer.chat_template first")
        text = self.tokenizer.apply_chat_template(
            self.messages(_SENTINEL), tokenize=False, add_generation_prompt=True
        )
        if text.count(_SENTINEL) != 1:
            raise ValueError(
                "the chat template does not reproduce the user message verbatim exactly once; "
                "flythinker needs a template that inserts message['content'] unchanged"
            )
        prefix, suffix = text.split(_SENTINEL)
        return self._tok(prefix, template=True), self._tok(suffix, template=True)

    def _tok(self, text: str, *, template: bool = False) -> list[int]:
        """Token ids of ``text``. User text (``template=False``) is tokenized with
        ``split_special_tokens=True``: a literal "<|im_end|>" inside a profile or target stays text
        and cannot close the turn early."""
        if not text:
            return []
        return _ids(self.tokenizer(text, add_special_tokens=False, split_special_tokens=not template))

    def _tok_many(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        out = self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return [list(x) for x in out]

    # ------------------------------------------------------------------ content
    def _content(self, header: str, items: list[str], request: str) -> str:
        body = _ITEM_SEP.join(([header] if header else []) + items) if items else ""
        return f"{body}{_ITEM_SEP}{request}" if body else request

    def render_content(self, record: PersonalizedRecord, keep: Iterable[int] | None = None) -> str:
        """The user-message text with the profile items ``keep`` (indices; default all), untruncated."""
        idx = range(len(record.profile)) if keep is None else sorted(keep)
        items = [render_profile_item(record.profile[i], record.task) for i in idx]
        return self._content(self.config.profile_header, items, record.request)

    def count_tokens(self, text: str) -> int:
        """Number of tokens of user ``text`` as the builder tokenizes it."""
        return len(self._tok(text))

    def build_content(
        self, record: PersonalizedRecord, budget: int | None = None, with_request: bool = True
    ) -> tuple[str, dict[str, Any]]:
        """The user-message text for ``record`` fitted into ``budget`` content tokens.

        Returns ``(content, info)`` with ``info`` = ``num_profile_items``,
        ``num_profile_items_kept``, ``profile_item_truncated``, ``request_truncated``.
        ``budget=None`` keeps everything. ``with_request=False``: the profile part alone (header and
        items, each followed by the separator; "" without items), items still ranked against the request.
        """
        cfg = self.config
        request = record.request if with_request else ""
        rendered = [render_profile_item(it, record.task) for it in record.profile]
        keep_priority = drop_order(record.profile, record.request, cfg.profile_drop, record.task)[::-1]
        info = {
            "num_profile_items": len(rendered),
            "num_profile_items_kept": 0,
            "profile_item_truncated": False,
            "request_truncated": False,
        }

        def assemble(kept: Sequence[int], cut: tuple[int, str] | None = None) -> str:
            texts = [cut[1] if cut is not None and i == cut[0] else rendered[i] for i in sorted(kept)]
            return self._content(cfg.profile_header, texts, request)

        if budget is None:
            info["num_profile_items_kept"] = len(rendered)
            return assemble(range(len(rendered))), info

        # additive estimates: separator-first pieces tokenize as they do inside the whole string for
        # byte-level BPE; the exact length is checked (and fixed) below for any tokenizer.
        pieces = self._tok_many(
            [cfg.profile_header or " "] + [_ITEM_SEP + r for r in rendered] + [_ITEM_SEP + request]
        )
        n_header = len(pieces[0]) if cfg.profile_header else 0
        n_items, n_request = [len(p) for p in pieces[1:-1]], len(pieces[-1])
        total = n_header + n_request
        k = 0
        for idx in keep_priority:
            if total + n_items[idx] > budget:
                break
            total += n_items[idx]
            k += 1
        kept = list(keep_priority[:k])
        while kept:  # exact check; drop further if the estimate was optimistic
            content = assemble(kept)
            if len(self._tok(content)) <= budget:
                info["num_profile_items_kept"] = len(kept)
                return content, info
            kept.pop()
        # 2. no whole item fits: keep the beginning of the highest-priority item if enough of it fits
        if rendered:
            best = keep_priority[0]
            room = budget - n_header - n_request - len(self._tok(_ITEM_SEP + _ELLIPSIS))
            item_ids = self._tok(rendered[best])
            m = min(room, len(item_ids) - 1)
            while m >= cfg.min_item_tokens:
                cut_text = self.tokenizer.decode(item_ids[:m]).rstrip() + _ELLIPSIS
                content = assemble([best], cut=(best, cut_text))
                excess = len(self._tok(content)) - budget
                if excess <= 0:
                    info.update(num_profile_items_kept=1, profile_item_truncated=True)
                    return content, info
                m -= max(1, excess)
        content = assemble([])
        if len(self._tok(content)) <= budget:
            return content, info
        # 3. the request alone is too long: keep its beginning
        req_ids = self._tok(record.request)
        m = min(budget, len(req_ids) - 1)
        while m >= 1:
            content = self.tokenizer.decode(req_ids[:m]).rstrip()
            excess = len(self._tok(content)) - budget
            if excess <= 0:
                info["request_truncated"] = True
                return content, info
            m -= max(1, excess)
        raise ValueError(
            f"record of user {record.user_id!r}: not even one request token fits the prompt budget "
            f"of {budget} content tokens (raise max_length)"
        )

    # ------------------------------------------------------------------ encoding
    def prompt_budget(self, n_target: int | None = None) -> int:
        """Tokens available to the user content (the prompt minus the template)."""
        cfg = self.config
        reserved = cfg.max_target_tokens + 1 if (cfg.reserve_target or n_target is None) else n_target
        return cfg.max_length - reserved - len(self.prefix_ids) - len(self.suffix_ids)

    def content_budget(self, record: PersonalizedRecord, n_target: int | None = None) -> int:
        """:meth:`prompt_budget`, capped at ``tokens(request) + profile_tokens`` when that is set."""
        budget = self.prompt_budget(n_target)
        if self.config.profile_tokens is None:
            return budget
        return min(budget, self.count_tokens(record.request) + self.config.profile_tokens)

    def target_ids(self, target: str) -> tuple[list[int], bool]:
        """``(tokens(target)[:max_target_tokens] + [end token], was_cut)``."""
        ids = self._tok(target)
        cut = len(ids) > self.config.max_target_tokens
        return ids[: self.config.max_target_tokens] + [self.end_token_id], cut

    def encode_prompt(self, record: PersonalizedRecord) -> dict[str, Any]:
        """The generation prompt: ``input_ids``, ``attention_mask``, ``prompt_length`` + truncation info.

        Identical to the prompt part of :meth:`encode` when ``reserve_target=True``.
        """
        content, info = self.build_content(record, self.content_budget(record))
        ids = self.prefix_ids + self._tok(content) + self.suffix_ids
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "prompt_length": len(ids), **info}

    def encode(self, record: PersonalizedRecord) -> dict[str, Any]:
        """A training example: ``input_ids``, ``attention_mask``, ``labels`` (-100 on the prompt),
        ``prompt_length``, ``target_truncated`` and the truncation info of :meth:`build_content`."""
        if record.target is None:
            raise ValueError(
                f"record of user {record.user_id!r} has no target; use encode_prompt() for generation"
            )
        target, target_cut = self.target_ids(record.target)
        content, info = self.build_content(record, self.content_budget(record, len(target)))
        prompt = self.prefix_ids + self._tok(content) + self.suffix_ids
        ids = prompt + target
        return {
            "input_ids": ids,
            "attention_mask": [1] * len(ids),
            "labels": [IGNORE_INDEX] * len(prompt) + list(target),
            "prompt_length": len(prompt),
            "target_truncated": target_cut,
            **info,
        }

    __call__ = encode


def encode_records(
    records: Iterable[PersonalizedRecord],
    builder: PromptBuilder,
    *,
    for_generation: bool = False,
    progress: bool = True,
    desc: str = "encoding",
) -> list[dict[str, Any]]:
    """Encode many records (``builder.encode`` or, with ``for_generation``, ``builder.encode_prompt``)
    with a tqdm progress bar."""
    from tqdm.auto import tqdm

    records = list(records)
    fn = builder.encode_prompt if for_generation else builder.encode
    return [fn(r) for r in tqdm(records, desc=desc, disable=not progress, unit="rec")]
