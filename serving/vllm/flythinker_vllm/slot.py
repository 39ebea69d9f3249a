"""The per-request latent slot: vLLM keeps the reasoner state h_{t-1} of every running request.

A :class:`LatentSlot` is a one-state "mamba" layer (``MambaBase``, the LINEAR mamba type) whose state
is one vector of width d (the reasoner width, or d_G after a ``linear`` projection). vLLM then
allocates a slot per request, frees it, re-creates it after preemption (by recomputing the prompt)
and, with prefix caching, checkpoints it at block boundaries ("align" mode) and copies the
checkpoint into the request's current slot before a step.

Contract of :meth:`LatentSlot.shift` for a flattened batch of requests (decodes first, then
prefills; request j owns tokens ``[s_j, e_j)``, ``context_j = seq_len_j - (e_j - s_j)``)::

    src[s_j]     = slot_j            if context_j > 0, else 0     (a new request's slot may hold stale bytes)
    src[i]       = h[i - 1]          for s_j < i < e_j            (the one-position shift inside a chunk)
    gate[s_j]    = 1[context_j > 0]; gate[i] = 1 otherwise        (no injection into a request's first token)
    slot_j      <- h[e_j - 1]                                      (after reading)

Padded slot ids (``PAD_SLOT_ID``, CUDA-graph padding) are neither read nor written.
``FLYTHINKER_VLLM_FAULT=no_reset|no_shift`` breaks the contract on purpose (tests prove they catch it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from vllm.config import VllmConfig, get_current_vllm_config
from vllm.forward_context import get_forward_context
from vllm.model_executor.layers.mamba.abstract import MambaBase
from vllm.model_executor.layers.mamba.mamba_utils import MambaStateDtypeCalculator
from vllm.v1.attention.backends.registry import MambaAttentionBackendEnum

PAD_SLOT_ID = -1
FAULTS = ("", "no_reset", "no_shift")


def latent_state_dtype(vllm_config: VllmConfig) -> tuple[torch.dtype, ...]:
    """The slot's dtype: the model dtype unless ``mamba_cache_dtype`` says otherwise."""
    return MambaStateDtypeCalculator.linear_attention_state_dtype(
        vllm_config.model_config.dtype, vllm_config.cache_config.mamba_cache_dtype
    )


@dataclass(frozen=True)
class SlotPlan:
    """The live requests of one step: first token, end (exclusive), new request?, slot index."""

    starts: torch.Tensor
    ends: torch.Tensor
    fresh: torch.Tensor
    slots: torch.Tensor


class LatentSlot(nn.Module, MambaBase):
    """One vector of state per request (see the module docstring). Its name must hold one integer."""

    def __init__(self, width: int, prefix: str):
        super().__init__()
        vllm_config = get_current_vllm_config()
        self.width = int(width)
        self.prefix = prefix
        self._dtypes = latent_state_dtype(vllm_config)
        self.kv_cache = (torch.tensor([]),)
        context = vllm_config.compilation_config.static_forward_context
        if prefix in context:
            raise ValueError(f"duplicate layer name {prefix!r} in vLLM's forward context")
        context[prefix] = self
        self.fault = os.environ.get("FLYTHINKER_VLLM_FAULT", "")
        if self.fault not in FAULTS:
            raise ValueError(f"FLYTHINKER_VLLM_FAULT must be one of {FAULTS}, got {self.fault!r}")

    # ------------------------------------------------------------------ MambaBase
    @property
    def mamba_type(self) -> MambaAttentionBackendEnum:
        return MambaAttentionBackendEnum.LINEAR

    def get_state_shape(self) -> tuple[tuple[int, ...], ...]:
        return ((self.width,),)

    def get_state_dtype(self) -> tuple[torch.dtype, ...]:
        return self._dtypes

    # ------------------------------------------------------------------ the carry
    def _metadata(self):
        """This layer's metadata for the step, or None in a profiling / dummy run (no slots)."""
        metadata = get_forward_context().attn_metadata
        if isinstance(metadata, list):  # micro-batched: not supported here
            raise NotImplementedError("FlyThinker's latent slot does not support micro-batching (ubatching)")
        return metadata.get(self.prefix) if isinstance(metadata, dict) else None

    def plan(self, num_tokens: int) -> SlotPlan | None:
        """The live requests of this step (None in a profiling / dummy run: the batch is one sequence)."""
        metadata = self._metadata()
        if metadata is None:
            return None
        num_reqs = metadata.num_decodes + metadata.num_prefills
        starts = metadata.query_start_loc[:num_reqs].long()
        ends = metadata.query_start_loc[1 : num_reqs + 1].long()
        query_lens = ends - starts
        context = metadata.seq_lens[:num_reqs].long() - query_lens
        slots = metadata.state_indices_tensor[:num_reqs].long()
        live = (query_lens > 0) & (slots != PAD_SLOT_ID) & (ends <= num_tokens)
        fresh = context[live] == 0
        if self.fault == "no_reset":
            fresh = torch.zeros_like(fresh)
        return SlotPlan(starts[live], ends[live], fresh, slots[live])

    def decode_only(self) -> bool:
        """Every request of this step has exactly one token (host-side counts, no device sync): then no
        token's source depends on the reasoner state computed in the same step."""
        metadata = self._metadata()
        return (
            metadata is not None
            and metadata.num_prefills == 0
            and metadata.num_decodes > 0
            and metadata.num_decode_tokens == metadata.num_decodes
        )

    def read(self, plan: SlotPlan | None, src: torch.Tensor, gate: torch.Tensor) -> None:
        """Put each request's carried state (0 for a new request) at its first token, and the gate."""
        if plan is None:
            gate[0] = 0.0
            return
        carried = self.kv_cache[0][plan.slots].to(src.dtype)
        carried = torch.where(plan.fresh[:, None], torch.zeros_like(carried), carried)
        if self.fault != "no_shift":
            src[plan.starts] = carried
        gate[plan.starts] = (~plan.fresh).to(gate.dtype)

    def write(self, plan: SlotPlan | None, hidden: torch.Tensor) -> None:
        """slot_j <- the state of request j's last token in this step."""
        if plan is not None:
            state = self.kv_cache[0]
            state[plan.slots] = hidden[plan.ends - 1].to(state.dtype)

    def carried(
        self, num_tokens: int, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, SlotPlan | None]:
        """(src, gate, plan) of a decode-only step (:meth:`decode_only`): every source comes from a slot,
        none from this step's reasoner, so the reasoner may run concurrently with the generator;
        :meth:`write` its states afterwards."""
        src = like.new_zeros(num_tokens, self.width)
        gate = torch.ones(num_tokens, dtype=torch.float32, device=like.device)
        plan = self.plan(num_tokens)
        self.read(plan, src, gate)
        return src, gate, plan

    def shift(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(src [N, d], gate [N]) for ``hidden`` = h of every scheduled token; updates the slots."""
        num_tokens = hidden.shape[0]
        src = torch.zeros_like(hidden)
        gate = torch.ones(num_tokens, dtype=torch.float32, device=hidden.device)
        if self.fault == "no_shift":
            src.copy_(hidden)
        else:
            src[1:] = hidden[:-1]
        plan = self.plan(num_tokens)
        self.read(plan, src, gate)
        self.write(plan, hidden)
        return src, gate
