"""FlyThinkerConfig(reasoner_context=True): the reasoner reads profile + request + response, the generator
request + response (docs/design.md §1 "Reasoner context"). Exactness against an independent float64
reference, teacher forcing = incremental decoding (forward with a cache and ``generate()``), padding,
and the refusals."""

from __future__ import annotations

import pytest
import torch

from flythinker import FlyThinkerCache
from tests.tiny_models import VOCAB, tiny_flythinker

TOL = 1e-10


def left_pad(rows: list[torch.Tensor], pad_id: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row) :] = row
        mask[b, width - len(row) :] = 1
    return ids, mask


def context_batch(profile_lengths: list[int], request_lengths: list[int], seed: int = 0):
    """Generator rows x_b (random), reasoner rows z_b = profile_b + x_b; each left-padded to its own width
    with a real token id (not the embedding's zero padding_idx row), so pad states are not zero.
    Returns (ids, mask, reasoner ids, reasoner mask, generator rows, profile rows)."""
    generator = torch.Generator().manual_seed(seed)
    requests = [torch.randint(3, VOCAB, (n,), generator=generator) for n in request_lengths]
    profiles = [torch.randint(3, VOCAB, (n,), generator=generator) for n in profile_lengths]
    ids, mask = left_pad(requests)
    reasoner_ids, reasoner_mask = left_pad([torch.cat([p, x]) for p, x in zip(profiles, requests)])
    return ids, mask, reasoner_ids, reasoner_mask, requests, profiles


def context_model(**kwargs):
    return tiny_flythinker(reasoner_context=True, **kwargs)


def forward(model, ids, mask, reasoner_ids, reasoner_mask, **kwargs):
    with torch.no_grad():
        return model(
            ids,
            attention_mask=mask,
            reasoner_input_ids=reasoner_ids,
            reasoner_attention_mask=reasoner_mask,
            **kwargs,
        )


def reference_logits(model, ids, mask, reasoner_ids, reasoner_mask) -> torch.Tensor:
    """Independent re-implementation with the paper's default options: the reasoner on its own sequence,
    the generator on hand-built inputs_embeds, generator column c taking reasoner column c + D - 1."""
    with torch.no_grad():
        positions = (reasoner_mask.cumsum(-1) - 1).clamp_min(0)
        h = model.reasoner(
            input_ids=reasoner_ids, attention_mask=reasoner_mask, position_ids=positions
        ).last_hidden_state
        table = model.generator.get_input_embeddings().weight
        m_bar = table.norm(dim=-1).mean()
        embeds = table[ids].clone()
        offset = reasoner_ids.shape[1] - ids.shape[1]
        lam = model.config.fusion_lambda
        for b in range(ids.shape[0]):
            for c in range(ids.shape[1]):
                k = c + offset - 1
                if mask[b, c] and k >= 0 and reasoner_mask[b, k]:
                    u = h[b, k]
                    embeds[b, c, : u.shape[0]] += lam * u * m_bar / u.norm()
        return model.generator(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
        ).logits


def test_forward_equals_float64_reference():
    model = context_model()
    ids, mask, reasoner_ids, reasoner_mask, _, _ = context_batch([6, 0, 11, 3], [5, 7, 2, 9], seed=1)
    got = forward(model, ids, mask, reasoner_ids, reasoner_mask).logits
    expected = reference_logits(model, ids, mask, reasoner_ids, reasoner_mask)
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max().item() <= TOL
    # the reference is not trivially equal to the shared model: the profile changes the logits
    shared = tiny_flythinker()
    with torch.no_grad():
        plain = shared(ids, attention_mask=mask).logits
    assert (plain[real] - got[real]).abs().max().item() > 1e-3


def test_first_generator_token_receives_the_end_of_the_profile():
    model = context_model()
    ids, mask, reasoner_ids, reasoner_mask, _, _ = context_batch([4], [6], seed=2)
    base = forward(model, ids, mask, reasoner_ids, reasoner_mask).logits[0, 0]
    changed = reasoner_ids.clone()
    changed[0, 3] = (changed[0, 3] + 1 - 3) % (VOCAB - 3) + 3  # the profile's last token
    moved = forward(model, ids, mask, changed, reasoner_mask).logits[0, 0]
    assert (moved - base).abs().max().item() > 1e-3


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"fusion_gate": "channel", "projection": "zero_linear", "center_reasoner": True},
        {"projection": "linear", "fusion_gate": "scalar"},
    ],
)
def test_without_extra_reasoner_tokens_it_is_the_shared_model(options):
    """z = x: the option changes nothing (warm-start options included, with non-trivial weights)."""
    shared, context = tiny_flythinker(**options), context_model(**options)
    torch.manual_seed(5)
    with torch.no_grad():
        for parameter in shared.fusion.parameters():
            parameter.normal_()
        for buffer in (shared.fusion.reasoner_center,):
            if buffer is not None:
                buffer.normal_()
    context.load_state_dict(shared.state_dict())
    ids, mask, _, _, _, _ = context_batch([0, 0, 0], [4, 8, 6], seed=3)
    with torch.no_grad():
        expected = shared(ids, attention_mask=mask).logits
    got = forward(context, ids, mask, ids, mask).logits
    real = mask.bool()
    assert (got[real] - expected[real]).abs().max().item() <= TOL


def test_padding_rows_equal_rows_alone_and_loss():
    model = context_model()
    ids, mask, reasoner_ids, reasoner_mask, requests, profiles = context_batch(
        [7, 0, 2, 12], [3, 9, 6, 1], seed=4
    )
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    for b, x in enumerate(requests):  # a pad never predicts a row's first token (alone, nothing does)
        labels[b, ids.shape[1] - len(x)] = -100
    batch = forward(model, ids, mask, reasoner_ids, reasoner_mask, labels=labels, return_logits=True)
    losses = []
    for b, (x, p) in enumerate(zip(requests, profiles)):
        alone = forward(
            model, x[None], None, torch.cat([p, x])[None], None, labels=x[None], return_logits=True
        )
        assert (batch.logits[b, -len(x) :] - alone.logits[0]).abs().max().item() <= TOL
        losses.append((alone.loss * (len(x) - 1), len(x) - 1))
    expected = sum(loss for loss, _ in losses) / sum(n for _, n in losses)
    assert abs(batch.loss.item() - expected.item()) <= TOL


def test_training_backward_reaches_the_reasoner_and_fused_loss_matches():
    model = context_model().train()
    ids, mask, reasoner_ids, reasoner_mask, _, _ = context_batch([5, 2], [6, 4], seed=6)
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    inputs = dict(attention_mask=mask, reasoner_input_ids=reasoner_ids, reasoner_attention_mask=reasoner_mask)
    loss = model(ids, labels=labels, **inputs).loss
    loss.backward()
    assert model.reasoner.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        logits = model(ids, **inputs).logits
    plain = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
    assert abs(plain.item() - loss.item()) <= TOL


def teacher_forced_context_greedy(model, ids, mask, reasoner_ids, reasoner_mask, steps):
    """Full forward over the growing sequences (both models read each chosen token)."""
    logits_per_step = []
    for _ in range(steps):
        logits = forward(model, ids, mask, reasoner_ids, reasoner_mask).logits[:, -1]
        logits_per_step.append(logits)
        token = logits.argmax(-1, keepdim=True)
        ids, reasoner_ids = torch.cat([ids, token], 1), torch.cat([reasoner_ids, token], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        reasoner_mask = torch.cat([reasoner_mask, torch.ones_like(reasoner_mask[:, :1])], 1)
    return ids, torch.stack(logits_per_step, dim=1)


def test_cached_steps_equal_teacher_forcing():
    model = context_model()
    ids, mask, reasoner_ids, reasoner_mask, _, _ = context_batch([3, 9, 0], [5, 2, 7], seed=7)
    steps = 8
    expected_ids, expected_logits = teacher_forced_context_greedy(
        model, ids, mask, reasoner_ids, reasoner_mask, steps
    )
    cache = model.new_cache()
    got = []
    with torch.no_grad():
        logits = forward(model, ids, mask, reasoner_ids, reasoner_mask, past_key_values=cache).logits[:, -1]
        step_mask = mask
        for step in range(steps):
            got.append(logits)
            token = expected_ids[:, ids.shape[1] + step, None]
            step_mask = torch.cat([step_mask, torch.ones_like(step_mask[:, :1])], 1)
            logits = model(token, attention_mask=step_mask, cache=cache).logits[:, -1]
    assert (torch.stack(got, 1) - expected_logits).abs().max().item() <= TOL
    assert cache.reasoner_cache.get_seq_length() == reasoner_ids.shape[1] + steps  # the loop feeds `steps`
    # two tokens at once after the prefill read the same as one by one
    cache = model.new_cache()
    with torch.no_grad():
        forward(model, ids, mask, reasoner_ids, reasoner_mask, past_key_values=cache)
        two = expected_ids[:, ids.shape[1] : ids.shape[1] + 2]
        two_mask = torch.cat([mask, torch.ones_like(two)], 1)
        logits = model(two, attention_mask=two_mask, cache=cache).logits
    assert (logits[:, -1] - expected_logits[:, 2]).abs().max().item() <= TOL


def test_generate_equals_teacher_forcing():
    model = context_model()
    ids, mask, reasoner_ids, reasoner_mask, _, _ = context_batch([6, 1, 10], [4, 8, 3], seed=8)
    steps = 12
    out = model.generate(
        ids,
        attention_mask=mask,
        reasoner_input_ids=reasoner_ids,
        reasoner_attention_mask=reasoner_mask,
        max_new_tokens=steps,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
        output_logits=True,
        return_dict_in_generate=True,
    )
    expected_ids, expected_logits = teacher_forced_context_greedy(
        model, ids, mask, reasoner_ids, reasoner_mask, steps
    )
    assert torch.equal(out.sequences, expected_ids)
    logits = torch.stack(out.logits, dim=1).double()  # generate() hands out float32 scores
    rounding = torch.finfo(torch.float32).eps * expected_logits.abs()
    assert ((logits - expected_logits).abs() - rounding).max().item() <= 1e-8
    assert isinstance(out.past_key_values, FlyThinkerCache)


def test_generate_beam_search_keeps_rows_aligned():
    """num_beams expands and reorders the cache: the carried reasoner prompt mask follows its rows."""
    model = context_model()
    ids, mask, reasoner_ids, reasoner_mask, requests, profiles = context_batch([5, 0], [3, 6], seed=9)
    kwargs = dict(max_new_tokens=5, num_beams=3, do_sample=False, pad_token_id=0, eos_token_id=None)
    batch = model.generate(
        ids,
        attention_mask=mask,
        reasoner_input_ids=reasoner_ids,
        reasoner_attention_mask=reasoner_mask,
        **kwargs,
    )
    for b, (x, p) in enumerate(zip(requests, profiles)):
        alone = model.generate(x[None], reasoner_input_ids=torch.cat([p, x])[None], **kwargs)
        assert torch.equal(batch[b, -5:], alone[0, -5:])


def test_cache_row_operations_carry_the_reasoner_prompt_mask():
    cache = FlyThinkerCache()
    cache.reasoner_prompt_mask = torch.tensor([[0, 1], [1, 1], [0, 0]])
    cache.last_reasoner_state = torch.arange(3.0)[:, None]
    cache.reorder_cache(torch.tensor([2, 0, 1]))
    assert cache.reasoner_prompt_mask.tolist() == [[0, 0], [0, 1], [1, 1]]
    cache.batch_select_indices(torch.tensor([1]))
    assert cache.reasoner_prompt_mask.tolist() == [[0, 1]] and cache.last_reasoner_state.tolist() == [[0.0]]
    cache.batch_repeat_interleave(2)
    assert cache.reasoner_prompt_mask.tolist() == [[0, 1], [0, 1]]
    cache.reset()
    assert cache.reasoner_prompt_mask is None and cache.generator_prompt_length == 0


def test_refusals_name_the_problem():
    context, shared = context_model(), tiny_flythinker()
    ids, mask, reasoner_ids, reasoner_mask, _, _ = context_batch([3, 2], [4, 5], seed=10)
    with pytest.raises(ValueError, match="reasoner_context=True.*pass reasoner_input_ids"):
        context(ids, attention_mask=mask)
    with pytest.raises(ValueError, match="reasoner_context=False"):
        shared(ids, attention_mask=mask, reasoner_input_ids=reasoner_ids)
    with pytest.raises(ValueError, match="position_ids cannot be given"):
        forward(
            context, ids, mask, reasoner_ids, reasoner_mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)
        )
    right = torch.flip(mask, [1])
    with pytest.raises(ValueError, match="attention_mask is not left-padded"):
        forward(context, torch.flip(ids, [1]), right, reasoner_ids, reasoner_mask)
    with pytest.raises(ValueError, match="fewer real tokens"):
        forward(context, reasoner_ids, reasoner_mask, ids, mask)
    with pytest.raises(ValueError, match="must match reasoner_input_ids"):
        forward(context, ids, mask, reasoner_ids, reasoner_mask[:, 1:])
    with pytest.raises(ValueError, match="outside"):
        forward(context, ids, mask, reasoner_ids + VOCAB, reasoner_mask)
    cache = context.new_cache()
    forward(context, ids, mask, reasoner_ids, reasoner_mask, past_key_values=cache)
    step_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    with pytest.raises(ValueError, match="first call only"):
        forward(context, ids[:, -1:], step_mask, reasoner_ids[:, -1:], None, past_key_values=cache)
    with pytest.raises(ValueError, match="use_cache=False"):
        context.generate(
            ids, attention_mask=mask, reasoner_input_ids=reasoner_ids, max_new_tokens=2, use_cache=False
        )


def test_config_round_trip_and_validation(tmp_path):
    model = context_model()
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.config.reasoner_context is True
    with pytest.raises(ValueError, match="reasoner_context must be True or False"):
        tiny_flythinker(reasoner_context="yes")


def test_reward_heads_and_grpo_refuse_the_option():
    from flythinker.train.grpo import make_grpo_trainer

    model = context_model(reward_heads={"perm": {"kind": "perm"}})
    ids, mask, _, _, _, _ = context_batch([2], [4], seed=12)
    with pytest.raises(ValueError, match="score_rewards does not support .*reasoner_context=True"):
        model.score_rewards(ids, attention_mask=mask)
    with pytest.raises(ValueError, match="GRPO does not support .*reasoner_context=True"):
        make_grpo_trainer(model, None, None, None)
