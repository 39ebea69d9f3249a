"""transformers' own model tests on FlyThinkerForCausalLM (issue 10.6).

``ModelTesterMixin`` and ``ConfigTester`` come from the transformers source distribution of the
installed version (fetched and cached at test time by ``transformers_test_sources``; the module is
skipped when it cannot be fetched). ``GenerationTesterMixin`` does not ship there: the
``test_generate_*`` tests below cover its checks (dict outputs with scores, logits, attentions and
hidden-state shapes; continuing from returned ``past_key_values``; beam search; the assisted-decoding
error). Every skipped mixin test names why it cannot apply to a two-model fused architecture.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import unittest
from unittest import mock

import pytest
import torch
from transformers import LlamaConfig, Qwen2Config
from transformers.models.auto import modeling_auto

from flythinker import FlyThinkerConfig, FlyThinkerForCausalLM

from .transformers_test_sources import SourcesUnavailable, load_transformers_test_modules

try:
    _modeling_common, _configuration_common = load_transformers_test_modules()
except SourcesUnavailable as error:
    pytest.skip(f"transformers' test mixins unavailable: {error}", allow_module_level=True)

ModelTesterMixin = _modeling_common.ModelTesterMixin
ConfigTester = _configuration_common.ConfigTester
ids_tensor = _modeling_common.ids_tensor
random_attention_mask = _modeling_common.random_attention_mask

NO_INPUTS_EMBEDS = (
    "FlyThinker needs input_ids: the reasoner reads the same tokens as the generator (no inputs_embeds)"
)


class FlyThinkerModelTester:
    """Tiny Qwen2 generator (d=32, 2 layers) + Llama reasoner (d=16, 2 layers), head_dim 8."""

    def __init__(self, parent, batch_size: int = 2, seq_length: int = 7, vocab_size: int = 99):
        self.parent = parent
        self.batch_size, self.seq_length, self.vocab_size = batch_size, seq_length, vocab_size
        self.hidden_size, self.num_hidden_layers, self.num_attention_heads = 32, 2, 4
        self.is_training = True
        self.pad_token_id, self.bos_token_id, self.eos_token_id = 0, 1, 2

    def generator_config(self) -> Qwen2Config:
        return Qwen2Config(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=37,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=True,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
        )

    def reasoner_config(self) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=64,
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
        )

    def get_config(self) -> FlyThinkerConfig:
        return FlyThinkerConfig(
            generator_config=self.generator_config(),
            reasoner_config=self.reasoner_config(),
            pad_token_id=self.pad_token_id,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
        )

    def prepare_config_and_inputs_for_common(self):
        # random ids, pad id 0 included (a row may start with it: its reasoner state can be exactly 0)
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = random_attention_mask([self.batch_size, self.seq_length])
        return self.get_config(), {"input_ids": input_ids, "attention_mask": attention_mask}


class FlyThinkerModelTest(ModelTesterMixin, _modeling_common.GenerationTesterMixin, unittest.TestCase):
    """The standard tester. ``GenerationTesterMixin`` is the stub of ``transformers_test_sources``: the
    generation checks it stands for are the ``test_generate_*`` functions of this module."""

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


# ------------------------------------------------------------------------------------------------------
# GenerationTesterMixin's checks (the mixin is not in the sdist), on the same tiny model.


def _model(dtype=torch.float64, seed=0, attn_implementation="sdpa", **config_kwargs):
    torch.manual_seed(seed)
    tester = FlyThinkerModelTester(None)
    config = tester.get_config()
    for key, value in config_kwargs.items():
        setattr(config, key, value)
    config._attn_implementation = attn_implementation
    for sub in (config.generator_config, config.reasoner_config):
        sub._attn_implementation = attn_implementation
    return FlyThinkerForCausalLM(config).to(dtype).eval()


def _prompt():
    """Two rows, the second left-padded by 2 (pad id 0 never appears among real tokens)."""
    input_ids = torch.tensor([[5, 9, 14, 20, 7, 33], [0, 0, 41, 8, 17, 62]])
    attention_mask = (input_ids != 0).long()
    return input_ids, attention_mask


def _teacher_forced_logits(model, sequences, attention_mask):
    with torch.no_grad():
        return model(sequences, attention_mask=attention_mask, use_cache=False).logits


def test_generate_dict_outputs_scores_logits_attentions_hidden_states():
    # eager attention returns the weights; float32 because stock eager attention in float64 turns
    # left-padded rows into NaN (Qwen2 alone does too)
    model = _model(dtype=torch.float32, attn_implementation="eager")
    input_ids, attention_mask = _prompt()
    new, (batch, length) = 4, input_ids.shape
    out = model.generate(
        input_ids,
        attention_mask=attention_mask,
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        return_dict_in_generate=True,
        output_scores=True,
        output_logits=True,
        output_attentions=True,
        output_hidden_states=True,
        pad_token_id=0,
    )
    cfg = model.config.get_text_config()
    vocab, layers, heads = cfg.vocab_size, cfg.num_hidden_layers, cfg.num_attention_heads
    assert out.sequences.shape == (batch, length + new)
    assert len(out.scores) == len(out.logits) == new
    assert all(t.shape == (batch, vocab) for t in (*out.scores, *out.logits))
    assert len(out.attentions) == len(out.hidden_states) == new
    for step, (attentions, hidden_states) in enumerate(zip(out.attentions, out.hidden_states)):
        query = length if step == 0 else 1
        assert len(attentions) == layers and len(hidden_states) == layers + 1
        assert all(a.shape == (batch, heads, query, length + step) for a in attentions)
        assert all(h.shape == (batch, query, cfg.hidden_size) for h in hidden_states)
    # independent reference: one teacher-forced forward over the generated sequences
    full_mask = torch.cat([attention_mask, torch.ones(batch, new, dtype=torch.long)], dim=1)
    reference = _teacher_forced_logits(model, out.sequences, full_mask)[:, length - 1 : -1]
    # generate() hands back float32 logits
    torch.testing.assert_close(torch.stack(out.logits, dim=1), reference.float(), atol=1e-5, rtol=1e-5)
    assert torch.equal(out.sequences[:, length:], reference.argmax(-1))
    assert type(out.past_key_values).__name__ == "FlyThinkerCache"


def test_generate_continue_from_returned_past_key_values():
    model = _model()
    input_ids, attention_mask = _prompt()
    kwargs = dict(do_sample=False, pad_token_id=0, return_dict_in_generate=True)
    whole = model.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=6, min_new_tokens=6, **kwargs
    )
    first = model.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=3, min_new_tokens=3, **kwargs
    )
    mask = torch.cat([attention_mask, torch.ones(2, 3, dtype=torch.long)], dim=1)
    second = model.generate(
        first.sequences,
        attention_mask=mask,
        past_key_values=copy.deepcopy(first.past_key_values),
        max_new_tokens=3,
        min_new_tokens=3,
        **kwargs,
    )
    assert torch.equal(second.sequences, whole.sequences)


def test_generate_beam_search_scores_are_sequence_logprobs():
    model = _model()
    input_ids, attention_mask = _prompt()
    beams, new, length = 3, 4, input_ids.shape[1]
    out = model.generate(
        input_ids,
        attention_mask=attention_mask,
        num_beams=beams,
        num_return_sequences=beams,
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        length_penalty=0.0,
        early_stopping=True,
        return_dict_in_generate=True,
        output_scores=True,
        pad_token_id=0,
    )
    assert out.sequences.shape == (2 * beams, length + new) and out.sequences_scores.shape == (2 * beams,)
    mask = torch.cat(
        [attention_mask.repeat_interleave(beams, 0), torch.ones(2 * beams, new, dtype=torch.long)], 1
    )
    logprobs = _teacher_forced_logits(model, out.sequences, mask)[:, length - 1 : -1].log_softmax(-1)
    summed = logprobs.gather(-1, out.sequences[:, length:, None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(out.sequences_scores.double(), summed, atol=1e-5, rtol=1e-6)  # float32 scores
    greedy = model.generate(
        input_ids,
        attention_mask=attention_mask,
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        pad_token_id=0,
    )
    greedy_logprobs = _teacher_forced_logits(model, greedy, mask[::beams])[:, length - 1 : -1].log_softmax(-1)
    greedy_score = greedy_logprobs.gather(-1, greedy[:, length:, None]).squeeze(-1).sum(-1)
    assert torch.all(out.sequences_scores.view(2, beams)[:, 0] >= greedy_score - 1e-9)


def test_assisted_decoding_fails_early_with_a_clear_error():
    model, assistant = _model(), _model(seed=1)
    input_ids, attention_mask = _prompt()
    for kwargs in ({"assistant_model": assistant}, {"prompt_lookup_num_tokens": 2}):
        with pytest.raises(ValueError, match="assisted generation is not supported with stateful models"):
            model.generate(
                input_ids,
                attention_mask=attention_mask,
                max_new_tokens=3,
                do_sample=False,
                pad_token_id=0,
                **kwargs,
            )


# ------------------------------------------------------------------------------------------------------
# The other deviations a transformers user would hit.


def test_plain_forward_honours_config_use_cache_and_its_cache_continues():
    model = _model()
    input_ids, attention_mask = _prompt()
    with torch.no_grad():
        # unset (FlyThinkerConfig's default): no cache, so packed rows (position_ids only) stay separated
        assert model(input_ids, attention_mask=attention_mask).past_key_values is None
        model.config.use_cache = True
        out = model(input_ids[:, :4], attention_mask=attention_mask[:, :4])
        assert type(out.past_key_values).__name__ == "FlyThinkerCache"
        step = model(
            input_ids[:, 4:], attention_mask=attention_mask, past_key_values=out.past_key_values
        ).logits
        full = model(input_ids, attention_mask=attention_mask, use_cache=False).logits
        torch.testing.assert_close(step, full[:, 4:], atol=1e-10, rtol=1e-8)
        assert model(input_ids, attention_mask=attention_mask, use_cache=False).past_key_values is None
        model.config.use_cache = False
        assert model(input_ids, attention_mask=attention_mask).past_key_values is None


def test_return_dict_false_returns_the_same_tensors_as_a_tuple():
    model = _model()
    input_ids, attention_mask = _prompt()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    with torch.no_grad():
        as_dict = model(
            input_ids,
            attention_mask=attention_mask,
            labels=labels,
            return_logits=True,
            output_hidden_states=True,
            use_cache=False,
        )
        as_tuple = model(
            input_ids,
            attention_mask=attention_mask,
            labels=labels,
            return_logits=True,
            output_hidden_states=True,
            use_cache=False,
            return_dict=False,
        )
    assert isinstance(as_tuple, tuple)
    assert torch.equal(as_tuple[0], as_dict.loss) and torch.equal(as_tuple[1], as_dict.logits)
    assert all(torch.equal(a, b) for a, b in zip(as_tuple[2], as_dict.hidden_states))


@pytest.mark.parametrize("use_fused_loss", [True, False])
def test_shift_labels_are_the_loss_targets(use_fused_loss):
    model = _model(use_fused_loss=use_fused_loss)
    input_ids, attention_mask = _prompt()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    shifted = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].contiguous()
    other = torch.randint(3, 99, labels.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        loss = model(input_ids, attention_mask=attention_mask, labels=labels).loss
        same = model(input_ids, attention_mask=attention_mask, labels=other, shift_labels=shifted).loss
        moved = model(input_ids, attention_mask=attention_mask, labels=labels, shift_labels=other).loss
        logits = model(input_ids, attention_mask=attention_mask, use_cache=False).logits
    torch.testing.assert_close(same, loss, atol=1e-12, rtol=1e-10)  # labels ignored when shift_labels given
    reference = torch.nn.functional.cross_entropy(logits.flatten(0, 1), other.flatten())
    torch.testing.assert_close(
        moved.double(), reference, atol=1e-6, rtol=1e-6
    )  # transformers' CE upcasts to fp32


def test_resize_token_embeddings_resizes_both_tables_and_mean_norm(tmp_path):
    model = _model()
    before = model.refresh_mean_embedding_norm().clone()
    embeddings = model.resize_token_embeddings(110)
    assert embeddings.weight.shape[0] == 110
    assert model.generator.get_input_embeddings().weight.shape[0] == 110
    assert model.reasoner.get_input_embeddings().weight.shape[0] == 110
    assert model.config.vocab_size == model.config.reasoner_config.vocab_size == 110
    ids = torch.tensor([[5, 9, 105, 109, 7]])
    with torch.no_grad():
        logits = model(ids).logits  # the new ids reach both models
    assert logits.shape == (1, 5, 110)
    table = model.generator.get_input_embeddings().weight
    expected = table.detach().double().norm(dim=-1).mean()
    torch.testing.assert_close(model.mean_embedding_norm.double(), expected, atol=1e-12, rtol=1e-10)
    assert not torch.equal(model.mean_embedding_norm.double(), before.double())
    model.save_pretrained(tmp_path)
    reloaded = FlyThinkerForCausalLM.from_pretrained(tmp_path, dtype=torch.float64).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, logits, atol=1e-12, rtol=1e-10)


def test_torch_export_traces_forward():
    # ExportTesterMixin is not in the sdist: the same check, on the tiny model
    model = _model(dtype=torch.float32)
    input_ids, attention_mask = _prompt()
    with torch.no_grad():
        expected = model(input_ids, attention_mask=attention_mask, use_cache=False).logits
        program = torch.export.export(
            model, (input_ids,), {"attention_mask": attention_mask, "use_cache": False}, strict=False
        )
        exported = program.module()(input_ids, attention_mask=attention_mask, use_cache=False).logits
    torch.testing.assert_close(exported, expected)
