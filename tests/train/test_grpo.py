"""Two GRPO steps on CPU with a tiny FlyThinker policy and the PERM / PereGRM reward functions."""

from __future__ import annotations

import pytest
import torch

from flythinker.rewards.judge import LocalJudge
from flythinker.rewards.samples import EmpathySample
from flythinker.rewards.trl_rewards import PermRewardFunctions
from flythinker.train.grpo import build_grpo_dataset, make_grpo_trainer
from tests.word_models import tiny_flythinker_policy, tiny_llama

pytest.importorskip("trl")

SAMPLES = [
    EmpathySample(
        query="I failed my exam",
        persona="student",
        scenario="exam week",
        memories=["has a dog"],
        criteria="- be warm",
    ),
    EmpathySample(
        query="My friend moved away",
        persona="nurse",
        scenario="night shift",
        memories=["works night shifts", "lonely"],
    ),
]


def _tiny_llama_policy(vocab: int):
    return tiny_llama(vocab, hidden=32, layers=1, seed=0).train()


@pytest.mark.parametrize(
    ("policy_kind", "variant"), [("llama", "perm"), ("llama", "peregrm"), ("flythinker", "perm")]
)
def test_two_grpo_steps_update_policy_and_log_components(tmp_path, word_tokenizer, policy_kind, variant):
    from trl import GRPOConfig

    build = tiny_flythinker_policy if policy_kind == "flythinker" else _tiny_llama_policy
    policy = build(len(word_tokenizer))
    judge = LocalJudge(
        tiny_llama(len(word_tokenizer), seed=1), word_tokenizer, batch_size=4, criteria_max_new_tokens=4
    )
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    args = GRPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        max_steps=2,
        logging_steps=1,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=8,
        learning_rate=1e-2,
        save_strategy="no",
        bf16=False,
        fp16=False,
        seed=0,
        temperature=1.0,
        dataloader_num_workers=0,
    )
    trainer, rewards = make_grpo_trainer(
        policy,
        word_tokenizer,
        build_grpo_dataset(SAMPLES, variant=variant, prefill_analysis=True),
        judge,
        variant=variant,
        args=args,
    )
    assert trainer.reward_weights.tolist() == pytest.approx([1.0, 0.5, 0.001])
    # TRL >= 1.16 scores log-probs through `model.base_model(...).last_hidden_state` + the LM head;
    # FlyThinker's base_model view runs the fused backbone.
    trainer.train()
    changed = [n for n, p in policy.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed, "GRPO did not change any policy parameter"
    logs = {k for entry in trainer.state.log_history for k in entry}
    for comp in ("empathy", "bystander", "length"):
        assert f"rewards/{variant}_{comp}/mean" in logs, sorted(logs)
    for dim in ("resonation", "expression", "reception", "bystander"):
        assert f"{variant}/{dim}" in logs, sorted(logs)
    assert len(rewards.history) == 2 and all(1 <= h["reception"] <= 5 for h in rewards.history)


def test_reward_functions_direct_call_matches_formula(word_tokenizer):
    class FixedScorer:
        def score(self, samples, dimensions):
            return {
                "resonation": [4.0, 1.0],
                "expression": [3.0, 1.0],
                "reception": [5.0, 1.0],
                "bystander": [80.0, 0.0],
            }

    rf = PermRewardFunctions(FixedScorer(), tokenizer=word_tokenizer)
    comps = ["# Analysis\nsad\n# Response\nhello", "no sections"]
    logged = {}
    kw = {
        "query": ["q1", "q2"],
        "completion_ids": [[1] * 769, [1] * 768],
        "log_metric": lambda k, v: logged.setdefault(k, v),
    }
    total = rf.total(["p1", "p2"], comps, **kw)
    assert total == pytest.approx([36 / 47 - 0.1 - 0.001, 0.2 - 0.5])
    assert rf.empathy.__name__ == "perm_empathy" and logged["perm/resonation"] == pytest.approx(2.5)
    with pytest.raises(ValueError, match="memories"):
        PermRewardFunctions(FixedScorer(), variant="peregrm").empathy(["p"], ["c"], query=["q"])
