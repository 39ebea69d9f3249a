"""Every schedule produces the tokens of the sequential reference, of ``model.generate()`` and of
step-by-step teacher-forced argmax; the chunked prefill equals the one-shot prefill."""

from __future__ import annotations

import pytest
import torch

from flythinker.decoding import generate
from flythinker.decoding.engine import run
from tests.decoding._helpers import call_for
from tests.tiny_models import left_padded_batch, teacher_forced_greedy, tiny_flythinker

STEPS = 12
BATCHES = {"batch1": [7], "batch4": [5, 9, 2, 7]}
SCHEDULES = [
    pytest.param("sequential", id="sequential"),
    pytest.param("threads", id="threads"),
    pytest.param("processes", id="processes", marks=pytest.mark.slow),
    pytest.param("two-device", id="two-device-cpu"),
    pytest.param("concurrent", id="concurrent", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module")
def model():
    return tiny_flythinker()  # float64, Qwen2 generator (d=32) + Llama reasoner (d=16)


@pytest.fixture(scope="module")
def references(model):
    """Per batch: (input_ids, mask, model.generate() sequences, teacher-forced sequences)."""
    out = {}
    for name, lengths in BATCHES.items():
        input_ids, mask, _ = left_padded_batch(lengths, seed=11)
        hf = model.generate(
            input_ids,
            attention_mask=mask,
            max_new_tokens=STEPS,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
        tf, _ = teacher_forced_greedy(model, input_ids, mask, STEPS)
        out[name] = (input_ids, mask, hf, tf)
    return out


@pytest.mark.parametrize("batch", list(BATCHES))
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("chunk", [None, 3])
def test_greedy_tokens_equal_generate_and_teacher_forcing(model, references, batch, schedule, chunk):
    input_ids, mask, hf, tf = references[batch]
    assert torch.equal(hf, tf)  # the two references agree with each other first
    out = generate(
        model, input_ids, mask, schedule=schedule, max_new_tokens=STEPS, pad_token_id=0, prefill_chunk=chunk
    )
    assert out.sequences.shape == hf.shape
    assert torch.equal(out.sequences, hf)
    assert out.finish_reasons == ["length"] * input_ids.shape[0]
    assert out.settings.schedule != "concurrent"  # resolved to a placement


def test_sequential_reference_equals_every_schedule_in_float32():
    """float32 (the precision of real use): all CPU schedules give the sequential reference's tokens."""
    model = tiny_flythinker(dtype=torch.float32, seed=3)
    input_ids, mask, _ = left_padded_batch([6, 3, 10], seed=5)
    reference = generate(model, input_ids, mask, schedule="sequential", max_new_tokens=10, pad_token_id=0)
    for schedule in ("threads", "two-device"):
        out = generate(
            model, input_ids, mask, schedule=schedule, max_new_tokens=10, pad_token_id=0, prefill_chunk=4
        )
        assert torch.equal(out.sequences, reference.sequences), schedule


@pytest.mark.parametrize("schedule", ["sequential", "threads"])
def test_chunked_prefill_logits_equal_one_shot(model, schedule):
    input_ids, mask, _ = left_padded_batch([11, 4, 13], seed=21)
    with torch.no_grad():
        full = model(input_ids, attention_mask=mask).logits[:, -1]  # teacher-forced, no cache
    logits = {}
    for chunk in (1, 3, 5, input_ids.shape[1]):
        call = call_for(model, input_ids, mask, schedule=schedule, max_new_tokens=2, prefill_chunk=chunk)
        steps = run(call)
        next(steps)  # runs the prefill and samples the first token
        logits[chunk] = call.prefill_logits.clone()
        steps.close()
    one_shot = logits[input_ids.shape[1]]
    assert (one_shot - full).abs().max().item() <= 1e-10
    for chunk, value in logits.items():
        assert (value - one_shot).abs().max().item() <= 1e-10, chunk


def test_projection_model_all_schedules_agree():
    """A model with a learned projection (d_R → d_G, computed on the reasoner's side)."""
    model = tiny_flythinker(projection="linear", seed=4)
    input_ids, mask, _ = left_padded_batch([4, 8], seed=2)
    hf = model.generate(
        input_ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None
    )
    for schedule in ("sequential", "threads"):
        out = generate(
            model, input_ids, mask, schedule=schedule, max_new_tokens=8, pad_token_id=0, prefill_chunk=3
        )
        assert torch.equal(out.sequences, hf), schedule


def test_every_runner_implements_the_runner_protocol():
    from flythinker.decoding.process_runner import ProcessRunner
    from flythinker.decoding.runners import DeviceRunner, ReasonerRunner, ThreadRunner

    cpu = torch.device("cpu")
    for runner in (DeviceRunner(cpu), ThreadRunner(cpu, 1), ProcessRunner(cpu, (1, 1))):
        assert isinstance(runner, ReasonerRunner), type(runner).__name__


def test_bad_inputs_raise_clear_errors(model):
    input_ids, mask, _ = left_padded_batch([3, 5], seed=1)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, input_ids, mask)
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, input_ids, mask.flip(1), max_new_tokens=2)
    with pytest.raises(ValueError, match="schedule"):
        generate(model, input_ids, mask, max_new_tokens=2, schedule="warp")
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, input_ids, mask, max_new_tokens=2, stop_strings=["x"])
    with pytest.raises(ValueError, match="cuda-streams"):
        generate(model, input_ids, mask, max_new_tokens=2, schedule="cuda-streams")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("schedule", ["cuda-streams", "concurrent"])
def test_cuda_streams_equal_sequential(schedule):
    model = tiny_flythinker(dtype=torch.float32).cuda()
    input_ids, mask, _ = left_padded_batch([5, 9, 2, 7], seed=11)
    input_ids, mask = input_ids.cuda(), mask.cuda()
    reference = generate(model, input_ids, mask, schedule="sequential", max_new_tokens=STEPS, pad_token_id=0)
    out = generate(
        model, input_ids, mask, schedule=schedule, max_new_tokens=STEPS, pad_token_id=0, prefill_chunk=3
    )
    assert out.settings.schedule == "cuda-streams"
    assert torch.equal(out.sequences, reference.sequences)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_equal_sequential():
    model = tiny_flythinker(dtype=torch.float32).cuda(0)
    input_ids, mask, _ = left_padded_batch([5, 9, 2, 7], seed=11)
    input_ids, mask = input_ids.cuda(0), mask.cuda(0)
    reference = generate(model, input_ids, mask, schedule="sequential", max_new_tokens=STEPS, pad_token_id=0)
    model.reasoner.to("cuda:1")
    if model.fusion.projection is not None:
        model.fusion.projection.to("cuda:1")
    out = generate(model, input_ids, mask, schedule="concurrent", max_new_tokens=STEPS, pad_token_id=0)
    assert out.settings.schedule == "two-device"
    assert torch.equal(out.sequences, reference.sequences)


@pytest.mark.gpu
@cuda
def test_compiled_step_equals_eager_on_cuda():
    model = tiny_flythinker(dtype=torch.float32).cuda()
    input_ids, mask, _ = left_padded_batch([5, 9], seed=11)
    input_ids, mask = input_ids.cuda(), mask.cuda()
    reference = generate(model, input_ids, mask, schedule="sequential", max_new_tokens=8, pad_token_id=0)
    out = generate(
        model, input_ids, mask, schedule="cuda-streams", max_new_tokens=8, pad_token_id=0, compile=True
    )
    assert torch.equal(out.sequences, reference.sequences)
