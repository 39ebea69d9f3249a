"""T3 baselines: BM25 against the formula, MiniLM on the d100 example, the LM re-ranker, the T4 judges."""

from __future__ import annotations

import math

import pytest
import torch

from flythinker.evaluation.alpsbench.data import model_view
from flythinker.evaluation.alpsbench.retrieval import BM25Retriever, LMReranker, bm25_tokenize
from tests.evaluation.alpsbench._fakes import FakeLM, examples


def test_bm25_tokenize():
    assert bm25_tokenize("The Running dogs, and the cats' toys!") == ["run", "dog", "cat", "toy"]
    assert bm25_tokenize("喜欢 面条") == ["喜欢", "面条"]  # \w is Unicode; no stemming change
    assert bm25_tokenize("") == []


def test_bm25_scores_match_the_formula():
    docs = ["green tea every morning", "black coffee", "walks the dog daily in the park"]
    cands = [{"memory_id": f"m{i}", "value": d} for i, d in enumerate(docs)]
    got = BM25Retriever().scores("green tea or a dog", cands)
    toks = [
        bm25_tokenize(d) for d in docs
    ]  # [green, tea, everi, morn], [black, coffe], [walk, dog, daili, park]
    avgdl = sum(map(len, toks)) / 3
    k1, b = 1.5, 0.75

    def term(tf, dl, n_docs_with_term):
        idf = math.log((3 - n_docs_with_term + 0.5) / (n_docs_with_term + 0.5))
        return idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))

    want = [2 * term(1, 4, 1), 0.0, term(1, 4, 1)]
    assert got == pytest.approx(want)
    assert BM25Retriever().rank("green tea or a dog", cands) == [0, 2, 1]


@pytest.fixture(scope="module")
def d100_view():
    td = examples()["task3_d100"]
    row = td.inputs[0]
    return model_view(td.track, row), td.references[row["benchmark_id"]]["gold"]["selected_memory_id"]


def test_bm25_and_minilm_on_the_d100_example(d100_view):
    from flythinker.evaluation.alpsbench.retrieval import EmbeddingRetriever, MiniLMEmbedder

    view, gold = d100_view
    cands = view["candidate_memories"]
    bm25 = BM25Retriever()
    bm25_ids = [cands[i]["memory_id"] for i in bm25.rank(view["query"], cands)]
    assert bm25.predict(view)["selected_memory_id"] == "m5" and bm25_ids.index(gold) == 1  # gold ranked 2nd
    embedder = MiniLMEmbedder()
    vecs = embedder.encode(["I love green tea", "Green tea is my favourite drink", "The stock market fell"])
    assert vecs.shape == (3, 384)
    assert torch.allclose(vecs.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert float(vecs[0] @ vecs[1]) > float(vecs[0] @ vecs[2]) + 0.3
    # padding does not change an embedding (mean pooling over real tokens only)
    alone = embedder.encode(["I love green tea"])[0]
    assert torch.allclose(alone, vecs[0], atol=1e-5)
    minilm = EmbeddingRetriever(embedder)
    pred = minilm.predict(view)
    assert pred["selected_memory_id"] == gold == "m3" and pred["reason"].startswith("minilm score")


def test_lm_reranker_reads_the_digit(d100_view):
    view, gold = d100_view
    bm25 = BM25Retriever()
    top = bm25.rank(view["query"], view["candidate_memories"])[:5]
    gold_pos = [view["candidate_memories"][i]["memory_id"] for i in top].index(gold) + 1  # 2

    lm = FakeLM(pick=lambda prompt: gold_pos, respond=lambda prompt: " Go with the real footage.")
    reranker = LMReranker(lm, bm25, k=5, answer_tokens=8)
    (pred,) = reranker.predict_many([view])
    assert pred["selected_memory_id"] == gold
    assert pred["answer"] == "Go with the real footage." and "first-stage rank 2" in pred["reason"]
    select_prompt = next(p for p in lm.prompts if "Which memory" in p)
    assert "1. " in select_prompt and "5. " in select_prompt and "6. " not in select_prompt
    # the chosen memory is given to the answer prompt
    assert any("Requires authentic wildlife footage" in p for p in lm.prompts if "Which memory" not in p)
    with pytest.raises(ValueError, match="k must be in 1..9"):
        LMReranker(lm, bm25, k=10)
    empty = dict(view, candidate_memories=[])
    assert reranker.predict_many([empty])[0]["selected_memory_id"] == ""


def test_binary_judge_probability_of_yes():
    from flythinker.evaluation.alpsbench.judges import BINARY_DIMENSIONS, BinaryJudge

    lm = FakeLM(pick=lambda prompt: 10 if "AI meta-talk" in prompt else 11)  # "yes" only for naturalness
    judge = BinaryJudge(lm)
    (dims,) = judge.score(
        [
            {
                "ability": "ability1",
                "memory": "M.S. at Binghamton",
                "query": "q",
                "answer": "a",
                "used_memory_fact": "f",
            }
        ]
    )
    assert set(dims) == set(BINARY_DIMENSIONS["ability1"])
    # logits: 5 on the picked id, 0 elsewhere → p_yes = e^5 / (e^5 + 1) or 1 / (1 + e^5)
    assert dims["naturalness"] == pytest.approx(math.exp(5) / (math.exp(5) + 1))
    assert dims["alignment"] == pytest.approx(1 / (1 + math.exp(5)))
    assert all("M.S. at Binghamton" in p for p in lm.prompts)  # the judge sees the gold memory
    assert judge.score(
        [{"ability": "ability9", "memory": "", "query": "", "answer": "", "used_memory_fact": ""}]
    ) == [{}]


def test_lm_match_judge_blend():
    from flythinker.evaluation.alpsbench.judges import LMMatchJudge
    from flythinker.evaluation.alpsbench.matching import score_memory_match

    lm = FakeLM(pick=lambda prompt: 10 if "tortoise" in prompt else 11)
    gold = [
        {"memory_id": "g1", "label": "Possessions/Pet", "value": "Has a tortoise", "type": "direct"},
        {"memory_id": "g2", "label": "Plans/Schedule", "value": "Flies to Berlin", "type": "direct"},
    ]
    pred = [
        {"memory_id": "p1", "label": "Possessions/Pet", "value": "Has a pet tortoise", "type": "direct"},
        {"memory_id": "p2", "label": "Plans/Schedule", "value": "Flies to Bern", "type": "direct"},
        {"memory_id": "p3", "label": "Z", "value": "", "type": "other"},
    ]
    got = score_memory_match(gold, pred, judge=LMMatchJudge(lm))
    p_yes, p_no = math.exp(5) / (math.exp(5) + 1), 1 / (1 + math.exp(5))
    assert got["judge_score_100"] == round(100 * (p_yes + p_no) / 3, 4)  # two pairs, max(2, 3) items
    assert got["final_score_100"] == round(0.5 * got["algo_score_100"] + 0.5 * 100 * (p_yes + p_no) / 3, 4)
    assert LMMatchJudge(lm)({"pairs": [], "gold_memory_items": [], "pred_memory_items": []}) == 0.0
