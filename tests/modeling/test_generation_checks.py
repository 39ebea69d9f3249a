"""transformers' generation and forward contracts on FlyThinkerForCausalLM (issue 10.6).

``GenerationTesterMixin`` does not ship in the transformers sdist, so its checks are here: dict
outputs with scores, logits, attentions and hidden-state shapes; continuing from returned
``past_key_values``; beam search; the assisted-decoding error. Then the other deviations a
transformers user would hit: ``config.use_cache``, ``return_dict=False``, ``shift_labels``,
``resize_token_embeddings`` and ``torch.export``. Independent references: one teacher-forced
forward, plain cross-entropy, the embedding table itself.
"""

from __future__ import annotations

import copy

import pytest
import torch

from flythinker import FlyThinkerForCausalLM

from .flythinker_tester import prompt, teacher_forced_logits, tiny_model


def test_generate_dict_outputs_scores_logits_attentions_hidden_states():
    # eager attention returns the weights; float32 because stock eager attention in float64 turns
    # left-padded rows into NaN (Qwen2 alone does too)
    model = tiny_model(dtype=torch.float32, attn_implementation="eager")
    input_ids, attention_mask = prompt()
    new, (batch, length) = 4, input_ids.shape
    out = model.generate(
        input_ids,
        attention_mask=attention_mask,
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
        output_attentions=True,
        output_hidden_states=True,
        pad_token_id=0,
    )
    cfg = model.config.get_text_config()
    vocab, layers, heads = cfg.vocab_size, cfg.num_hidden_layers, cfg.num_attention_heads
    assert out.sequences.shape == (batch, length + new)
    assert len(out.scores) == len(out.logits) == new
    assert all(t.shape == (batch, vocab) for t in (*out.scores, *out.logits))
    assert len(out.attentions) == len(out.hidden_states) == new
    for step, (attentions, hidden_states) in enumerate(zip(out.attentions, out.hidden_states)):
        query = length if step == 0 else 1
        assert len(attentions) == layers and len(hidden_states) == layers + 1
        assert all(a.shape == (batch, heads, query, length + step) for a in attentions)
        assert all(h.shape == (batch, query, cfg.hidden_size) for h in hidden_states)
    # independent reference: one teacher-forced forward over the generated sequences
    full_mask = torch.cat([attention_mask, torch.ones(batch, new, dtype=torch.long)], dim=1)
    reference = teacher_forced_logits(model, out.sequences, full_mask)[:, length - 1 : -1]
    # generate() hands back float32 logits
    torch.testing.assert_close(torch.stack(out.logits, dim=1), reference.float(), atol=1e-5, rtol=1e-5)
    assert torch.equal(out.sequences[:, length:], reference.argmax(-1))
    assert type(out.past_key_values).__name__ == "FlyThinkerCache"


def test_generate_continue_from_returned_past_key_values():
    model = tiny_model()
    input_ids, attention_mask = prompt()
    kwargs = dict(do_sample=False, pad_token_id=0, return_dict_in_generate=True)
    whole = model.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=6, min_new_tokens=6, **kwargs
    )
    first = model.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=3, min_new_tokens=3, **kwargs
    )
    mask = torch.cat([attention_mask, torch.ones(2, 3, dtype=torch.long)], dim=1)
    second = model.generate(
        first.sequences,
        attention_mask=mask,
        past_key_values=copy.deepcopy(first.past_key_values),
        max_new_tokens=3,
        min_new_tokens=3,
        **kwargs,
    )
    assert torch.equal(second.sequences, whole.sequences)


def test_generate_beam_search_scores_are_sequence_logprobs():
    model = tiny_model()
    input_ids, attention_mask = prompt()
    beams, new, length = 3, 4, input_ids.shape[1]
    out = model.generate(
        input_ids,
        attention_mask=attention_mask,
        num_beams=beams,
        num_return_sequences=beams,
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        length_penalty=0.0,
        early_stopping=True,
        return_dict_in_generate=True,
        output_scores=True,
        pad_token_id=0,
    )
    assert out.sequences.shape == (2 * beams, length + new) and out.sequences_scores.shape == (2 * beams,)
    mask = torch.cat(
        [attention_mask.repeat_interleave(beams, 0), torch.ones(2 * beams, new, dtype=torch.long)], 1
    )
    logprobs = teacher_forced_logits(model, out.sequences, mask)[:, length - 1 : -1].log_softmax(-1)
    summed = logprobs.gather(-1, out.sequences[:, length:, None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(out.sequences_scores.double(), summed, atol=1e-5, rtol=1e-6)  # float32 scores
    greedy = model.generate(
        input_ids,
        attention_mask=attention_mask,
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        pad_token_id=0,
    )
    greedy_logprobs = teacher_forced_logits(model, greedy, mask[::beams])[:, length - 1 : -1].log_softmax(-1)
    greedy_score = greedy_logprobs.gather(-1, greedy[:, length:, None]).squeeze(-1).sum(-1)
    assert torch.all(out.sequences_scores.view(2, beams)[:, 0] >= greedy_score - 1e-9)


def test_assisted_decoding_fails_early_with_a_clear_error():
    model, assistant = tiny_model(), tiny_model(seed=1)
    input_ids, attention_mask = prompt()
    for kwargs in ({"assistant_model": assistant}, {"prompt_lookup_num_tokens": 2}):
        with pytest.raises(ValueError, match="assisted generation is not supported with stateful models"):
            model.generate(
                input_ids,
                attention_mask=attention_mask,
                max_new_tokens=3,
                do_sample=False,
                pad_token_id=0,
                **kwargs,
            )


# ------------------------------------------------------------------------------------------------------
# The other deviations a transformers user would hit.


def test_plain_forward_honours_config_use_cache_and_its_cache_continues():
    model = tiny_model()
    input_ids, attention_mask = prompt()
    with torch.no_grad():
        # unset (FlyThinkerConfig's default): no cache, so packed rows (position_ids only) stay separated
        assert model(input_ids, attention_mask=attention_mask).past_key_values is None
        model.config.use_cache = True
        out = model(input_ids[:, :4], attention_mask=attention_mask[:, :4])
        assert type(out.past_key_values).__name__ == "FlyThinkerCache"
        step = model(
            input_ids[:, 4:], attention_mask=attention_mask, past_key_values=out.past_key_values
        ).logits
        full = model(input_ids, attention_mask=attention_mask, use_cache=False).logits
        torch.testing.assert_close(step, full[:, 4:], atol=1e-10, rtol=1e-8)
        assert model(input_ids, attention_mask=attention_mask, use_cache=False).past_key_values is None
        model.config.use_cache = False
        assert model(input_ids, attention_mask=attention_mask).past_key_values is None


def test_return_dict_false_returns_the_same_tensors_as_a_tuple():
    model = tiny_model()
    input_ids, attention_mask = prompt()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    with torch.no_grad():
        as_dict = model(
            input_ids,
            attention_mask=attention_mask,
            labels=labels,
            return_logits=True,
            output_hidden_states=True,
            use_cache=False,
        )
        as_tuple = model(
            input_ids,
            attention_mask=attention_mask,
            labels=labels,
            return_logits=True,
            output_hidden_states=True,
            use_cache=False,
            return_dict=False,
        )
    assert isinstance(as_tuple, tuple)
    assert torch.equal(as_tuple[0], as_dict.loss) and torch.equal(as_tuple[1], as_dict.logits)
    assert all(torch.equal(a, b) for a, b in zip(as_tuple[2], as_dict.hidden_states))


@pytest.mark.parametrize("use_fused_loss", [True, False])
def test_shift_labels_are_the_loss_targets(use_fused_loss):
    model = tiny_model(use_fused_loss=use_fused_loss)
    input_ids, attention_mask = prompt()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].contiguous()
    other = torch.randint(3, 99, labels.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = model(input_ids, attention_mask=attention_mask, labels=labels).loss
        same = model(input_ids, attention_mask=attention_mask, labels=other, shift_labels=shifted).loss
        moved = model(input_ids, attention_mask=attention_mask, labels=labels, shift_labels=other).loss
        logits = model(input_ids, attention_mask=attention_mask, use_cache=False).logits
    torch.testing.assert_close(same, loss, atol=1e-12, rtol=1e-10)  # labels ignored when shift_labels given
    reference = torch.nn.functional.cross_entropy(logits.flatten(0, 1), other.flatten())
    torch.testing.assert_close(
        moved.double(), reference, atol=1e-6, rtol=1e-6
    )  # transformers' CE upcasts to fp32


def test_resize_token_embeddings_resizes_both_tables_and_mean_norm(tmp_path):
    model = tiny_model()
    before = model.refresh_mean_embedding_norm().clone()
    embeddings = model.resize_token_embeddings(110)
    assert embeddings.weight.shape[0] == 110
    assert model.generator.get_input_embeddings().weight.shape[0] == 110
    assert model.reasoner.get_input_embeddings().weight.shape[0] == 110
    assert model.config.vocab_size == model.config.reasoner_config.vocab_size == 110
    ids = torch.tensor([[5, 9, 105, 109, 7]])
    with torch.no_grad():
        logits = model(ids).logits  # the new ids reach both models
    assert logits.shape == (1, 5, 110)
    table = model.generator.get_input_embeddings().weight
    expected = table.detach().double().norm(dim=-1).mean()
    torch.testing.assert_close(model.mean_embedding_norm.double(), expected, atol=1e-12, rtol=1e-10)
    assert not torch.equal(model.mean_embedding_norm.double(), before.double())
    model.save_pretrained(tmp_path)
    reloaded = FlyThinkerForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, logits, atol=1e-12, rtol=1e-10)


def test_torch_export_traces_forward():
    # ExportTesterMixin is not in the sdist: the same check, on the tiny model
    model = tiny_model(dtype=torch.float32)
    input_ids, attention_mask = prompt()
    with torch.no_grad():
        expected = model(input_ids, attention_mask=attention_mask, use_cache=False).logits
        program = torch.export.export(
            model, (input_ids,), {"attention_mask": attention_mask, "use_cache": False}, strict=False
        )
        exported = program.module()(input_ids, attention_mask=attention_mask, use_cache=False).logits
    torch.testing.assert_close(exported, expected)
