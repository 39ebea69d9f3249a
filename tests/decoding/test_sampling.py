"""Explicit sampling: transformers' processors as the reference, seeded reproducibility across
schedules, the exponential race draws from the right distribution, settings are reported."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from flythinker.decoding import SamplingSettings, generate, resolve_sampling
from flythinker.decoding.sampling import TokenSelector, apply_repetition_penalty, filter_logits
from tests.tiny_models import left_padded_batch, tiny_flythinker


@pytest.fixture(scope="module")
def model():
    return tiny_flythinker()


@pytest.mark.parametrize(
    "options",
    [
        dict(temperature=0.7),
        dict(top_k=5),
        dict(top_p=0.8),
        dict(min_p=0.1),
        dict(temperature=1.3, top_k=20, top_p=0.9, min_p=0.05),
    ],
)
def test_filters_match_transformers_warpers(options):
    torch.manual_seed(0)
    scores = torch.randn(6, 97, dtype=torch.float64) * 3
    settings = SamplingSettings(do_sample=True, **options)
    expected = scores.clone()
    warpers = [TemperatureLogitsWarper(settings.temperature)]
    if settings.top_k:
        warpers.append(TopKLogitsWarper(settings.top_k))
    if settings.top_p < 1:
        warpers.append(TopPLogitsWarper(settings.top_p))
    if settings.min_p:
        warpers.append(MinPLogitsWarper(settings.min_p))
    for warper in warpers:
        expected = warper(None, expected)
    got = filter_logits(scores, settings)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    finite = torch.isfinite(expected)
    assert torch.allclose(got[finite], expected[finite], rtol=0, atol=1e-12)


def test_repetition_penalty_matches_transformers():
    torch.manual_seed(1)
    scores = torch.randn(3, 50, dtype=torch.float64)
    ids = torch.randint(1, 50, (3, 9))
    seen = torch.zeros(3, 50, dtype=torch.bool).scatter_(1, ids, True)
    expected = RepetitionPenaltyLogitsProcessor(1.3)(ids, scores.clone())
    assert torch.allclose(apply_repetition_penalty(scores, seen, 1.3), expected, rtol=0, atol=1e-14)


def test_exponential_race_samples_the_softmax_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]], dtype=torch.float64)
    settings = SamplingSettings(do_sample=True, seed=7)
    draws = 20000
    selector = TokenSelector(settings, draws, torch.device("cpu"))
    tokens = selector.select(logits.expand(draws, -1), torch.arange(draws), None)
    frequencies = torch.bincount(tokens, minlength=5).double() / draws
    assert (frequencies - logits.softmax(-1)[0]).abs().max().item() < 0.015  # ~4 standard errors


SAMPLING = dict(do_sample=True, temperature=1.2, top_k=40, top_p=0.95, min_p=0.02, repetition_penalty=1.1)


def test_seeded_sampling_is_reproducible_and_identical_across_schedules(model):
    input_ids, mask, _ = left_padded_batch([5, 9, 2, 7], seed=13)
    kwargs = dict(max_new_tokens=14, pad_token_id=0, **SAMPLING)
    reference = generate(model, input_ids, mask, schedule="sequential", seed=123, **kwargs)
    torch.manual_seed(999)  # the global RNG must not matter
    again = generate(model, input_ids, mask, schedule="sequential", seed=123, **kwargs)
    assert torch.equal(reference.sequences, again.sequences)
    for schedule in ("threads", "two-device"):
        other = generate(model, input_ids, mask, schedule=schedule, seed=123, prefill_chunk=3, **kwargs)
        assert torch.equal(other.sequences, reference.sequences), schedule
    different = generate(model, input_ids, mask, schedule="sequential", seed=124, **kwargs)
    assert not torch.equal(different.sequences, reference.sequences)
    assert reference.settings.sampling == SamplingSettings(seed=123, **SAMPLING)


@pytest.mark.slow
def test_seeded_sampling_in_the_process_schedule(model):
    input_ids, mask, _ = left_padded_batch([5, 9, 2, 7], seed=13)
    kwargs = dict(max_new_tokens=14, pad_token_id=0, seed=5, **SAMPLING)
    reference = generate(model, input_ids, mask, schedule="sequential", **kwargs)
    other = generate(model, input_ids, mask, schedule="processes", prefill_chunk=4, **kwargs)
    assert torch.equal(other.sequences, reference.sequences)


def test_sampled_rows_do_not_depend_on_when_finished_rows_leave(model):
    """EOS finishes rows at different steps; shrinking at every step or never gives the same tokens."""
    input_ids, mask, _ = left_padded_batch([5, 9, 2, 7], seed=13)
    kwargs = dict(max_new_tokens=14, pad_token_id=0, seed=11, **SAMPLING)
    free = generate(model, input_ids, mask, schedule="sequential", **kwargs)
    eos = int(free.new_tokens[2, 3])
    every = generate(model, input_ids, mask, schedule="sequential", eos_token_id=eos, check_every=1, **kwargs)
    never = generate(
        model, input_ids, mask, schedule="sequential", eos_token_id=eos, shrink_finished=False, **kwargs
    )
    assert torch.equal(every.sequences, never.sequences)
    assert every.timings.generator_rows < never.timings.generator_rows


def test_generation_config_and_logits_processor_are_honoured(model):
    input_ids, mask, _ = left_padded_batch([4, 6], seed=3)
    config = GenerationConfig(do_sample=True, temperature=0.8, top_k=7, max_new_tokens=6)
    out = generate(model, input_ids, mask, generation_config=config, seed=1, pad_token_id=0)
    assert out.settings.max_new_tokens == 6
    assert out.settings.sampling == SamplingSettings(do_sample=True, temperature=0.8, top_k=7, seed=1)
    explicit = generate(
        model, input_ids, mask, generation_config=config, seed=1, pad_token_id=0, do_sample=False
    )
    assert explicit.settings.sampling == SamplingSettings()  # greedy: every sampling knob reported off

    class Forbid:
        """Bans token 5 everywhere (and records that it saw the growing ids)."""

        def __init__(self):
            self.lengths = []

        def __call__(self, ids, scores):
            self.lengths.append(ids.shape[1])
            scores = scores.clone()
            scores[:, 5] = float("-inf")
            return scores

    forbid = Forbid()
    greedy_plain = generate(model, input_ids, mask, max_new_tokens=6, pad_token_id=0)
    banned = generate(
        model,
        input_ids,
        mask,
        max_new_tokens=6,
        pad_token_id=0,
        logits_processor=LogitsProcessorList([forbid]),
    )
    assert not (banned.new_tokens == 5).any()
    assert forbid.lengths == list(range(input_ids.shape[1], input_ids.shape[1] + 6))
    assert banned.settings.sampling.custom_logits_processor
    assert greedy_plain.settings.sampling.custom_logits_processor is False


def test_resolve_sampling_reports_a_drawn_seed():
    settings = resolve_sampling(do_sample=True)
    assert settings.seed is not None and settings.do_sample
    with pytest.raises(ValueError, match="top_p"):
        resolve_sampling(do_sample=True, top_p=0.0)
