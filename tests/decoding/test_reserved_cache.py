"""ReservedCache: the same keys, values and logits as transformers' DynamicCache, bit for bit, without
a fresh copy of the cache per step; the engine picks it by the measured crossover."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, StaticCache
from transformers.cache_utils import DynamicSlidingWindowLayer

from flythinker.decoding import generate
from flythinker.decoding import steps as decode_steps
from flythinker.decoding.reserved_cache import ReservedCache, ReservedLayer
from flythinker.decoding.steps import new_decode_cache, select_cache_rows

from ..tiny_models import left_padded_batch, tiny_flythinker, tiny_llama_config, tiny_qwen2_config


def _model(dtype):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_llama_config(hidden=32, layers=3)).to(dtype).eval()


def _decode(model, cache, ids, steps, between=None):
    """Prefill ``ids`` then greedy-decode ``steps`` tokens; ``between(i, cache, state)`` may edit the
    cache and the batch between steps. Returns every step's logits."""
    state = {"token": None, "rows": torch.arange(ids.shape[0])}
    with torch.no_grad():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        logits = [out.logits[:, -1]]
        state["token"] = logits[-1].argmax(-1, keepdim=True)
        position = ids.shape[1]
        for i in range(steps):
            if between is not None:
                position = between(i, cache, state, position)
            batch = state["token"].shape[0]
            out = model(
                input_ids=state["token"],
                position_ids=torch.full((batch, 1), position),
                past_key_values=cache,
                use_cache=True,
            )
            logits.append(out.logits[:, -1])
            state["token"] = logits[-1].argmax(-1, keepdim=True)
            position += 1
    return logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("capacity", [4, 30])  # 4 < the prompt: storage grows (doubling) twice
def test_logits_keys_and_values_equal_dynamic_cache_bit_for_bit(dtype, capacity):
    model = _model(dtype)
    ids = torch.randint(2, 96, (3, 9), generator=torch.Generator().manual_seed(1))
    dynamic, reserved = DynamicCache(config=model.config), ReservedCache(model.config, capacity)
    expected, got = _decode(model, dynamic, ids, 12), _decode(model, reserved, ids, 12)
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    for d, r in zip(dynamic.layers, reserved.layers, strict=True):
        assert isinstance(r, ReservedLayer)
        assert torch.equal(d.keys, r.keys) and torch.equal(d.values, r.values)
    assert reserved.get_seq_length() == dynamic.get_seq_length() == 9 + 12


def test_a_step_writes_into_the_reserved_storage_instead_of_copying_the_cache():
    """Within capacity every layer's keys stay views of one allocation (DynamicCache's are a new
    tensor every step: ``torch.cat``)."""
    model = _model(torch.float32)
    ids = torch.randint(2, 96, (2, 5), generator=torch.Generator().manual_seed(2))
    cache = ReservedCache(model.config, 16)
    pointers = []

    def record(i, cache, state, position):
        pointers.append([layer.keys.data_ptr() for layer in cache.layers])
        return position

    _decode(model, cache, ids, 8, between=record)
    assert all(p == pointers[0] for p in pointers)
    assert all(layer._key_storage.shape[-2] == 16 for layer in cache.layers)


def _edit_batch_and_crop(i, cache, state, position):
    """After step 1 reorder the rows (transformers' beam reorder: same shapes, other contents), after
    step 3 keep rows 0 and 2 (the engine's select_cache_rows), after step 6 crop 2 positions
    (transformers' own crop) and resume from the position they held."""
    if i == 1:
        order = torch.tensor([2, 0, 1])
        cache.reorder_cache(order)
        state["token"] = state["token"][order]
    if i == 3:
        keep = torch.tensor([0, 2])
        select_cache_rows(cache, keep)
        state["token"] = state["token"][keep]
    if i == 6:
        cache.crop(-2)
        return position - 2
    return position


def test_keys_replaced_from_outside_are_honoured_like_dynamic_cache():
    model = _model(torch.float64)
    ids = torch.randint(2, 96, (3, 7), generator=torch.Generator().manual_seed(3))
    dynamic, reserved = DynamicCache(config=model.config), ReservedCache(model.config, 64)
    expected = _decode(model, dynamic, ids, 10, between=_edit_batch_and_crop)
    got = _decode(model, reserved, ids, 10, between=_edit_batch_and_crop)
    assert [g.shape[0] for g in got] == [3] * 4 + [2] * 7
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_sliding_window_layers_stay_transformers_own():
    config = tiny_qwen2_config(hidden=32)
    config.use_sliding_window, config.sliding_window = True, 4
    config.layer_types = ["sliding_attention", "full_attention"]
    cache = ReservedCache(config, 32)
    assert type(cache.layers[0]) is DynamicSlidingWindowLayer and type(cache.layers[1]) is ReservedLayer


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity"):
        ReservedLayer(0)


def test_reset_forgets_the_storage():
    model = _model(torch.float32)
    cache = ReservedCache(model.config, 16)
    ids = torch.randint(2, 96, (1, 4), generator=torch.Generator().manual_seed(4))
    first = _decode(model, cache, ids, 2)
    cache.reset()
    assert cache.get_seq_length() == 0
    again = _decode(model, cache, ids, 2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_the_engine_picks_the_cache_by_length():
    config = tiny_llama_config()
    cut = decode_steps.RESERVED_CACHE_FROM
    assert type(new_decode_cache(config, cut - 1, static=False)) is DynamicCache
    assert type(new_decode_cache(config, cut, static=False)) is ReservedCache
    assert type(new_decode_cache(config, cut, static=True)) is StaticCache


def _decode_with(model, ids, mask, schedule, **options):
    """generate() with every step's logits recorded (a logits processor that keeps a copy)."""
    scores = []

    def record(_, step_scores):
        scores.append(step_scores.clone())
        return step_scores

    out = generate(
        model,
        ids,
        mask,
        max_new_tokens=6,
        schedule=schedule,
        eos_token_id=(),
        logits_processor=record,
        **options,
    )
    return out, scores


def _same_output(a, b) -> bool:
    (out_a, scores_a), (out_b, scores_b) = a, b
    return torch.equal(out_a.sequences, out_b.sequences) and all(
        torch.equal(x, y) for x, y in zip(scores_a, scores_b, strict=True)
    )


def test_generate_gives_the_same_tokens_and_scores_on_either_cache(monkeypatch):
    """The generator's and the reasoner's caches in one process: forced to DynamicCache, then to
    ReservedCache for every length."""
    model = tiny_flythinker()
    ids, mask, _ = left_padded_batch([6, 4, 7])
    monkeypatch.setattr(decode_steps, "RESERVED_CACHE_FROM", 10**9)
    dynamic = _decode_with(model, ids, mask, "sequential")
    monkeypatch.setattr(decode_steps, "RESERVED_CACHE_FROM", 1)
    reserved = _decode_with(model, ids, mask, "sequential")
    assert dynamic[0].settings.reserved_cache is False and reserved[0].settings.reserved_cache is True
    assert _same_output(dynamic, reserved)


def test_the_worker_process_decodes_long_calls_on_reserved_caches_with_the_same_tokens(monkeypatch):
    """A call of RESERVED_CACHE_FROM positions: the worker (its own import of the real threshold) and
    the caller both reserve; tokens and scores equal sequential's on DynamicCaches."""
    model = tiny_flythinker()
    for config in (model.config.get_text_config(), model.generator.config, model.reasoner.config):
        config.max_position_embeddings = 1024  # default RoPE: no table sized by it
    length = decode_steps.RESERVED_CACHE_FROM - 6
    ids, mask, _ = left_padded_batch([length, length - 3])
    processes = _decode_with(model, ids, mask, "processes", threads=(1, 1))
    assert processes[0].settings.reserved_cache is True and processes[0].settings.schedule == "processes"
    monkeypatch.setattr(decode_steps, "RESERVED_CACHE_FROM", 10**9)
    assert _same_output(_decode_with(model, ids, mask, "sequential"), processes)
