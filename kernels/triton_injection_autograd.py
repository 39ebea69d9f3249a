"""Triton latent injection, the autograd layer: ``torch.autograd.Function``s over the host launchers of
:mod:`flythinker.kernels.triton_injection`, and the functional entries the dispatcher calls.

Imports triton (through the launchers' module), so it is only ever imported lazily, from
:mod:`flythinker.kernels.injection` on the first Triton call.
"""

from __future__ import annotations

import torch

from .triton_injection import latent_injection_backward, latent_injection_forward

__all__ = [
    "LatentInjectionFunction",
    "EmbeddingLatentInjectionFunction",
    "latent_injection_triton",
    "embedding_latent_injection_triton",
]


class LatentInjectionFunction(torch.autograd.Function):
    """Autograd wrapper: ``apply(inputs_embeds, reasoner_hidden, gate, mean_norm, λ, eps, prev_hidden)``.

    Gradients: ``inputs_embeds`` <- ``dout`` (passed through unchanged), ``reasoner_hidden`` and
    ``prev_hidden`` <- the shifted, scaled ``dout[..., :d_R]``; none for ``gate``, ``mean_norm``, λ, eps.
    """

    @staticmethod
    def forward(
        ctx,
        inputs_embeds,
        reasoner_hidden,
        gate,
        mean_norm,
        fusion_lambda,
        norm_eps,
        prev_hidden,
        channel_gate,
    ):
        out, scale = latent_injection_forward(
            inputs_embeds, None, None, reasoner_hidden, gate, mean_norm, fusion_lambda, norm_eps, prev_hidden,
            channel_gate,
        )  # fmt: skip
        _save_sources(ctx, scale, None, reasoner_hidden, prev_hidden, channel_gate)
        ctx.embeds_dtype = inputs_embeds.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        need_hid, need_prev, need_cgate = (
            ctx.needs_input_grad[1],
            ctx.needs_input_grad[6],
            ctx.needs_input_grad[7],
        )
        d_hidden, d_prev, _, d_cgate = _backward(ctx, grad_out, need_hid or need_prev or need_cgate, False)
        d_emb = grad_out.to(ctx.embeds_dtype) if ctx.needs_input_grad[0] else None
        return (
            d_emb,
            d_hidden if need_hid else None,
            None,
            None,
            None,
            None,
            d_prev if need_prev else None,
            d_cgate if need_cgate else None,
        )


def _save_sources(ctx, scale, input_ids, reasoner_hidden, prev_hidden, channel_gate) -> None:
    """Save what backward reads: the per-row scale, the ids (gather), and the sources when gated."""
    gated = channel_gate is not None
    ctx.save_for_backward(
        scale,
        input_ids,
        reasoner_hidden if gated else None,
        prev_hidden if gated else None,
        channel_gate,
    )
    ctx.hidden_dtype = reasoner_hidden.dtype
    ctx.d_r = reasoner_hidden.shape[-1]
    ctx.prev_dtype = prev_hidden.dtype if prev_hidden is not None else None
    ctx.cgate_dtype = channel_gate.dtype if gated else None


def _backward(ctx, grad_out, needed: bool, need_table: bool):
    """``(d_hidden, d_prev, d_table, d_channel_gate)`` from the saved tensors (all None when not needed)."""
    scale, input_ids, reasoner_hidden, prev_hidden, channel_gate = ctx.saved_tensors
    if not (needed or need_table):
        return None, None, None, None
    d_hidden, d_prev, d_table, d_cgate = latent_injection_backward(
        grad_out, scale, ctx.hidden_dtype, ctx.d_r, ctx.prev_dtype,
        input_ids=input_ids if need_table else None, num_embeddings=getattr(ctx, "num_embeddings", None),
        reasoner_hidden=reasoner_hidden, prev_hidden=prev_hidden, channel_gate=channel_gate,
    )  # fmt: skip
    if d_cgate is not None:
        d_cgate = d_cgate.to(ctx.cgate_dtype)
    return d_hidden, d_prev, d_table, d_cgate


class EmbeddingLatentInjectionFunction(torch.autograd.Function):
    """Fused gather variant: ``apply(input_ids, embedding_weight, reasoner_hidden, gate, m̄, λ, eps, prev)``.

    The table gradient is a scatter-add of ``dout`` rows (``tl.atomic_add`` into an fp32 [V, d_G] buffer,
    cast to the table dtype at the end).
    """

    @staticmethod
    def forward(
        ctx,
        input_ids,
        embedding_weight,
        reasoner_hidden,
        gate,
        mean_norm,
        fusion_lambda,
        norm_eps,
        prev_hidden,
        channel_gate,
    ):
        out, scale = latent_injection_forward(
            None, input_ids, embedding_weight, reasoner_hidden, gate, mean_norm, fusion_lambda, norm_eps,
            prev_hidden, channel_gate,
        )  # fmt: skip
        _save_sources(ctx, scale, input_ids, reasoner_hidden, prev_hidden, channel_gate)
        ctx.num_embeddings = embedding_weight.shape[0]
        ctx.table_dtype = embedding_weight.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        need_table, need_hid = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        need_prev, need_cgate = ctx.needs_input_grad[7], ctx.needs_input_grad[8]
        d_hidden, d_prev, d_table, d_cgate = _backward(
            ctx, grad_out, need_hid or need_prev or need_cgate, need_table
        )
        if d_table is not None:
            d_table = d_table.to(ctx.table_dtype)
        return (
            None,
            d_table,
            d_hidden if need_hid else None,
            None,
            None,
            None,
            None,
            d_prev if need_prev else None,
            d_cgate if need_cgate else None,
        )


def latent_injection_triton(
    inputs_embeds,
    reasoner_hidden,
    gate,
    mean_norm,
    fusion_lambda,
    norm_eps=0.0,
    prev_hidden=None,
    channel_gate=None,
) -> torch.Tensor:
    """Triton latent injection (no shape checks; call :func:`flythinker.kernels.injection.latent_injection`)."""
    return LatentInjectionFunction.apply(
        inputs_embeds, reasoner_hidden, gate, mean_norm, fusion_lambda, norm_eps, prev_hidden, channel_gate
    )


def embedding_latent_injection_triton(
    input_ids,
    embedding_weight,
    reasoner_hidden,
    gate,
    mean_norm,
    fusion_lambda,
    norm_eps=0.0,
    prev_hidden=None,
    channel_gate=None,
) -> torch.Tensor:
    """Triton latent injection with the embedding gather fused in (no shape checks)."""
    return EmbeddingLatentInjectionFunction.apply(
        input_ids, embedding_weight, reasoner_hidden, gate, mean_norm, fusion_lambda, norm_eps, prev_hidden,
        channel_gate,
    )  # fmt: skip
