"""FlyThinkerConfig rejects values that would train silently wrong models (each failed on 57d708a)."""

from __future__ import annotations

import math

import pytest

from flythinker import FlyThinkerConfig
from tests.tiny_models import tiny_llama_config, tiny_qwen2_config


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e30, -0.1, True, "0.5", None])
def test_fusion_lambda_must_be_a_finite_number_in_range(value):
    with pytest.raises(ValueError, match=r"fusion_lambda .*\[0\.0, 100\.0\].*got"):
        FlyThinkerConfig(
            generator_config=tiny_qwen2_config(), reasoner_config=tiny_llama_config(), fusion_lambda=value
        )


@pytest.mark.parametrize("value", [math.nan, -1e-3, 2.0, "0"])
def test_norm_eps_is_checked(value):
    with pytest.raises(ValueError, match="norm_eps"):
        FlyThinkerConfig(norm_eps=value)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("fusion_gate", "always", "fusion_gate must be one of"), ("projection", "pad", "projection must be one of"),
     ("center_reasoner", "yes", "center_reasoner must be True or False")],
)  # fmt: skip
def test_choices_are_checked(option, value, message):
    with pytest.raises(ValueError, match=message):
        FlyThinkerConfig(**{option: value})


def test_valid_values_round_trip_through_the_saved_config(tmp_path):
    config = FlyThinkerConfig(
        generator_config=tiny_qwen2_config(), reasoner_config=tiny_llama_config(), fusion_lambda=0.25,
        projection="zero_linear", fusion_gate="channel", center_reasoner=True,
    )  # fmt: skip
    config.save_pretrained(tmp_path)
    loaded = FlyThinkerConfig.from_pretrained(tmp_path)
    assert (loaded.fusion_lambda, loaded.projection, loaded.fusion_gate, loaded.center_reasoner) == (
        0.25, "zero_linear", "channel", True,
    )  # fmt: skip
    with pytest.raises(
        ValueError, match="fusion_lambda"
    ):  # a validated config cannot be set to NaN and saved
        loaded.fusion_lambda = math.nan
        loaded.validate_fusion()
