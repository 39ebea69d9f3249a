"""EOS, stop strings and max length give clean per-row partial outputs; finished rows stop
consuming compute; streaming yields the same text and feeds transformers-style streamers."""

from __future__ import annotations

import pytest
import torch

from flythinker.decoding import generate, stream
from tests.decoding._helpers import CharTokenizer, RecordingStreamer
from tests.tiny_models import left_padded_batch, tiny_flythinker

STEPS = 14


@pytest.fixture(scope="module")
def setup():
    model = tiny_flythinker(seed=2)
    input_ids, mask, _ = left_padded_batch([5, 9, 2, 7], seed=17)
    free = generate(model, input_ids, mask, schedule="sequential", max_new_tokens=STEPS, pad_token_id=0)
    return model, input_ids, mask, free.new_tokens


def expected_lengths(free_tokens, eos):
    lengths = []
    for row in free_tokens.tolist():
        lengths.append(row.index(eos) + 1 if eos in row else len(row))
    return lengths


@pytest.mark.parametrize("schedule", ["sequential", "threads"])
@pytest.mark.parametrize("check_every", [1, 4])
def test_eos_rows_stop_and_leave_the_batch(setup, schedule, check_every):
    model, input_ids, mask, free = setup
    eos = int(free[1, 4])  # row 1 emits it at step 5 (it may occur earlier in other rows)
    lengths = expected_lengths(free, eos)
    out = generate(
        model,
        input_ids,
        mask,
        schedule=schedule,
        max_new_tokens=STEPS,
        pad_token_id=0,
        eos_token_id=eos,
        check_every=check_every,
    )
    assert out.lengths == lengths
    n = max(lengths)
    assert out.new_tokens.shape == (4, n)
    for r, length in enumerate(lengths):
        assert torch.equal(out.new_tokens[r, :length], free[r, :length])  # identical up to EOS
        assert (out.new_tokens[r, length:] == 0).all()  # clean pad afterwards
        assert out.finish_reasons[r] == ("eos" if eos in free[r].tolist() else "length")
    # Observable compute: each row is fed to both models until the check that sees it finished.
    removed_after = [((length - 1) // check_every + 1) * check_every - 1 for length in lengths]
    steps_run = min(max(removed_after) + 1, STEPS) if max(lengths) < STEPS else STEPS
    expected_rows = 4 + sum(sum(1 for last in removed_after if t <= last) for t in range(1, steps_run))
    assert out.timings.generator_rows == expected_rows
    assert out.timings.reasoner_rows == expected_rows
    assert expected_rows < 4 * STEPS


def test_stop_strings_truncate_rows_cleanly(setup):
    model, input_ids, mask, free = setup
    tokenizer = CharTokenizer()
    stop = tokenizer.decode(free[2, 3:5])  # two characters row 2 produces at steps 4-5
    found_at = []
    for row in free.tolist():
        text = tokenizer.decode(row)
        found_at.append(text.find(stop))
    outputs = [
        generate(
            model,
            input_ids,
            mask,
            schedule="sequential",
            max_new_tokens=STEPS,
            pad_token_id=0,
            tokenizer=tokenizer,
            stop_strings=[stop, "\u2603never"],
            check_every=k,
        )
        for k in (1, 5)
    ]
    for out in outputs:
        for r, position in enumerate(found_at):
            if position < 0:
                assert out.finish_reasons[r] == "length" and out.lengths[r] == STEPS
                continue
            n = position + len(stop)  # one character per token: the token completing the stop string
            assert out.finish_reasons[r] == "stop_string"
            assert out.lengths[r] == n
            assert torch.equal(out.new_tokens[r, :n], free[r, :n])
            assert (out.new_tokens[r, n:] == 0).all()
            assert out.texts[r] == tokenizer.decode(free[r, :n].tolist())
            assert out.texts[r].endswith(stop)
    assert torch.equal(outputs[0].sequences, outputs[1].sequences)
    assert outputs[0].texts == outputs[1].texts


def test_max_length_returns_every_row_at_the_limit(setup):
    model, input_ids, mask, free = setup
    out = generate(
        model,
        input_ids,
        mask,
        schedule="sequential",
        max_new_tokens=3,
        pad_token_id=0,
        tokenizer=CharTokenizer(),
    )
    assert out.sequences.shape == (4, input_ids.shape[1] + 3)
    assert out.finish_reasons == ["length"] * 4 and out.lengths == [3] * 4
    assert torch.equal(out.new_tokens, free[:, :3])
    assert out.texts == [
        CharTokenizer().decode(row, skip_special_tokens=True) for row in free[:, :3].tolist()
    ]
    assert out.timings.time_to_first_token_s > 0 and len(out.timings.step_s) == 2


def test_stream_yields_the_final_text(setup):
    model, input_ids, mask, free = setup
    tokenizer = CharTokenizer()
    pieces_stream = stream(
        model,
        input_ids[1:2],
        mask[1:2],
        tokenizer=tokenizer,
        max_new_tokens=STEPS,
        schedule="threads",
        pad_token_id=0,
    )
    pieces = list(pieces_stream)
    assert len(pieces) == STEPS and all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == pieces_stream.output.texts[0] == tokenizer.decode(free[1].tolist())
    batch_stream = stream(
        model, input_ids, mask, tokenizer=tokenizer, max_new_tokens=4, schedule="sequential", pad_token_id=0
    )
    per_step = list(batch_stream)
    assert all(len(step) == 4 for step in per_step)
    joined = ["".join(step[r] for step in per_step) for r in range(4)]
    assert joined == batch_stream.output.texts


def test_transformers_streamer_receives_prompt_then_each_token(setup):
    model, input_ids, mask, free = setup
    streamer = RecordingStreamer()
    out = generate(
        model,
        input_ids[:1],
        mask[:1],
        schedule="sequential",
        max_new_tokens=6,
        pad_token_id=0,
        streamer=streamer,
    )
    assert torch.equal(streamer.puts[0], input_ids[:1])
    assert torch.equal(torch.stack(streamer.puts[1:], dim=1), out.new_tokens)
    assert streamer.ended == 1


@pytest.mark.slow
def test_worker_process_survives_an_error_with_a_step_in_flight(setup, monkeypatch):
    """The generator fails while the reasoner worker computes: the error surfaces, and the next call
    (and an abandoned stream) still get correct tokens, so commands and replies stay paired."""
    from flythinker.decoding.steps import GeneratorSide

    model, input_ids, mask, free = setup
    original, calls = GeneratorSide.step, []

    def failing_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected generator failure")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GeneratorSide, "step", failing_step)
    with pytest.raises(RuntimeError, match="injected"):
        generate(model, input_ids, mask, schedule="processes", max_new_tokens=STEPS, pad_token_id=0)
    monkeypatch.setattr(GeneratorSide, "step", original)
    iterator = iter(
        stream(
            model,
            input_ids[:1],
            mask[:1],
            tokenizer=CharTokenizer(),
            max_new_tokens=STEPS,
            schedule="processes",
            pad_token_id=0,
        )
    )
    next(iterator), next(iterator)
    iterator.close()
    out = generate(model, input_ids, mask, schedule="processes", max_new_tokens=STEPS, pad_token_id=0)
    assert torch.equal(out.new_tokens, free)
