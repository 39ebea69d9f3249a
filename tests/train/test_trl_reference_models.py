"""TRL builds its reference model from the policy's directory (issue 10.4): GRPO with β > 0 and DPO
without ``ref_model`` call ``trl.trainer.utils.create_model_from_path``, which reads
``config.auto_map`` and reloads ``config._name_or_path``. One step each with a tiny FlyThinker."""

from __future__ import annotations

import pytest
import torch

from flythinker import FlyThinkerForCausalLM
from tests.word_models import build_word_tokenizer, tiny_flythinker_policy, tiny_llama

pytest.importorskip("trl")


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer()


@pytest.fixture()
def policy_dir(tmp_path, tokenizer):
    """A tiny FlyThinker saved to disk, as a user's checkpoint would be (TRL reloads it by path)."""

    model = tiny_flythinker_policy(len(tokenizer))
    model.save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    return tmp_path / "policy"


def _check_reference(trainer, policy_dir):
    reference = trainer.ref_model
    assert isinstance(reference, FlyThinkerForCausalLM) and reference is not trainer.model
    saved = FlyThinkerForCausalLM.from_pretrained(policy_dir).eval()
    ids = torch.tensor([[5, 9, 14, 20, 7]])
    with torch.no_grad():  # the reference is the saved checkpoint, untouched by the step
        assert torch.equal(reference.eval()(ids).logits, saved(ids).logits)


def test_grpo_with_kl_builds_a_flythinker_reference(tmp_path, policy_dir, tokenizer):
    from trl import GRPOConfig

    from flythinker.rewards.judge import LocalJudge
    from flythinker.rewards.samples import EmpathySample
    from flythinker.train.grpo import build_grpo_dataset, make_grpo_trainer

    samples = [
        EmpathySample(query="I failed my exam", persona="student", scenario="exam week"),
        EmpathySample(query="My friend moved away", persona="nurse", scenario="night shift"),
    ]
    judge = LocalJudge(tiny_llama(len(tokenizer), seed=1), tokenizer, batch_size=4, criteria_max_new_tokens=4)
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to="none",
        max_steps=1,
        logging_steps=1,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=6,
        beta=0.1,
        learning_rate=1e-2,
        save_strategy="no",
        bf16=False,
        fp16=False,
        seed=0,
        dataloader_num_workers=0,
    )
    policy = FlyThinkerForCausalLM.from_pretrained(policy_dir)
    trainer, _ = make_grpo_trainer(policy, tokenizer, build_grpo_dataset(samples), judge, args=args)
    trainer.train()
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert "kl" in logged, sorted(logged)
    _check_reference(trainer, policy_dir)


def test_dpo_without_ref_model_builds_a_flythinker_reference(tmp_path, policy_dir, tokenizer):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    data = Dataset.from_dict(
        {
            "prompt": ["I feel sad because my dog left", "I failed my exam"],
            "chosen": [" I am here for you", " that sounds really hard"],
            "rejected": [" stop complaining", " nobody cares"],
        }
    )
    args = DPOConfig(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to="none",
        max_steps=1,
        logging_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        save_strategy="no",
        bf16=False,
        fp16=False,
        seed=0,
        dataloader_num_workers=0,
        max_length=32,
    )
    policy = FlyThinkerForCausalLM.from_pretrained(policy_dir)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    trainer = DPOTrainer(model=policy, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    assert any(not torch.equal(p.detach(), before[n]) for n, p in policy.named_parameters())
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and abs(losses[0] - 0.6931) < 1e-3  # π = π_ref at step 0: loss = log 2
    _check_reference(trainer, policy_dir)
