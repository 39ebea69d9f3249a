"""m̄ equals mean_v ‖E_G[v]‖₂ of the current table at every forward, whatever updated the table.

torch's fused AdamW (transformers' default ``optim``) updates parameters in place without bumping
their version counters; the fusion module's cache key includes a global optimizer-step counter, so
every optimizer (and every trainer built on them) keeps m̄ exact. The end-to-end check is the one a
user sees: after training, the model in memory and its saved-and-reloaded copy give equal logits.
"""

from __future__ import annotations

import pytest
import torch

from flythinker import FlyThinkerForCausalLM
from tests.tiny_models import left_padded_batch, tiny_flythinker

OPTIMIZERS = {
    "adamw_fused": lambda p: torch.optim.AdamW(p, lr=5e-2, fused=True),
    "adamw_foreach": lambda p: torch.optim.AdamW(p, lr=5e-2, foreach=True),
    "adamw_plain": lambda p: torch.optim.AdamW(p, lr=5e-2, foreach=False),
    "sgd": lambda p: torch.optim.SGD(p, lr=1.0),
}


def _batch():
    input_ids, attention_mask, _ = left_padded_batch([7, 5], seed=21)
    return input_ids, attention_mask, input_ids.masked_fill(attention_mask == 0, -100)


def _current_mean_norm(model) -> float:
    return model.generator.get_input_embeddings().weight.detach().double().norm(dim=-1).mean().item()


def _assert_reload_equal(model, tmp_path, tol=1e-6):
    input_ids, attention_mask, _ = _batch()
    model.eval()
    with torch.no_grad():
        trained = model(input_ids, attention_mask=attention_mask).logits
    model.save_pretrained(tmp_path)
    reloaded = FlyThinkerForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        again = reloaded(input_ids, attention_mask=attention_mask).logits
    real = attention_mask.bool()
    assert (trained[real] - again[real]).abs().max().item() <= tol
    assert model.mean_embedding_norm.item() == pytest.approx(_current_mean_norm(model), rel=1e-6)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_mean_norm_is_current_after_every_step(name, tmp_path):
    model = tiny_flythinker(dtype=torch.float32).train()
    optimizer = OPTIMIZERS[name](model.parameters())
    input_ids, attention_mask, labels = _batch()
    for _ in range(3):
        loss = model(input_ids, attention_mask=attention_mask, labels=labels).loss
        # the m̄ used by this forward is the table's value before the step
        assert model.mean_embedding_norm.item() == pytest.approx(_current_mean_norm(model), rel=1e-6)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    _assert_reload_equal(model, tmp_path / "model")


def test_trainer_default_optimizer_trained_equals_reloaded(tmp_path):
    """transformers Trainer with its default ``optim`` (fused AdamW) — no flythinker callback."""
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments

    input_ids, attention_mask, labels = _batch()

    class Rows(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            b = i % 2
            return {"input_ids": input_ids[b], "attention_mask": attention_mask[b], "labels": labels[b]}

    model = tiny_flythinker(dtype=torch.float32).train()
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=2,
                             learning_rate=5e-2, use_cpu=True, report_to="none", save_strategy="no",
                             logging_steps=100, dataloader_num_workers=0)  # fmt: skip
    assert args.optim.value == "adamw_torch_fused"  # the default this test is about
    Trainer(model=model, args=args, train_dataset=Rows()).train()
    _assert_reload_equal(model, tmp_path / "model")


@pytest.mark.slow
def test_trl_sft_trained_equals_reloaded(tmp_path):
    """TRL's SFTTrainer with its default settings on a tiny FlyThinker."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from flythinker import FlyThinkerConfig
    from tests.tiny_models import build_tiny_tokenizer, tiny_llama_config, tiny_qwen2_config

    tokenizer = build_tiny_tokenizer()
    vocab = len(tokenizer)
    torch.manual_seed(0)
    config = FlyThinkerConfig(
        generator_config=tiny_qwen2_config(vocab=vocab), reasoner_config=tiny_llama_config(vocab=vocab)
    )
    model = FlyThinkerForCausalLM(config)
    texts = ["This PEP proposes a new module.", "The quick brown fox jumps over the lazy dog."] * 4
    ids_dataset = Dataset.from_dict({"input_ids": [tokenizer(text)["input_ids"] for text in texts]})
    args = SFTConfig(output_dir=str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=2,
                     learning_rate=5e-2, use_cpu=True, report_to="none", save_strategy="no", bf16=False,
                     logging_steps=100, dataloader_num_workers=0)  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=ids_dataset, processing_class=tokenizer)
    trainer.train()
    _assert_reload_equal(model, tmp_path / "model")


def test_mean_norm_follows_in_place_edits_and_device_of_the_table():
    model = tiny_flythinker(dtype=torch.float32)
    model.refresh_mean_embedding_norm()
    with torch.no_grad():
        model.generator.get_input_embeddings().weight.mul_(2.0)
    input_ids, attention_mask, _ = _batch()
    model(input_ids, attention_mask=attention_mask)
    assert model.mean_embedding_norm.item() == pytest.approx(_current_mean_norm(model), rel=1e-6)
