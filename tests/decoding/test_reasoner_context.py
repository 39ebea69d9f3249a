"""The decoding engine with a FlyThinkerConfig(reasoner_context=True) model: ``sequential`` and ``processes``
reproduce teacher forcing and ``model.generate()``; the other schedules and ``compile`` refuse it."""

from __future__ import annotations

import pytest
import torch

from flythinker.decoding import generate, stream
from tests.decoding._helpers import CharTokenizer, call_for
from tests.modeling.test_reasoner_context import context_batch, teacher_forced_context_greedy
from tests.tiny_models import tiny_flythinker

STEPS = 10
SCHEDULES = ["sequential", pytest.param("processes", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def model():
    return tiny_flythinker(reasoner_context=True)  # float64


@pytest.fixture(scope="module")
def batch(model):
    """Rows of different profile (incl. none) and request lengths, and the teacher-forced reference."""
    ids, mask, reasoner_ids, reasoner_mask, _, _ = context_batch([6, 0, 11, 3], [5, 7, 2, 9], seed=21)
    expected, logits = teacher_forced_context_greedy(model, ids, mask, reasoner_ids, reasoner_mask, STEPS)
    return ids, mask, reasoner_ids, reasoner_mask, expected, logits


def _generate(model, batch, **options):
    ids, mask, reasoner_ids, reasoner_mask = batch[:4]
    options = {"max_new_tokens": STEPS, "pad_token_id": 0, **options}
    return generate(
        model, ids, mask, reasoner_input_ids=reasoner_ids, reasoner_attention_mask=reasoner_mask, **options
    )


class RecordLogits:
    """A logits processor that keeps every step's logits and changes nothing."""

    def __init__(self):
        self.steps: list[torch.Tensor] = []

    def __call__(self, ids, scores):
        self.steps.append(scores.clone())
        return scores


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("chunk", [None, 3])
def test_greedy_tokens_equal_teacher_forcing_and_generate(model, batch, schedule, chunk):
    ids, mask, reasoner_ids, reasoner_mask, expected, logits = batch
    record = RecordLogits()
    out = _generate(model, batch, schedule=schedule, prefill_chunk=chunk, logits_processor=record)
    assert torch.equal(out.sequences, expected)
    assert out.settings.schedule == schedule
    # every decode step's logits, not only the argmax (float64 throughout)
    assert (torch.stack(record.steps, 1) - logits).abs().max().item() <= 1e-10
    hf = model.generate(
        ids,
        attention_mask=mask,
        reasoner_input_ids=reasoner_ids,
        reasoner_attention_mask=reasoner_mask,
        max_new_tokens=STEPS,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )
    assert torch.equal(hf, expected)


@pytest.mark.parametrize("chunk", [None, 2])
def test_prefill_logits_equal_teacher_forcing_in_float64(model, batch, chunk):
    ids, mask, reasoner_ids, reasoner_mask, _, logits = batch
    call = call_for(
        model, ids, mask, max_new_tokens=1, prefill_chunk=chunk,
        reasoner_input_ids=reasoner_ids, reasoner_attention_mask=reasoner_mask,
    )  # fmt: skip
    from flythinker.decoding.engine import run

    for _ in run(call):
        pass
    assert (call.prefill_logits - logits[:, 0]).abs().max().item() <= 1e-10


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_rows_finishing_early_are_dropped_without_losing_the_alignment(model, batch, schedule):
    """EOS ends one row early; shrinking the batch keeps every other row's reasoner shift and cache."""
    ids, _, _, _, expected, _ = batch
    width = ids.shape[1]
    rows = [expected[row, width:].tolist() for row in range(ids.shape[0])]

    def ends(eos):
        return [row.index(eos) + 1 if eos in row else STEPS for row in rows]

    # a token that ends some row early while another row runs to the end
    eos = next(t for row in rows for t in row if min(ends(t)) < STEPS - 2 and max(ends(t)) == STEPS)
    out = _generate(model, batch, schedule=schedule, eos_token_id=eos, check_every=1)
    assert out.lengths == ends(eos)
    for row, n in enumerate(ends(eos)):
        assert out.sequences[row, width : width + n].tolist() == rows[row][:n]


def test_stream_gives_the_generated_text(model, batch):
    ids, mask, reasoner_ids, reasoner_mask, expected, _ = batch
    pieces = stream(
        model,
        ids[:1],
        mask[:1],
        reasoner_input_ids=reasoner_ids[:1],
        reasoner_attention_mask=reasoner_mask[:1],
        schedule="sequential",
        max_new_tokens=STEPS,
        tokenizer=CharTokenizer(),
        pad_token_id=0,
    )
    assert "".join(pieces) == CharTokenizer().decode(expected[0, ids.shape[1] :])


def test_other_schedules_and_bad_inputs_are_refused(model, batch):
    ids, mask, reasoner_ids, reasoner_mask = batch[:4]
    with pytest.raises(ValueError, match="schedule='threads' does not support .*reasoner_context"):
        _generate(model, batch, schedule="threads")
    with pytest.raises(ValueError, match="compile does not support"):
        _generate(model, batch, schedule="sequential", compile=True)
    with pytest.raises(ValueError, match="pass reasoner_input_ids"):
        generate(model, ids, mask, schedule="sequential", max_new_tokens=2)
    with pytest.raises(ValueError, match="reasoner_context=False"):
        _generate(tiny_flythinker(), batch, schedule="sequential")
    with pytest.raises(ValueError, match="fewer real tokens"):
        generate(
            model, reasoner_ids, reasoner_mask, reasoner_input_ids=ids, reasoner_attention_mask=mask,
            schedule="sequential", max_new_tokens=2,
        )  # fmt: skip
    with pytest.raises(ValueError, match="reasoner_attention_mask row must be 0…0 1…1"):
        generate(
            model, ids, mask, reasoner_input_ids=reasoner_ids, reasoner_attention_mask=torch.flip(reasoner_mask, [1]),
            schedule="sequential", max_new_tokens=2,
        )  # fmt: skip
    with pytest.raises(ValueError, match="reasoner's max_position_embeddings"):
        _generate(model, batch, schedule="sequential", max_new_tokens=246)  # 9 + 246 <= 256 < 13 + 246
