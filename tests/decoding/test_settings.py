"""Every decoding option is checked before any compute: the error names the option, the value and what
is allowed; generate() and stream() share one set of options and defaults."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from transformers import GenerationConfig

from flythinker.decoding import DecodeOptions, generate, stream
from tests.decoding._helpers import CharTokenizer
from tests.tiny_models import VOCAB, left_padded_batch, tiny_flythinker


@pytest.fixture(scope="module")
def setup():
    model = tiny_flythinker(seed=1)
    input_ids, mask, _ = left_padded_batch([3, 5], seed=1)
    return model, input_ids, mask


BAD = [  # (options, option named in the message, what is allowed)
    (dict(do_sample=True, temperature=math.nan), "temperature", "> 0"),
    (dict(do_sample=True, temperature=0.0), "temperature", "> 0"),
    (dict(do_sample=True, temperature=math.inf), "temperature", "finite"),
    (dict(do_sample=True, temperature="0.5"), "temperature", "> 0"),
    (dict(do_sample=True, temperature=True), "temperature", "> 0"),
    (dict(temperature=math.nan), "temperature", "> 0"),  # checked in greedy mode too
    (dict(repetition_penalty=math.nan), "repetition_penalty", "> 0"),
    (dict(repetition_penalty=-1.0), "repetition_penalty", "> 0"),
    (dict(do_sample=True, top_p=0.0), "top_p", "(0, 1]"),
    (dict(do_sample=True, top_p=1.5), "top_p", "(0, 1]"),
    (dict(do_sample=True, top_p=math.nan), "top_p", "(0, 1]"),
    (dict(do_sample=True, top_k=-1), "top_k", ">= 0"),
    (dict(do_sample=True, top_k=2.5), "top_k", "integer"),
    (dict(do_sample=True, min_p=-0.1), "min_p", "[0, 1]"),
    (dict(do_sample=True, min_p=1.5), "min_p", "[0, 1]"),
    (dict(do_sample="yes"), "do_sample", "True or False"),
    (dict(do_sample=True, seed=-3), "seed", "[0, 2**64)"),
    (dict(do_sample=True, seed=1.5), "seed", "[0, 2**64)"),
    (dict(stop_strings=[""]), "stop_strings", "non-empty"),
    (dict(stop_strings=""), "stop_strings", "non-empty"),
    (dict(stop_strings=["a", 3]), "stop_strings", "non-empty"),
    (dict(max_new_tokens=0), "max_new_tokens", ">= 1"),
    (dict(max_new_tokens=-5), "max_new_tokens", ">= 1"),
    (dict(max_new_tokens=2.5), "max_new_tokens", ">= 1"),
    (dict(max_new_tokens=10_000), "max_position_embeddings", "fewer tokens"),
    (dict(eos_token_id=-1), "eos_token_id", f"[0, {VOCAB})"),
    (dict(eos_token_id=[3, VOCAB]), "eos_token_id", f"[0, {VOCAB})"),
    (dict(pad_token_id=-2), "pad_token_id", ">= 0"),
    (dict(prefill_chunk=0), "prefill_chunk", ">= 1"),
    (dict(check_every=0), "check_every", ">= 1"),
    (dict(shrink_finished=None), "shrink_finished", "True or False"),
    (dict(threads=(0, 1)), "threads", ">= 1"),
    (dict(threads=4), "threads", "pair"),
    (dict(compile="fastest"), "compile", "reduce-overhead"),
    (dict(schedule="warp"), "schedule", "sequential"),
    (dict(streamer=object()), "streamer", "put() and end()"),
    (dict(logits_processor=3), "logits_processor", "LogitsProcessorList"),
    (
        dict(generation_config=GenerationConfig(do_sample=True, temperature=-1.0)),
        "generation_config.temperature",
        "> 0",
    ),
]


@pytest.mark.parametrize("options, name, allowed", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_options_name_the_option_the_value_and_what_is_allowed(setup, options, name, allowed):
    model, input_ids, mask = setup
    options = {"max_new_tokens": 3, "tokenizer": CharTokenizer(), "schedule": "sequential", **options}
    with pytest.raises(ValueError) as error:
        generate(model, input_ids, mask, **options)
    message = str(error.value)
    assert name in message and allowed in message, message
    if name in options and name != "schedule":
        assert repr(options[name])[:20] in message or str(options[name])[:20] in message, message


def test_bad_prompts_are_clear_errors(setup):
    model, input_ids, mask = setup
    with pytest.raises(ValueError, match=r"outside both models' vocabulary \[0, 96\)"):
        generate(model, input_ids + VOCAB, mask, max_new_tokens=2)
    with pytest.raises(ValueError, match="attention_mask row is all 0"):
        generate(model, input_ids, torch.zeros_like(mask), max_new_tokens=2)


def test_unknown_options_are_type_errors_listing_the_options(setup):
    model, input_ids, mask = setup
    for entry in (generate, stream):
        with pytest.raises(TypeError, match=r"unknown option\(s\) \['temprature'\]"):
            entry(model, input_ids, mask, tokenizer=CharTokenizer(), max_new_tokens=2, temprature=0.5)


def test_generate_and_stream_take_one_set_of_options_with_one_default_each():
    names = list(DecodeOptions.__dataclass_fields__)
    defaults = DecodeOptions()
    for entry in (generate, stream):
        params = inspect.signature(entry).parameters
        inputs = ("model", "input_ids", "attention_mask", "reasoner_input_ids", "reasoner_attention_mask")
        assert [n for n in params if n not in inputs] == names
        assert all(params[n].default == getattr(defaults, n) for n in names)


def test_stream_settings_report_a_check_every_step(setup):
    model, input_ids, mask = setup
    pieces = stream(
        model, input_ids[:1], mask[:1], tokenizer=CharTokenizer(), max_new_tokens=3, schedule="sequential"
    )
    list(pieces)
    assert pieces.output.settings.check_every == 1
    out = generate(model, input_ids[:1], mask[:1], max_new_tokens=3, schedule="sequential")
    assert out.settings.check_every == DecodeOptions().check_every
    assert out.settings.pad_token_id == 0  # no pad given, no EOS: 0


def test_cpu_eager_decodes_on_dynamic_caches_and_compile_keeps_static_shapes(setup, monkeypatch):
    """CPU without compile: DynamicCache (an unpadded prompt takes sdpa's causal path); compile:
    StaticCache (fixed shapes). Both give the same tokens (tests/decoding/test_schedules.py)."""
    from transformers import DynamicCache

    from flythinker.decoding import settings, state

    model, input_ids, mask = setup
    caches = []
    original = state.DecodeState.for_prompts.__func__

    def recording(cls, *args, **kwargs):
        made, positions = original(cls, *args, **kwargs)
        caches.append(type(made.cache))
        return made, positions

    monkeypatch.setattr(state.DecodeState, "for_prompts", classmethod(recording))
    out = generate(model, input_ids, mask, max_new_tokens=3, schedule="sequential")
    assert out.settings.static_cache is False and caches == [DynamicCache]
    resolved = settings.resolve_settings(
        model, input_ids, DecodeOptions.from_kwargs("generate", {"max_new_tokens": 3, "compile": True}), False
    )
    assert resolved.static_cache is True
