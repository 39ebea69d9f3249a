"""PERM reward formula and section parsing against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from flythinker.rewards import formula
from flythinker.rewards.formula import combine, perm_reward, perm_reward_tensor
from flythinker.rewards.prompts import dimension_messages
from flythinker.rewards.samples import EmpathySample
from flythinker.rewards.sections import parse_sections, span_token_mask

# s = (4, 3, 5) → x = (0.8, 0.6, 1.0)
HARMONIC = 36 / 47  # 3 / (5/4 + 5/3 + 1)
ARITHMETIC = 0.8  # (0.8 + 0.6 + 1.0) / 3
GEOMETRIC = 0.48 ** (1 / 3)  # (0.8·0.6·1.0)^(1/3)
W_ARITH = 0.8  # (2·0.8 + 0.6 + 1.0) / 4
W_HARM = 24 / 31  # 4 / (2/0.8 + 1/0.6 + 1)


@pytest.mark.parametrize(
    ("mode", "weights", "expected"),
    [
        ("harmonic", None, HARMONIC),
        ("arithmetic", None, ARITHMETIC),
        ("geometric", None, GEOMETRIC),
        ("weighted", [2, 1, 1], W_ARITH),
        ("harmonic", [2, 1, 1], W_HARM),
        ("weighted", {"resonation": 2, "expression": 1, "reception": 1}, W_ARITH),
    ],
)
def test_empathy_means(mode, weights, expected):
    assert formula.empathy_term(4, 3, 5, mode, weights) == pytest.approx(expected, abs=1e-12)


def test_full_reward_and_length_boundary():
    base = HARMONIC + 0.5 * (80 / 100 - 1)  # = 36/47 − 0.1
    assert perm_reward(4, 3, 5, 80, 0) == pytest.approx(base, abs=1e-12)
    assert perm_reward(4, 3, 5, 80, 768) == pytest.approx(base, abs=1e-12)
    assert perm_reward(4, 3, 5, 80, 769) == pytest.approx(base - 0.001, abs=1e-12)
    assert perm_reward(4, 3, 5, 80, 1000) == pytest.approx(base - 0.232, abs=1e-12)
    assert perm_reward(5, 5, 5, 100, 10) == pytest.approx(1.0, abs=1e-12)
    assert perm_reward(1, 1, 1, 0, 10) == pytest.approx(0.2 - 0.5, abs=1e-12)
    assert perm_reward(4, 3, 5, 80, 800, mode="arithmetic") == pytest.approx(0.8 - 0.1 - 0.032, abs=1e-12)


def test_zero_component_and_errors():
    assert combine([0.0, 0.5, 1.0], "harmonic") == 0.0
    assert combine([0.0, 0.5, 1.0], "geometric") == 0.0
    assert combine([0.0, 0.5, 1.0], "arithmetic") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="needs `weights`"):
        combine([0.5, 0.5, 0.5], "weighted")
    with pytest.raises(ValueError, match="combine mode"):
        combine([0.5, 0.5, 0.5], "median")
    with pytest.raises(ValueError, match="expected 3 weights"):
        combine([0.5, 0.5, 0.5], "harmonic", [1, 2])
    with pytest.raises(ValueError, match="non-negative"):
        combine([-0.5, 0.5, 0.5], "harmonic")


@pytest.mark.parametrize("mode", ["harmonic", "arithmetic", "geometric"])
def test_tensor_matches_float(mode):
    g = torch.Generator().manual_seed(0)
    res, exp, rec = (1 + 4 * torch.rand(64, generator=g, dtype=torch.float64) for _ in range(3))
    bys = 100 * torch.rand(64, generator=g, dtype=torch.float64)
    n = torch.randint(700, 840, (64,), generator=g)
    n[:3] = torch.tensor([767, 768, 769])
    got = perm_reward_tensor(res, exp, rec, bys, n, mode=mode, weights=[1, 2, 3])
    want = [
        perm_reward(*(float(t[i]) for t in (res, exp, rec, bys)), int(n[i]), mode=mode, weights=[1, 2, 3])
        for i in range(64)
    ]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)
    no_len = perm_reward_tensor(res, exp, rec, bys, None, mode=mode, weights=[1, 2, 3])
    torch.testing.assert_close(no_len[:2], got[:2], rtol=0, atol=1e-12)  # 767, 768: no penalty
    assert float(no_len[2] - got[2]) == pytest.approx(0.001, abs=1e-12)


def test_sections_both_missing_and_partial():
    text = "# Analysis\nShe feels left out.\n\n# Response\nThat sounds lonely.\n"
    s = parse_sections(text)
    assert (s.analysis, s.response) == ("She feels left out.", "That sounds lonely.")
    assert text[slice(*s.analysis_span)] == s.analysis and text[slice(*s.response_span)] == s.response

    assert parse_sections("just a reply with no headings") == parse_sections("")
    assert parse_sections("just a reply").analysis == "" and parse_sections("just a reply").response == ""
    only_resp = parse_sections("## response\nHi there")
    assert (only_resp.analysis, only_resp.response, only_resp.analysis_span) == ("", "Hi there", None)
    only_ana = parse_sections("#ANALYSIS: thinking\nabout it")
    assert (only_ana.analysis, only_ana.response) == ("thinking\nabout it", "")
    empty_ana = parse_sections("# Analysis\n\n# Response\nok")
    assert (empty_ana.analysis, empty_ana.response) == ("", "ok")
    assert parse_sections("# Analysis\nx", strict_pair=True).analysis == ""  # PERM's all-or-nothing parse
    # A "Response" heading before the analysis is not the response section.
    odd = parse_sections("# Response\nfirst\n# Analysis\nsecond")
    assert (odd.analysis, odd.response) == ("second", "")


def test_missing_section_is_scored_as_empty():
    sample = EmpathySample.from_completion([{"role": "assistant", "content": "no format at all"}], query="q")
    assert (sample.analysis, sample.response) == ("", "")
    user = dimension_messages("resonation", sample)[1]["content"]
    assert "Assistant analysis:\n(empty)" in user
    assert "Assistant response:\n(empty)" in dimension_messages("reception", sample)[1]["content"]


def test_span_token_mask():
    offsets = torch.tensor([[[0, 0], [0, 3], [4, 8], [9, 12], [0, 0]]])
    assert span_token_mask(offsets, [(4, 12)]).tolist() == [[False, False, True, True, False]]
    assert span_token_mask(offsets, [(5, 6)]).tolist() == [[False, False, True, False, False]]
    assert not span_token_mask(offsets, [None]).any()
    assert math.isclose(formula.length_excess(769), 1.0)
