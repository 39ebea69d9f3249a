"""What every quality run starts from: model checkpoints on disk, the tokenizer and the encoded data.

The generator is SmolLM2-135M-Instruct (``flythinker.modeling.smollm.smollm2_path``, or tiny random
Llamas with ``--tiny``). The reasoner is the same checkpoint cut to its first ``--reasoner-layers``
decoder layers and saved once to the work folder, so ``flythinker train --reasoner DIR`` reads it like
any checkpoint (``--reasoner-layers 0``: the full model). Data is encoded with the same
``PromptBuilder`` options ``flythinker train`` uses, so measured examples equal trained ones.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from flythinker.train.collators import PaddingCollator
from flythinker.train.finetune import load_tokenizer
from flythinker.train.prompts import PromptBuilder, encode_records
from flythinker.train.readers import read_records
from flythinker.train.reasoner_context import ReasonerContextBuilder, ReasonerContextCollator

__all__ = ["Setup", "View", "prepare", "truncate_layers"]


@dataclasses.dataclass
class View:
    """The experiment's data encoded as one arm's ``flythinker train`` encodes it: the shared prompt, the
    prompt with the profile cut to ``profile_tokens`` or, with ``reasoner_context``, a generator prompt
    without the profile plus the reasoner's profile + prompt (``ReasonerContextBuilder``)."""

    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    temporal: list[dict[str, Any]]
    requests: list[dict[str, Any]]  # encoded generation prompts
    references: list[str]
    collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]]
    probe: list[tuple[dict[str, torch.Tensor], torch.Tensor]]  # (one example's inputs, base generator logits)

    def reasoner_batches(self, n_examples: int, size: int = 4):
        """Batches of the reasoner's inputs (``input_ids``, ``attention_mask``) of the first training examples."""
        for start in range(0, min(n_examples, len(self.train)), size):
            batch = self.collate(self.train[start : start + size])
            if "reasoner_input_ids" in batch:
                yield {
                    "input_ids": batch["reasoner_input_ids"],
                    "attention_mask": batch["reasoner_attention_mask"],
                }
            else:
                yield {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


@dataclasses.dataclass
class Setup:
    generator: Path
    reasoner: Path
    tokenizer: Any
    train_file: Path
    records: dict[str, list[Any]]  # user_train, user_val, temporal_val, requests
    options: Any
    description: str
    views: dict[tuple[bool, int | None], View] = dataclasses.field(default_factory=dict)

    def load_reasoner(self):
        return AutoModel.from_pretrained(self.reasoner, dtype=torch.float32)

    def view(self, reasoner_context: bool = False, profile_tokens: int | None = None) -> View:
        """The data as an arm with these options is trained on (encoded once, then cached)."""
        key = (bool(reasoner_context), profile_tokens)
        if key not in self.views:
            self.views[key] = _encode_view(self, *key)
        return self.views[key]


def truncate_layers(lm: Any, k: int) -> None:
    """Keep the first ``k`` decoder layers of a causal LM (``lm.model.layers``) and fix its config."""
    backbone = lm.get_decoder()
    n = len(backbone.layers)
    if not 0 < k <= n:
        raise ValueError(f"--reasoner-layers {k}: the reasoner has {n} layers (use 1..{n}, or 0 for all)")
    backbone.layers = torch.nn.ModuleList(list(backbone.layers)[:k])
    for config in {id(lm.config): lm.config, id(backbone.config): backbone.config}.values():
        config.num_hidden_layers = k
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = list(config.layer_types)[:k]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with ChatML specials trained on a few strings (any text encodes losslessly)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = ["This PEP proposes a new module.", "Title: Abstract: Generate an abstract", "Earlier writing:"]
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>", bos_token="<|im_start|>"
    )
    fast.chat_template = (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    return fast


def _tiny_generator(folder: Path) -> None:
    tokenizer = tiny_tokenizer()
    torch.manual_seed(1234)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _tiny_data(folder: Path) -> Path:
    from flythinker.train.synthetic import write_synthetic_dataset

    paths = write_synthetic_dataset(folder, n_users=3, n_train=6, n_test=2, min_profile=1, max_profile=3)
    train = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    test = [json.loads(line) for line in paths["test"].read_text().splitlines()]
    for name, rows in (("user_train", train), ("user_val", test), ("temporal_val", test[::-1])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def prepare(options: Any, data_dir: Path | None, work: Path) -> Setup:
    """Checkpoints in ``work``, the tokenizer and the records; views are encoded on first use."""
    from flythinker.modeling.smollm import smollm2_path

    if options.tiny:
        generator = work / "generator"
        _tiny_generator(generator)
        data_dir = data_dir or _tiny_data(work / "data")
        description = "tiny random Llama (hidden 32, 2 layers)"
    else:
        generator = smollm2_path()
        description = "SmolLM2-135M-Instruct generator (30 layers, d 576)"
    tokenizer = load_tokenizer(str(generator))
    lm = AutoModelForCausalLM.from_pretrained(generator, dtype=torch.float32)
    n_layers = len(lm.get_decoder().layers)
    if options.reasoner_layers:
        reasoner = work / f"reasoner-first-{options.reasoner_layers}"
        truncate_layers(lm, options.reasoner_layers)
        lm.save_pretrained(reasoner)
        tokenizer.save_pretrained(reasoner)
        description += f"; reasoner = its first {options.reasoner_layers} of {n_layers} layers"
    else:
        reasoner = Path(generator)
        description += f"; reasoner = the full {n_layers}-layer model"
    train_file = Path(data_dir, "user_train.jsonl")
    val = read_records(Path(data_dir, "user_val.jsonl"))[: options.val_records]
    records = {
        "user_train": read_records(train_file)[: options.train_records],
        "user_val": val,
        "temporal_val": read_records(Path(data_dir, "temporal_val.jsonl"))[: options.val_records],
        "requests": val[: options.gen_requests],
    }
    return Setup(
        generator=Path(generator), reasoner=reasoner, tokenizer=tokenizer, train_file=train_file,
        records=records, options=options, description=description,
    )  # fmt: skip


def _encode_view(setup: Setup, reasoner_context: bool, profile_tokens: int | None) -> View:
    o = setup.options
    builder = PromptBuilder(
        setup.tokenizer, max_length=o.max_length, max_target_tokens=o.max_target_tokens,
        profile_drop="oldest", profile_tokens=profile_tokens,
    )  # fmt: skip
    pad = setup.tokenizer.pad_token_id
    if reasoner_context:
        builder = ReasonerContextBuilder(builder)
        collate = ReasonerContextCollator(pad)
    else:
        collate = PaddingCollator(pad, padding_side="right")
    name = f"reasoner_context={reasoner_context}, profile_tokens={profile_tokens}"
    train = encode_records(setup.records["user_train"], builder, desc=f"user_train ({name})")
    requests = setup.records["requests"]
    return View(
        train=train,
        val=encode_records(setup.records["user_val"], builder, desc=f"user_val ({name})"),
        temporal=encode_records(setup.records["temporal_val"], builder, desc=f"temporal_val ({name})"),
        requests=encode_records(requests, builder, for_generation=True, progress=False),
        references=[r.target for r in requests],
        collate=collate,
        probe=_probe(setup.generator, collate, train[:2]),
    )


@torch.no_grad()
def _probe(generator: Path, collate, examples: Sequence[dict[str, Any]]) -> list[tuple[dict, torch.Tensor]]:
    """Each of ``examples`` alone (no padding) and the base generator's logits on its generator ids:
    every arm's step 0 must give exactly these logits."""
    lm = AutoModelForCausalLM.from_pretrained(generator, dtype=torch.float32).eval()
    out = []
    for example in examples:
        batch = {k: v for k, v in collate([example]).items() if k != "labels"}
        out.append((batch, lm(input_ids=batch["input_ids"]).logits))
    return out
