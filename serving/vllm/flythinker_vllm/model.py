"""FlyThinkerForCausalLM for vLLM: both stacks inside one engine model, token-exact with flythinker.

Equations (docs/design.md §1; ``flythinker.modeling.fusion.LatentFusion`` is their one definition, used here
as is, warm-start options included)::

    m̄   = mean over the real V_G rows of ‖E_G[v]‖₂           fp32, after loading (vLLM pads the table)
    u_i  = P_pre(h_i) − μ                                     h = R.backbone(x_0..x_i)[i]
    x̃_i = E_G[x_i] + λ · a_{i-1} · P_post(c ⊙ u_{i-1} · m̄ / ‖u_{i-1}‖)
    logits = G(inputs_embeds = x̃)

Each stack is an ordinary vLLM model built by ``init_vllm_registered_model`` from its sub-config,
so every attention layer of both gets its own paged KV cache; R's LM head is neither built nor
loaded. u_{t-1} crosses steps (and prefill chunks) in a per-request :class:`LatentSlot`.
Checkpoint keys route by prefix: ``generator.*`` → G, ``reasoner.*`` → R's backbone, ``fusion.*``
(and the older ``projection.weight``) → the fusion module; reward heads are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import HasInnerState, IsHybrid
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    PPMissingLayer,
    WeightsMapper,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.sequence import IntermediateTensors

from .limits import check_engine_config
from .overlap import ENV as OVERLAP_ENV
from .overlap import ReasonerOverlap, overlap_requested
from .slot import LatentSlot, latent_state_dtype


def check_supported(config) -> None:
    """Raise a clear error at load for checkpoints this plugin cannot serve."""
    if getattr(config, "generator_config", None) is None or getattr(config, "reasoner_config", None) is None:
        raise ValueError("flythinker-vllm: the config needs generator_config and reasoner_config")
    if getattr(config, "reasoner_context", False):
        raise ValueError(
            "flythinker-vllm: FlyThinkerConfig(reasoner_context=True) models (the reasoner reads its own, longer "
            "prompt) are not served yet; decode them with flythinker.generate(schedule='sequential' or 'processes')"
        )
    config.validate_fusion()  # flythinker's own check of projection, gate and widths


def served_fusion(config) -> nn.Module:
    """flythinker's LatentFusion, its m̄ being the value load_weights computes (see the module doc)."""
    from flythinker.modeling.fusion import LatentFusion

    class ServedFusion(LatentFusion):
        def mean_norm(self, embedding_weight: torch.Tensor, force: bool = False) -> torch.Tensor:
            return self.mean_embedding_norm  # over the real rows, all-reduced under tensor parallelism

    return ServedFusion(config)


def causal_lm_architecture(sub_config) -> str:
    """The vLLM architecture name that builds a sub-config (its own ``…ForCausalLM``)."""
    names = [
        name for name in (getattr(sub_config, "architectures", None) or []) if name.endswith("ForCausalLM")
    ]
    if names:
        return names[0]
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(sub_config.model_type)
    if name is None:
        raise ValueError(
            f"flythinker-vllm: no causal-LM architecture is known for model_type {sub_config.model_type!r}"
        )
    return name


def base_model_prefix(sub_config) -> str:
    """Attribute of the causal LM holding its backbone (``model`` for Llama/Qwen2/Gemma, ...)."""
    from transformers import AutoModelForCausalLM

    model_class = AutoModelForCausalLM._model_mapping[type(sub_config)]
    return model_class.base_model_prefix


def real_mean_embedding_norm(embedding: nn.Module) -> torch.Tensor:
    """m̄ over the real vocabulary rows of a (possibly padded, vocab-parallel) embedding, in fp32."""
    weight = embedding.weight.detach()
    shard = getattr(embedding, "shard_indices", None)
    rows = weight[: shard.num_org_elements] if shard is not None else weight
    total = torch.linalg.vector_norm(rows.float(), dim=-1).sum()
    count = getattr(embedding, "org_vocab_size", rows.shape[0])
    tp_size = getattr(embedding, "tp_size", 1)
    if tp_size > 1:
        from vllm.distributed import tensor_model_parallel_all_reduce

        total = tensor_model_parallel_all_reduce(total)
    return total / count


def _eager(vllm_config: VllmConfig) -> bool:
    """True when vLLM will not torch.compile the model (enforce_eager, or compilation mode NONE)."""
    if vllm_config.model_config.enforce_eager:
        return True
    mode = getattr(vllm_config.compilation_config, "mode", None)
    return mode is not None and getattr(mode, "name", str(mode)).upper() == "NONE"


def input_embedding(model: nn.Module) -> nn.Module:
    """The causal LM's input-embedding table (the first vocab embedding that is not its LM head)."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

    for module in model.modules():
        if isinstance(module, VocabParallelEmbedding) and not isinstance(module, ParallelLMHead):
            return module
    raise ValueError(f"flythinker-vllm: cannot find the input embedding of {type(model).__name__}")


class FlyThinkerForCausalLM(nn.Module, HasInnerState, IsHybrid):
    """Generator G + reasoner R + the latent slot (see the module docstring)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        check_supported(config)
        check_engine_config(vllm_config)  # also checked at config time (limits.register_config_check)
        self.config = config
        generator_config = config.generator_config
        reasoner_config = config.reasoner_config
        self.generator = init_vllm_registered_model(
            vllm_config,
            hf_config=generator_config,
            prefix=maybe_prefix(prefix, "generator"),
            architectures=[causal_lm_architecture(generator_config)],
        )
        reasoner = init_vllm_registered_model(
            vllm_config,
            hf_config=reasoner_config,
            prefix=maybe_prefix(prefix, "reasoner"),
            architectures=[causal_lm_architecture(reasoner_config)],
        )
        self.reasoner_prefix = base_model_prefix(reasoner_config)
        if not hasattr(reasoner, self.reasoner_prefix):
            raise ValueError(
                f"flythinker-vllm: vLLM's {type(reasoner).__name__} has no backbone attribute {self.reasoner_prefix!r}"
            )
        reasoner.lm_head = PPMissingLayer()  # R's LM head: neither built into the graph nor loaded
        if hasattr(reasoner, "logits_processor"):
            del reasoner.logits_processor
        self.reasoner = reasoner
        self.fusion = served_fusion(config)
        self.latent = nn.ModuleList(
            [LatentSlot(self._slot_width(vllm_config), maybe_prefix(prefix, "latent.0"))]
        )
        self.make_empty_intermediate_tensors = getattr(
            self.generator, "make_empty_intermediate_tensors", None
        )
        self.overlap_enabled = overlap_requested()
        if self.overlap_enabled and not _eager(vllm_config):
            raise ValueError(
                f"flythinker-vllm: {OVERLAP_ENV}=1 needs --enforce-eager (enforce_eager=True): the reasoner's "
                "compiled backbone on a second thread is untested"
            )
        parallel = vllm_config.parallel_config
        if self.overlap_enabled and parallel.tensor_parallel_size * parallel.pipeline_parallel_size > 1:
            raise ValueError(
                f"flythinker-vllm: {OVERLAP_ENV}=1 needs one GPU per model replica (tensor and pipeline "
                "parallel size 1): the two stacks' collectives would interleave in different orders"
            )
        self._overlap: ReasonerOverlap | None = None
        self.overlapped_steps = 0  # decode-only steps that ran R beside G (read by the tests)

    # ------------------------------------------------------------------ vLLM hybrid-model interface
    @classmethod
    def _slot_width(cls, vllm_config: VllmConfig) -> int:
        """Width of the carried source u: d_G after a pre-norm ``linear`` projection, else d_R."""
        return int(vllm_config.model_config.hf_config.injected_width)

    @classmethod
    def get_mamba_state_shape_from_config(cls, vllm_config: VllmConfig) -> tuple[tuple[int, ...], ...]:
        return ((cls._slot_width(vllm_config),),)

    @classmethod
    def get_mamba_state_dtype_from_config(cls, vllm_config: VllmConfig) -> tuple[torch.dtype, ...]:
        return latent_state_dtype(vllm_config)

    @classmethod
    def get_mamba_state_copy_func(cls) -> tuple:
        from vllm.model_executor.layers.mamba.mamba_utils import MambaStateCopyFuncCalculator

        return MambaStateCopyFuncCalculator.linear_attention_state_copy_func()

    # ------------------------------------------------------------------ forward
    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.generator.embed_input_ids(input_ids)

    def reasoner_sources(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """u = P_pre(h) − μ for every scheduled token, h = R's backbone on the batch."""
        hidden = getattr(self.reasoner, self.reasoner_prefix)(input_ids, positions, None, None)
        if isinstance(hidden, tuple):  # models that also return auxiliary hidden states
            hidden = hidden[0]
        return self.fusion.source(hidden)

    def inject(self, embeds: torch.Tensor, shifted: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """LatentFusion into E_G[x]. The batch is flat ([N] tokens of many requests), so each token is
        passed as its own length-1 chunk whose ``prev_source`` is the shifted source."""
        weight = input_embedding(self.generator).weight
        fused = self.fusion(embeds[:, None], shifted[:, None], gate[:, None], weight, prev_source=shifted)
        return fused[:, 0]

    def fuse(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x̃ for every scheduled token: R on the batch, u, the slot's shift, LatentFusion into E_G[x]."""
        embeds = self.generator.embed_input_ids(input_ids)
        sources = self.reasoner_sources(input_ids, positions).to(embeds.dtype)
        shifted, gate = self.latent[0].shift(sources)
        return self.inject(embeds, shifted, gate)

    def forward_overlapped(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None,
    ) -> torch.Tensor:
        """A decode-only step with R beside G (:mod:`flythinker_vllm.overlap`): G reads u_{t-1} from the
        slots; R's u_t is written to them once both are done."""
        if self._overlap is None:
            self._overlap = ReasonerOverlap(input_ids.device)
        slot = self.latent[0]
        embeds = self.generator.embed_input_ids(input_ids)
        shifted, gate, plan = slot.carried(input_ids.shape[0], embeds)
        handle = self._overlap.start(self.reasoner_sources, input_ids, positions)
        try:
            hidden = self.generator(
                None, positions, intermediate_tensors, inputs_embeds=self.inject(embeds, shifted, gate)
            )
        finally:
            sources = self._overlap.finish(handle)
        slot.write(plan, sources.to(embeds.dtype))
        self.overlapped_steps += 1
        return hidden

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if inputs_embeds is not None or input_ids is None:
            raise ValueError(
                "flythinker-vllm needs token ids: the reasoner reads the same tokens as the generator"
            )
        if self.overlap_enabled and self.latent[0].decode_only():
            return self.forward_overlapped(input_ids, positions, intermediate_tensors)
        fused = self.fuse(input_ids, positions)
        return self.generator(None, positions, intermediate_tensors, inputs_embeds=fused)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.generator.compute_logits(hidden_states)

    # ------------------------------------------------------------------ weights
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        mapper = WeightsMapper(
            orig_to_new_prefix={
                "reasoner.": f"reasoner.{self.reasoner_prefix}.",
                "projection.": "fusion.projection.",  # checkpoints written before LatentFusion
            }
        )
        loader = AutoWeightsLoader(self, ignore_unexpected_prefixes=["reward_heads."])
        loaded = loader.load_weights(weights, mapper=mapper)
        self.fusion.mean_embedding_norm = real_mean_embedding_norm(input_embedding(self.generator))
        return loaded
