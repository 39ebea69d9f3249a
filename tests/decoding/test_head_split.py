"""The processes schedule shares the generator's LM head with the reasoner's worker: the balancer's
rule, the exactness of aligned row slices, and logits bit for bit equal to the whole head's."""

from __future__ import annotations

import pytest
import torch

from flythinker import FlyThinkerConfig, FlyThinkerForCausalLM
from flythinker.decoding import generate
from flythinker.decoding.head_split import (
    MIN_SHARE,
    ROW_ALIGN,
    HeadBalancer,
    aligned,
    head_parameters,
    head_rows,
    slices_are_exact,
)
from tests.tiny_models import left_padded_batch, tiny_llama_config, tiny_qwen2_config

VOCAB = 1000  # not a multiple of ROW_ALIGN: the last slice keeps the whole head's column tail


def wide_vocab_model(dtype=torch.float32, seed=0, **generator_kwargs) -> FlyThinkerForCausalLM:
    torch.manual_seed(seed)
    generator = tiny_qwen2_config(vocab=VOCAB)
    for name, value in generator_kwargs.items():
        setattr(generator, name, value)
    config = FlyThinkerConfig(generator_config=generator, reasoner_config=tiny_llama_config(vocab=VOCAB))
    return FlyThinkerForCausalLM(config).to(dtype).eval()


# ------------------------------------------------------------------------------------ the balancer
def test_the_first_step_keeps_the_whole_head_then_both_sides_get_rows_by_their_speed():
    balancer = HeadBalancer(rows=4096)
    assert balancer.cut() == 4096  # nothing measured yet: the caller does it all (and is timed)
    balancer.observe_caller(4096, 4096e-9)  # 1 ns per row
    assert balancer.cut() == 2048  # equal speeds assumed, idle worker: halves
    balancer.observe_worker(2048, 2 * 2048e-9, lag=0.0, busy=-1e-3)  # the worker is 2x slower per row
    assert balancer.cut() == aligned(4096 * 2 / 3, 4096) == 2688  # c_w V / (c_p + c_w)
    balancer.observe_worker(2048, 2048e-9, lag=0.0, busy=-1e-3)  # then as fast: smoothed towards it
    assert balancer.worker_row_s == pytest.approx(0.7 * 2e-9 + 0.3 * 1e-9)
    assert balancer.cut() % ROW_ALIGN == 0


def test_a_reasoner_slower_than_the_generator_keeps_the_head_with_the_caller():
    balancer = HeadBalancer(rows=4096, caller_row_s=1e-9, worker_row_s=1e-9)
    balancer.observe_unshared(busy=10e-3)  # the worker was still on R's step 10 ms after the request
    assert balancer.lag_s == pytest.approx(0.3 * 10e-3)
    assert balancer.cut() == 4096  # its lag alone exceeds the whole head's time on the caller
    # a lag that leaves the worker under MIN_SHARE of the rows is not worth a request
    near = HeadBalancer(rows=4096, caller_row_s=1e-9, worker_row_s=1e-9, lag_s=2 * (1 - MIN_SHARE) * 4096e-9)
    assert near.cut() == 4096
    some = HeadBalancer(rows=4096, caller_row_s=1e-9, worker_row_s=1e-9, lag_s=1024e-9)
    assert some.cut() == 2560  # (lag + c V) / 2c


def test_aligned_rounds_down_inside_the_head_and_keeps_the_whole_head():
    values = [aligned(x, 1000) for x in (-5, 0, 63.9, 64, 130, 999, 1000, 5000)]
    assert values == [0, 0, 0, 64, 128, 960, 1000, 1000]


# ------------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("bias", [False, True])
def test_the_probe_never_claims_an_exactness_that_does_not_hold(dtype, batch, bias):
    """Where the probe says aligned slices are exact, every aligned cut reproduces the whole head bit
    for bit; float32 (what decoding runs in) is exact on this machine at both batch sizes."""
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(VOCAB, 48, generator=generator).to(dtype)
    b = torch.randn(VOCAB, generator=generator).to(dtype) if bias else None
    verdict = slices_are_exact(weight, b, batch)
    if dtype == torch.float32:
        assert verdict
    if verdict:
        hidden = torch.randn(batch, 48, generator=generator).to(dtype)
        whole = head_rows(weight, b, hidden, 0, VOCAB)
        for cut in range(0, VOCAB, ROW_ALIGN):
            parts = [head_rows(weight, b, hidden, 0, cut), head_rows(weight, b, hidden, cut, VOCAB)]
            assert torch.equal(torch.cat(parts, 1), whole), cut


def test_only_a_plain_linear_cpu_head_is_shared():
    head = torch.nn.Linear(8, 128, bias=False)
    weight, bias = head_parameters(head)
    assert weight is head.weight and bias is None
    assert head_parameters(torch.nn.Embedding(128, 8)) is None
    assert not slices_are_exact(torch.randn(ROW_ALIGN, 8), None, 1)  # no cut strictly inside the head


# ------------------------------------------------------------------------------------ through the worker
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_workers_head_rows_give_the_whole_heads_logits_at_every_cut(dtype):
    """A ProcessRunner driven step by step: at forced cuts (none, all, aligned middles) the logits it
    returns equal ``generator.logits`` bit for bit, softcapping included."""
    from flythinker.decoding.process_runner import ProcessRunner
    from flythinker.decoding.steps import GeneratorSide, ReasonerSide

    model = wide_vocab_model(dtype, final_logit_softcapping=5.0)
    generator = GeneratorSide(model)
    runner = ProcessRunner(
        torch.device("cpu"),
        (1, 1),
        static_cache=False,
        head=head_parameters(model.generator.get_output_embeddings()),
    )
    assert runner.head is not None
    input_ids, mask, _ = left_padded_batch([6, 4, 6], seed=3, vocab=VOCAB)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    cuts = [VOCAB, 0, ROW_ALIGN, 512, 960, 960 - ROW_ALIGN]
    full_mask = torch.cat([mask, mask.new_ones(3, len(cuts))], 1)
    runner.setup(
        ReasonerSide(model.reasoner, model.fusion), full_mask, full_mask.shape[1], input_ids.shape[1]
    )
    try:
        runner.start(input_ids, positions)
        runner.finish()
        position = positions[:, -1:]
        for step, cut in enumerate(cuts):
            position = position + 1
            runner.balancer.cut = lambda cut=cut: cut
            runner.start(input_ids[:, step : step + 1], position)
            last = torch.randn(3, model.config.get_text_config().hidden_size, dtype=dtype)
            got = runner.logits(generator, last)
            runner.finish()
            assert torch.equal(got, generator.logits(last)), cut
    finally:
        runner.end()
    assert runner.head_share == pytest.approx(sum(VOCAB - c for c in cuts) / (VOCAB * len(cuts)))


@pytest.mark.slow
def test_decoding_with_and_without_a_shared_head_gives_the_sequential_tokens(monkeypatch):
    """With the cut forced to the middle (a tiny head takes less than a message, so the balancer
    itself would keep it whole) and with sharing off, the tokens are the sequential reference's."""
    model = wide_vocab_model(seed=2)
    input_ids, mask, _ = left_padded_batch([5, 9, 2, 7], seed=8, vocab=VOCAB)
    monkeypatch.setattr(HeadBalancer, "cut", lambda self: aligned(self.rows / 2, self.rows))
    kwargs = dict(max_new_tokens=16, pad_token_id=0, eos_token_id=())
    reference = generate(model, input_ids, mask, schedule="sequential", **kwargs)
    shared = generate(model, input_ids, mask, schedule="processes", **kwargs)
    whole = generate(model, input_ids, mask, schedule="processes", share_head=False, **kwargs)
    assert torch.equal(shared.sequences, reference.sequences)
    assert torch.equal(whole.sequences, reference.sequences)
    assert shared.settings.share_head and not whole.settings.share_head
    assert shared.timings.reasoner_head_share == pytest.approx((VOCAB - 448) / VOCAB)  # every step
    assert whole.timings.reasoner_head_share == 0.0
    assert reference.timings.reasoner_head_share == 0.0 and not reference.settings.share_head


def test_share_head_must_be_a_flag():
    model = wide_vocab_model()
    input_ids, mask, _ = left_padded_batch([3], vocab=VOCAB)
    with pytest.raises(ValueError, match="share_head"):
        generate(model, input_ids, mask, schedule="sequential", max_new_tokens=2, share_head="yes")


@pytest.mark.slow
def test_calls_with_and_without_a_shared_head_reuse_the_workers_buffers_and_head():
    """Alternating share_head (as the benchmark does) neither reallocates the shared buffers nor
    resends the head; a new head weight (another model) is sent again."""
    from flythinker.decoding.workers import start_worker, worker_pids

    model = wide_vocab_model(seed=5)
    input_ids, mask, _ = left_padded_batch([4, 6], seed=1, vocab=VOCAB)
    kwargs = dict(schedule="processes", max_new_tokens=3, pad_token_id=0, threads=(1, 1))
    generate(model, input_ids, mask, **kwargs)
    worker = start_worker(1)
    assert worker.pid in worker_pids()
    buffers, head_ref = worker.buffers, worker.head_ref
    assert head_ref() is model.generator.get_output_embeddings().weight
    for share in (False, True, False):
        generate(model, input_ids, mask, share_head=share, **kwargs)
        assert worker.buffers is buffers
        assert worker.head_ref is head_ref  # not sent again
    other = wide_vocab_model(seed=6)
    generate(other, input_ids, mask, **kwargs)
    assert worker.head_ref() is other.generator.get_output_embeddings().weight
