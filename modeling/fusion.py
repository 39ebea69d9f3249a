"""LatentFusion: the one home of the think-while-generating fusion (docs/design.md §1).

For every position i of the generator's input::

    u_i  = P_pre(h_i) − μ                 h = R.backbone(x).last_hidden_state (post-final-norm)
    r_i  = u_i · m̄ / ‖u_i‖₂               m̄ = mean over all V_G rows of ‖E_G[v]‖₂ (fp32, no grad)
    x̃_0  = E_G[x_0]
    x̃_i  = E_G[x_i] + λ·s · a_{i-1} · P_post(c ⊙ r_{i-1})          i ≥ 1

* ``P_pre`` is the learned ``Linear(d_R, d_G)`` of ``projection="linear"`` (identity otherwise);
  ``P_post`` zero-pads to d_G, or is the zero-initialised ``W`` of ``projection="zero_linear"``.
* ``μ`` is the saved per-channel ``reasoner_center`` (``center_reasoner=True``; 0 otherwise).
* ``c = tanh(α)`` is the learned gate of ``fusion_gate="scalar"|"channel"`` with α = 0 at
  initialisation (c = 1 when ``fusion_gate="none"``).
* ``s`` is ``lambda_scale``: 1, except during a training-time λ warm-up.
* ``a_{i-1}·1[pos_i ≠ 0]`` is the caller's positional ``gate`` (see :func:`injection_gate`).
* ‖u‖ is a constant in backward; an exactly-zero u gets no injection (never NaN).

With every option off this is the paper's equation; with a zero gate or a zero ``W`` the fused
embeddings equal ``E_G[x]`` bit for bit, so the model starts as the base generator.

m̄ is cached in a non-persistent fp32 buffer and recomputed (under ``no_grad``) whenever the
embedding table may have changed: its identity, shape, dtype, device or version counter moved, or
*any* torch optimizer took a step (a global ``register_optimizer_step_post_hook`` counter: fused
AdamW updates parameters in place without bumping their version counters). Under
``torch.compile``/``torch.export`` it is computed inside the graph instead of cached.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from flythinker.kernels.injection import latent_injection, mean_embedding_norm

from .sharded_norm import full_mean_embedding_norm

__all__ = ["LatentFusion", "injection_gate", "default_position_ids", "optimizer_steps_taken"]

_optimizer_steps = 0


def _count_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


# Public torch hook, called after every step of every torch.optim.Optimizer (fused ones included).
_STEP_HOOK = register_optimizer_step_post_hook(_count_optimizer_step)


def optimizer_steps_taken() -> int:
    """How many optimizer steps (of any optimizer) this process has taken: part of m̄'s cache key."""
    return _optimizer_steps


def default_position_ids(
    attention_mask: torch.Tensor | None, past_length: int, length: int, device
) -> torch.Tensor:
    """``cumsum(a) - 1`` clipped at 0 over the full mask, sliced to the new positions."""
    if attention_mask is None:
        return torch.arange(past_length, past_length + length, device=device)[None]
    positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    return positions[:, -length:]


def injection_gate(
    attention_mask: torch.Tensor | None, position_ids: torch.Tensor, past_length: int
) -> torch.Tensor:
    """Weight of the injection into each new position: ``a_{i-1} · 1[pos_i != 0]``.

    ``a_{i-1} = 0`` for the first real token after left padding; ``pos_i = 0`` at the start of every
    packed sequence (and at position 0, which has no predecessor at all).
    """
    length = position_ids.shape[-1]
    gate = position_ids != 0
    if attention_mask is not None:
        full = attention_mask.bool()
        start = full.shape[-1] - length  # index of the first new position in the full mask
        previous = full[:, max(start - 1, 0) : full.shape[-1] - 1]
        if start == 0:  # the very first position has no predecessor
            previous = torch.cat([torch.zeros_like(full[:, :1]), previous], dim=-1)
        gate = gate & previous
    elif past_length == 0:
        gate = gate.clone()
        gate[:, 0] = False
    return gate


def _tracing() -> bool:
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch.fx._symbolic_trace.is_fx_symbolic_tracing()
    )


class LatentFusion(nn.Module):
    """Owns λ, ``norm_eps``, the optional projection, gate and centre, and m̄ (see the module docstring).

    Call :meth:`source` on the reasoner's final states (gives u), then ``forward`` to fuse them into
    the generator's input embeddings one position later.
    """

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config  # λ and norm_eps are read from it at every call (one source of truth)
        self.lambda_scale = 1.0
        d_r, d_g, width = config.reasoner_hidden_size, config.generator_hidden_size, config.injected_width
        self.projection_mode = config.projection
        self.source_width = width  # width of u (and of the carried decode state)
        self.projection = nn.Linear(d_r, d_g, bias=False) if config.projection != "zero_pad" else None
        if config.fusion_gate != "none":
            self.gate_logit = nn.Parameter(torch.zeros(1 if config.fusion_gate == "scalar" else width))
        else:
            self.gate_logit = None
        if config.center_reasoner:
            self.register_buffer("reasoner_center", torch.zeros(width))
        else:
            self.reasoner_center = None
        self.register_buffer("mean_embedding_norm", torch.zeros((), dtype=torch.float32), persistent=False)
        self._mean_norm_key: tuple | None = None

    @property
    def fusion_lambda(self) -> float:
        return float(self.config.fusion_lambda)

    @property
    def norm_eps(self) -> float:
        return float(self.config.norm_eps)

    @property
    def effective_lambda(self) -> float:
        """λ·s: the weight the injection has right now."""
        return self.fusion_lambda * self.lambda_scale

    def init_weights(self, std: float) -> None:
        """Start values: α = 0 (gate closed), μ = 0, ``linear`` ~ N(0, std²), ``zero_linear`` = 0.

        Uses transformers' guarded initialisers, so loaded tensors are never overwritten.
        """
        from transformers import initialization as init

        if self.gate_logit is not None:
            init.zeros_(self.gate_logit)
        if self.reasoner_center is not None:
            init.zeros_(self.reasoner_center)
        if self.projection is not None:
            if self.projection_mode == "zero_linear":
                init.zeros_(self.projection.weight)
            else:
                init.normal_(self.projection.weight, mean=0.0, std=std)
        init.zeros_(self.mean_embedding_norm)
        self._mean_norm_key = None  # m̄ is recomputed from the (loaded) table at the next forward

    # ----------------------------------------------------------------------------------------- m̄
    def notice_table_edits(self, embedding_weight: torch.Tensor) -> None:
        """Make the next :meth:`mean_norm` recompute m̄ if the table was edited in place behind autograd's
        back (``weight.data[...] = ...`` or ``weight.data.mul_(...)`` do not move ``weight._version``).

        Cost: one strided read of about V elements (at least one per row) and one host sync; the model calls
        it on every eval-mode prefill, never per decoded token. Edits that keep the sampled elements exactly
        (a part of a row) are not seen: call ``model.refresh_mean_embedding_norm(force=True)`` after those.
        """
        weight = embedding_weight
        if _tracing() or weight.dim() != 2 or weight.numel() == 0 or type(weight.data) is not torch.Tensor:
            return  # sharded (ZeRO-3 / DTensor) tables are refreshed by the training loop
        sample = weight.detach().reshape(-1)[:: max(1, weight.shape[1] - 1)]
        fingerprint = (weight.data_ptr(), float(sample.float().sum()), float(sample.float().abs().sum()))
        if fingerprint != getattr(self, "_table_fingerprint", None):
            self._table_fingerprint = fingerprint
            self._mean_norm_key = None

    def mean_norm(self, embedding_weight: torch.Tensor, force: bool = False) -> torch.Tensor:
        """m̄ = mean_v ‖E_G[v]‖₂ of ``embedding_weight`` as it is now (fp32, no gradient)."""
        if _tracing():
            return mean_embedding_norm(embedding_weight)
        key = (
            id(embedding_weight),
            embedding_weight.data_ptr(),
            embedding_weight._version,
            tuple(embedding_weight.shape),
            embedding_weight.dtype,
            embedding_weight.device,
            _optimizer_steps,
        )
        buffer = self.mean_embedding_norm
        if force or key != self._mean_norm_key or buffer.device != embedding_weight.device:
            value = full_mean_embedding_norm(embedding_weight)  # full table also under FSDP2 / ZeRO-3
            if buffer.device != value.device or buffer.dtype != value.dtype:
                self.mean_embedding_norm = value.clone()
            else:
                buffer.copy_(value)
            self._mean_norm_key = key
        return self.mean_embedding_norm

    # ------------------------------------------------------------------------------------ fusion
    def source(self, reasoner_hidden: torch.Tensor) -> torch.Tensor:
        """u = P_pre(h) − μ: what is rescaled and injected one position later (and carried in caches)."""
        source = self.projection(reasoner_hidden) if self.projection_mode == "linear" else reasoner_hidden
        if self.reasoner_center is not None:
            source = source - self.reasoner_center.to(source.dtype)
        return source

    def channel_gate(self, width: int) -> torch.Tensor | None:
        """c = tanh(α) broadcast to ``width`` channels, or None without a gate."""
        if self.gate_logit is None:
            return None
        return torch.tanh(self.gate_logit).expand(width)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        sources: torch.Tensor,
        gate: torch.Tensor,
        embedding_weight: torch.Tensor,
        prev_source: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x̃ for a chunk: ``inputs_embeds`` [B, L, d_G] = E_G[x], ``sources`` [B, L, d] the chunk's own u,
        ``gate`` [B, L] the positional gate, ``prev_source`` [B, d] the u just before the chunk (decode).
        ``embedding_weight`` is E_G (for m̄)."""
        dtype = inputs_embeds.dtype
        sources = sources.to(dtype)
        prev_source = None if prev_source is None else prev_source.to(dtype)
        m_bar = self.mean_norm(embedding_weight)
        channel_gate = self.channel_gate(sources.shape[-1])
        if self.projection_mode != "zero_linear":
            return latent_injection(
                inputs_embeds,
                sources,
                gate,
                m_bar,
                self.effective_lambda,
                self.norm_eps,
                prev_source,
                channel_gate,
            )
        zeros = inputs_embeds.new_zeros(*inputs_embeds.shape[:-1], sources.shape[-1])
        injected = latent_injection(
            zeros, sources, gate, m_bar, self.effective_lambda, self.norm_eps, prev_source, channel_gate
        )
        return inputs_embeds + self.projection(injected)

    def extra_repr(self) -> str:
        gate = (
            "none" if self.gate_logit is None else ("scalar" if self.gate_logit.numel() == 1 else "channel")
        )
        return (
            f"fusion_lambda={self.fusion_lambda}, norm_eps={self.norm_eps}, projection={self.projection_mode}, "
            f"gate={gate}, centred={self.reasoner_center is not None}"
        )
