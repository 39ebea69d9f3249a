"""A local causal LM as the harness drives it: chat rendering, batched greedy decoding, next-token reads.

Any transformers causal LM with its tokenizer works, FlyThinker included. Prompts are rendered with
the tokenizer's chat template (a plain ``Role: text`` fallback without one), the assistant turn
optionally pre-filled; batches are left-padded. Decoding is greedy and explicit (no setting
inherited from a checkpoint's generation config): ``model.generate`` (transformers
GenerationMixin), or for a FlyThinker model with ``engine="flythinker"`` our decoding engine.
Batches are formed by prompt length to limit padding; results come back in input order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Messages = list[dict[str, str]]


def render_chat(tokenizer, messages: Messages, prefill: str = "") -> list[int]:
    """Token ids of ``messages`` + an open assistant turn + ``prefill``: the tokenizer's chat template,
    or ``Role: text`` paragraphs when it has none (every local engine renders prompts with this)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefill
        return tokenizer.encode(text, add_special_tokens=False)
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages)
    return tokenizer.encode(text + "Assistant: " + prefill, add_special_tokens=True)


def strip_at_eos(ids: Sequence[int], eos: int | None) -> list[int]:
    """The generated ids before the first ``eos`` (all of them without one)."""
    ids = list(ids)
    return ids[: ids.index(eos)] if eos is not None and eos in ids else ids


class LocalLM:
    """Args:
    model: a transformers causal LM (or ``FlyThinkerForCausalLM``), put in eval mode.
    tokenizer: its tokenizer (a pad token is taken from EOS when missing).
    batch_size: prompts decoded together.
    max_prompt_tokens: the budget prompt builders fit their variable parts into.
    engine: ``"hf"`` (``model.generate``) or ``"flythinker"`` (``flythinker.generate``, FlyThinker models only).
    show_progress: tqdm bars over batches.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 4,
        max_prompt_tokens: int = 2048,
        engine: str = "hf",
        show_progress: bool = True,
        name: str | None = None,
    ) -> None:
        if engine not in ("hf", "flythinker"):
            raise ValueError(f"engine must be 'hf' or 'flythinker', got {engine!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.engine = engine
        self.show_progress = show_progress
        self.name = (
            name or getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        )
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0

    # ------------------------------------------------------------------ rendering
    def render(self, messages: Messages, prefill: str = "") -> list[int]:
        """Token ids of ``messages`` + an open assistant turn + ``prefill``."""
        return render_chat(self.tokenizer, messages, prefill)

    def count(self, messages: Messages, prefill: str = "") -> int:
        return len(self.render(messages, prefill))

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _left_pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r) :] = 1
        device = self._device()
        return ids.to(device), mask.to(device)

    def _batches(self, rows: Sequence[Sequence[int]], desc: str):
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        starts = range(0, len(rows), self.batch_size)
        if self.show_progress and len(rows):
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=desc, unit="batch", leave=False)
        for s in starts:
            yield order[s : s + self.batch_size]

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, desc: str = "generate"
    ) -> list[str]:
        """Greedy continuations (text after the prompt, special tokens dropped), one per prompt."""
        out: list[str] = [""] * len(prompts)
        eos = self.tokenizer.eos_token_id
        for idx in self._batches(prompts, desc):
            ids, mask = self._left_pad([prompts[i] for i in idx])
            new = self._decode(ids, mask, int(max_new_tokens))
            for i, seq in zip(idx, new.tolist()):
                out[i] = self.tokenizer.decode(strip_at_eos(seq, eos), skip_special_tokens=True)
        return out

    def _decode(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        tok = self.tokenizer
        if self.engine == "flythinker":
            from flythinker import decoding
            from flythinker.modeling.modeling_flythinker import FlyThinkerForCausalLM

            if not isinstance(self.model, FlyThinkerForCausalLM):
                raise ValueError(
                    "engine='flythinker' needs a FlyThinkerForCausalLM; use engine='hf' for other models"
                )
            res = decoding.generate(
                self.model,
                ids,
                attention_mask=mask,
                schedule="sequential",
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=self.pad_id,
            )
            return res.sequences[:, ids.shape[1] :]
        seqs = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_k=None,
            top_p=None,
            pad_token_id=self.pad_id,
            eos_token_id=tok.eos_token_id,
        )
        return seqs[:, ids.shape[1] :]

    @torch.no_grad()
    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], desc: str = "score") -> torch.Tensor:
        """log p(next token | prompt) for every prompt: ``[N, V]`` float32 on the CPU."""
        rows: list[torch.Tensor | None] = [None] * len(prompts)
        for idx in self._batches(prompts, desc):
            ids, mask = self._left_pad([prompts[i] for i in idx])
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
            try:
                logits = self.model(
                    input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1
                ).logits[:, -1]
            except TypeError:  # a model without logits_to_keep / position_ids
                logits = self.model(input_ids=ids, attention_mask=mask).logits[:, -1]
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
            for k, i in enumerate(idx):
                rows[i] = logp[k]
        if not rows:
            return torch.empty(0, 0)
        return torch.stack(rows)  # type: ignore[arg-type]

    def token_ids(self, words: Sequence[str]) -> list[int]:
        """Every single-token id spelling one of ``words`` (with and without a leading space)."""
        vocab = self.tokenizer.get_vocab()
        ids: set[int] = set()
        for w in words:
            for spelling in (w, f" {w}"):
                enc = self.tokenizer.encode(spelling, add_special_tokens=False)
                if len(enc) == 1:
                    ids.add(int(enc[0]))
            for token in (w, f"▁{w}", f"Ġ{w}"):
                if token in vocab:
                    ids.add(int(vocab[token]))
        return sorted(ids)


def resolve_device(device: str) -> torch.device:
    """``auto`` → ``cuda`` when available, else ``cpu``; a CUDA device without CUDA is refused."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"--device {device!r}: not a torch device (cpu, cuda, cuda:1, auto)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return dev


def load_local_lm(path: str, *, dtype: str = "float32", device: str = "cpu", **kwargs) -> LocalLM:
    """A :class:`LocalLM` from a saved model directory (FlyThinker or any causal LM), or ``smollm2``
    for the packaged SmolLM2-135M-Instruct, placed on ``device`` (``auto``: CUDA when available).

    ``show_progress=False`` also silences the loading bars of transformers / huggingface_hub."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import flythinker.modeling  # noqa: F401  (registers the FlyThinker architecture)

    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"--dtype {dtype!r}: expected float32, bfloat16 or float16")
    torch_dtype = getattr(torch, dtype)
    target = resolve_device(device)
    if not kwargs.get("show_progress", True):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        except ImportError:  # an old huggingface_hub: transformers' switch is enough
            pass
    if path == "smollm2":
        from flythinker.modeling.smollm import load_smollm2

        model, tokenizer = load_smollm2(dtype=torch_dtype)
        return LocalLM(model.to(target), tokenizer, name="SmolLM2-135M-Instruct", **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LocalLM(model.to(target), tokenizer, name=str(path), **kwargs)
