"""Incremental decoding through GenerationMixin reproduces the teacher-forced forward."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

from flythinker import FlyThinkerCache
from tests.tiny_models import left_padded_batch, teacher_forced_greedy, tiny_flythinker


def test_greedy_generate_equals_teacher_forced_argmax_and_logits():
    model = tiny_flythinker()
    input_ids, attention_mask, _ = left_padded_batch([5, 9, 2], seed=11)
    steps = 32
    out = model.generate(
        input_ids,
        attention_mask=attention_mask,
        max_new_tokens=steps,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
        output_logits=True,
        return_dict_in_generate=True,
    )
    expected_ids, expected_logits = teacher_forced_greedy(model, input_ids, attention_mask, steps)
    assert out.sequences.shape == expected_ids.shape
    assert torch.equal(out.sequences, expected_ids)
    # generate() hands out scores cast to float32: allow that rounding on top of 1e-8.
    logits = torch.stack(out.logits, dim=1).double()
    rounding = torch.finfo(torch.float32).eps * expected_logits.abs()
    assert ((logits - expected_logits).abs() - rounding).max().item() <= 1e-8
    assert isinstance(out.past_key_values, FlyThinkerCache)
    assert out.past_key_values.reasoner_cache.get_seq_length() == input_ids.shape[1] + steps - 1


def test_cached_forward_steps_equal_teacher_forced_logits_in_float64():
    """The incremental forward itself (prefill, then one token per step) at float64 precision."""
    model = tiny_flythinker()
    input_ids, attention_mask, _ = left_padded_batch([3, 8, 5], seed=14)
    steps = 10
    expected_ids, expected_logits = teacher_forced_greedy(model, input_ids, attention_mask, steps)
    cache, ids, mask = model.new_cache(), input_ids, attention_mask
    got = []
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, past_key_values=cache, use_cache=True).logits[:, -1]
        for step in range(steps):
            got.append(logits)
            next_ids = expected_ids[:, input_ids.shape[1] + step, None]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits = model(next_ids, attention_mask=mask, cache=cache).logits[:, -1]
    assert (torch.stack(got, dim=1) - expected_logits).abs().max().item() <= 1e-10


def test_generate_without_cache_matches_cached():
    model = tiny_flythinker()
    input_ids, attention_mask, _ = left_padded_batch([4, 6], seed=12)
    kwargs = dict(
        attention_mask=attention_mask, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None
    )
    cached = model.generate(input_ids, **kwargs)
    uncached = model.generate(input_ids, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_sampling_is_seeded_and_stops_at_eos():
    model = tiny_flythinker()
    input_ids, attention_mask, _ = left_padded_batch([4, 6], seed=13)
    kwargs = dict(
        attention_mask=attention_mask,
        max_new_tokens=12,
        do_sample=True,
        top_k=20,
        temperature=1.3,
        pad_token_id=0,
    )
    torch.manual_seed(3)
    first = model.generate(input_ids, eos_token_id=None, **kwargs)
    torch.manual_seed(3)
    second = model.generate(input_ids, eos_token_id=None, **kwargs)
    assert torch.equal(first, second)
    eos = int(first[0, input_ids.shape[1] + 2])  # a token row 0 samples at step 3
    torch.manual_seed(3)
    stopped = model.generate(input_ids, eos_token_id=eos, **kwargs)
    new = stopped[0, input_ids.shape[1] :].tolist()
    assert eos in new and all(t == 0 for t in new[new.index(eos) + 1 :])


def _generation_cache_name() -> str:
    """The keyword transformers' own ``prepare_inputs_for_generation`` takes the cache under: ``cache``
    from transformers 5.25 on (``past_key_values`` deprecated there), ``past_key_values`` before."""
    from transformers import GenerationMixin

    parameters = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def test_prepare_inputs_reuses_the_cache_generate_hands_it(monkeypatch):
    """generate() passes the step's cache under the installed transformers' name; a new cache is
    built only when none is given (with transformers 5.25 the cache arrived as ``cache=`` and a fresh
    FlyThinkerCache was allocated, and then ignored, on every step)."""
    model = tiny_flythinker()
    input_ids, attention_mask, _ = left_padded_batch([4, 6], seed=3)
    cache = model.new_cache()
    monkeypatch.setattr(model, "new_cache", lambda: pytest.fail("a cache was given; none must be built"))
    name = _generation_cache_name()
    inputs = model.prepare_inputs_for_generation(
        input_ids, attention_mask=attention_mask, use_cache=True, **{name: cache}
    )
    assert inputs[name] is cache
    assert "inputs_embeds" not in inputs


def test_generate_raises_no_deprecation_warning_from_prepare_inputs():
    model = tiny_flythinker()
    input_ids, attention_mask, _ = left_padded_batch([4, 6], seed=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.generate(
            input_ids, attention_mask=attention_mask, max_new_tokens=3, do_sample=False, pad_token_id=0
        )
    ours = [str(w.message) for w in caught if "prepare_inputs_for_generation" in str(w.message)]
    assert not ours, ours
