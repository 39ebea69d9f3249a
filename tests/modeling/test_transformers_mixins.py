"""transformers' own model tests on FlyThinkerForCausalLM (issue 10.6).

``ModelTesterMixin`` and ``ConfigTester`` come from the transformers source distribution of the
installed version (fetched and cached at test time by ``transformers_test_sources``; the module is
skipped when it cannot be fetched). ``GenerationTesterMixin`` does not ship there: the tests of
``test_generation_checks.py`` cover its checks (dict outputs with scores, logits, attentions and
hidden-state shapes; continuing from returned ``past_key_values``; beam search; the assisted-decoding
error). Every skipped mixin test names why it cannot apply to a two-model fused architecture.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import unittest
from unittest import mock

import pytest
from transformers.models.auto import modeling_auto

from flythinker import FlyThinkerConfig, FlyThinkerForCausalLM

from .flythinker_tester import FlyThinkerModelTester
from .transformers_test_sources import SourcesUnavailable, load_transformers_test_modules

try:
    _modeling_common, _configuration_common = load_transformers_test_modules()
except SourcesUnavailable as error:
    pytest.skip(f"transformers' test mixins unavailable: {error}", allow_module_level=True)

ModelTesterMixin = _modeling_common.ModelTesterMixin
ConfigTester = _configuration_common.ConfigTester

NO_INPUTS_EMBEDS = (
    "FlyThinker needs input_ids: the reasoner reads the same tokens as the generator (no inputs_embeds)"
)


class FlyThinkerModelTest(ModelTesterMixin, _modeling_common.GenerationTesterMixin, unittest.TestCase):
    """The standard tester. ``GenerationTesterMixin`` is the stub of ``transformers_test_sources``: the
    generation checks it stands for are in ``test_generation_checks.py``."""

    all_model_classes = (FlyThinkerForCausalLM,)
    pipeline_model_mapping = {}
    _is_composite = True
    test_resize_embeddings = True

    def setUp(self):
        self.model_tester = FlyThinkerModelTester(self)
        generator, reasoner = self.model_tester.generator_config(), self.model_tester.reasoner_config()
        # sub-configs serialise as their full JSON dict without transformers_version (what the tester compares)
        as_input = {
            k: v
            for k, v in json.loads(generator.to_json_string(use_diff=False)).items()
            if k != "transformers_version"
        }
        reasoner_input = {
            k: v
            for k, v in json.loads(reasoner.to_json_string(use_diff=False)).items()
            if k != "transformers_version"
        }
        self.config_tester = ConfigTester(
            self,
            config_class=FlyThinkerConfig,
            has_text_modality=True,
            common_properties=["hidden_size", "max_position_embeddings"],
            generator_config=as_input,
            reasoner_config=reasoner_input,
        )
        # FlyThinker is a causal LM the way transformers' own are: list it where the mixins look them up
        # (labels for the training/loss tests, the shift_labels test).
        names = mock.patch.dict(
            modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, {"flythinker": "FlyThinkerForCausalLM"}
        )
        names.start()
        self.addCleanup(names.stop)

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(reason=NO_INPUTS_EMBEDS)
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason=NO_INPUTS_EMBEDS)
    def test_inputs_embeds_matches_input_ids(self):
        pass

    # A model of 2026: transformers skips this check only for its own models older than 2023.
    test_can_init_all_missing_weights_before_2023 = True

    def _lenient_loading(self):
        """FlyThinkerForCausalLM.from_pretrained is strict by default (missing keys raise, naming them);
        the two tests below read transformers' lenient missing-key handling, which strict=False restores."""
        if "strict" not in inspect.signature(FlyThinkerForCausalLM.from_pretrained).parameters:
            return contextlib.nullcontext()
        original = FlyThinkerForCausalLM.from_pretrained.__func__

        def lenient(cls, *args, **kwargs):
            return original(cls, *args, **{"strict": False, **kwargs})

        return mock.patch.object(FlyThinkerForCausalLM, "from_pretrained", classmethod(lenient))

    def test_model_weights_reload_no_missing_tied_weights(self):
        with self._lenient_loading():
            super().test_model_weights_reload_no_missing_tied_weights()

    def test_can_init_all_missing_weights(self):
        with self._lenient_loading():
            super().test_can_init_all_missing_weights()
