"""Latent injection: fuse a reasoner's hidden states into a generator's input embeddings.

Contract (docs/design.md §1), for every batch row b and position i::

    src[b, i] = h[b, i - 1]                  for i >= 1
    src[b, 0] = prev_hidden[b]               (zero, and gate forced to 0, when prev_hidden is None)
    r[b, i]   = src[b, i] * m̄ / max(‖src[b, i]‖₂, eps)      norm in fp32 (fp64 for fp64 inputs)
    out[b, i] = e[b, i] + λ * gate[b, i] * pad(c ⊙ r[b, i])   pad: zero-fill channels d_R..d_G-1

``eps = norm_eps`` (default 0). Where ``max(‖src‖, eps) = 0`` (an exactly-zero state) the scale is
0: ``r = 0`` with zero gradient, never NaN, while every non-zero state is rescaled exactly.
``c`` is the optional learned per-channel gate (``channel_gate`` [d_R], e.g. ``tanh(α)``; all ones
when omitted); it is differentiable: ``d c = Σ_{b,i} λ·gate·m̄/max(‖src‖, eps) · src ⊙ d out[:d_R]``.

``gate[b, i]`` is the caller's injection weight for position i; the model passes
``a[b, i-1] * 1[pos[b, i] != 0]`` so the first real token after left padding and the first token of
every packed sequence receive nothing. In backward the norm is a constant::

    d e = d out,     d src[b, i] = λ * gate[b, i] * m̄ / max(‖src[b, i]‖, eps) * c ⊙ d out[b, i, :d_R]

Rows with ``gate == 0`` never divide by their norm. ``gate``, ``mean_norm``, λ and eps receive no
gradient.

The fused-gather variant :func:`embedding_latent_injection` takes token ids and the embedding table
instead of ``inputs_embeds`` (``e[b, i] = E[ids[b, i]]``); its table gradient is the scatter-add of
``d out`` rows, as ``nn.Embedding`` gives (no ``padding_idx`` masking, no ``max_norm``).

Backends: :func:`latent_injection` / :func:`embedding_latent_injection` dispatch through
:func:`flythinker.kernels.dispatch.use_triton` to the Triton kernels in ``triton_injection.py`` (autograd layer: ``triton_injection_autograd.py``)
(imported lazily) or to the references here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dispatch import use_triton
from .numerics import injection_scale, stat_dtype

__all__ = [
    "latent_injection",
    "latent_injection_reference",
    "embedding_latent_injection",
    "embedding_latent_injection_reference",
    "mean_embedding_norm",
]


@torch.no_grad()
def mean_embedding_norm(embedding_weight: torch.Tensor) -> torch.Tensor:
    """m̄ = mean over all V rows of ‖E[v]‖₂, computed in fp32 (fp64 for fp64 tables), no gradient."""
    w = embedding_weight.detach()
    return torch.linalg.vector_norm(w.to(stat_dtype(w.dtype)), dim=-1).mean()


def shifted_sources(reasoner_hidden: torch.Tensor, prev_hidden: torch.Tensor | None) -> torch.Tensor:
    """[B, T, d_R] states one position behind: row i holds h[i-1], row 0 holds ``prev_hidden`` (or 0)."""
    batch, _, width = reasoner_hidden.shape
    if prev_hidden is None:
        prev_hidden = reasoner_hidden.new_zeros(batch, width)
    return torch.cat([prev_hidden[:, None, :].to(reasoner_hidden.dtype), reasoner_hidden[:, :-1]], dim=1)


def latent_injection_reference(
    inputs_embeds: torch.Tensor,
    reasoner_hidden: torch.Tensor,
    gate: torch.Tensor,
    mean_norm: torch.Tensor | float,
    fusion_lambda: float,
    norm_eps: float = 0.0,
    prev_hidden: torch.Tensor | None = None,
    channel_gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pure-PyTorch latent injection (see the module docstring for the equations).

    Args:
        inputs_embeds: [B, T, d_G] generator input embeddings ``E_G[x]``.
        reasoner_hidden: [B, T, d_R] reasoner last hidden states for the same positions, d_R <= d_G.
        gate: [B, T] injection weight of each position (bool or float; typically 0/1).
        mean_norm: m̄, a scalar (tensor or float); never differentiated.
        fusion_lambda: λ.
        norm_eps: lower bound on ‖h‖ (0 = exact equations).
        prev_hidden: [B, d_R] the reasoner state of the position just before this chunk (decode).
        channel_gate: [d_R] learned per-channel gate ``c`` (differentiable), or None (all ones).

    Returns:
        [B, T, d_G] fused embeddings in ``inputs_embeds.dtype``.
    """
    _check_shapes(inputs_embeds, reasoner_hidden, gate, prev_hidden, channel_gate)
    d_g, d_r = inputs_embeds.shape[-1], reasoner_hidden.shape[-1]
    acc = stat_dtype(inputs_embeds.dtype)
    gate = gate.to(acc)
    if prev_hidden is None:
        gate = torch.cat([torch.zeros_like(gate[:, :1]), gate[:, 1:]], dim=1)
    src = shifted_sources(reasoner_hidden, prev_hidden).to(acc)
    norm = torch.linalg.vector_norm(src.detach(), dim=-1)
    coef = fusion_lambda * torch.as_tensor(mean_norm, dtype=acc, device=src.device)
    scale = injection_scale(norm, gate, coef, norm_eps).detach()
    rescaled = src * scale[..., None]
    if channel_gate is not None:
        rescaled = rescaled * channel_gate.to(acc)
    injected = F.pad(rescaled, (0, d_g - d_r))
    return (inputs_embeds.to(acc) + injected).to(inputs_embeds.dtype)


def _check_shapes(inputs_embeds, reasoner_hidden, gate, prev_hidden, channel_gate=None) -> None:
    if inputs_embeds.dim() != 3 or reasoner_hidden.dim() != 3:
        raise ValueError(
            f"latent_injection expects [B, T, d] tensors, got inputs_embeds {tuple(inputs_embeds.shape)} "
            f"and reasoner_hidden {tuple(reasoner_hidden.shape)}"
        )
    if inputs_embeds.shape[:2] != reasoner_hidden.shape[:2] or tuple(gate.shape) != tuple(
        inputs_embeds.shape[:2]
    ):
        raise ValueError(
            f"batch/sequence shapes differ: inputs_embeds {tuple(inputs_embeds.shape[:2])}, reasoner_hidden "
            f"{tuple(reasoner_hidden.shape[:2])}, gate {tuple(gate.shape)}"
        )
    if reasoner_hidden.shape[-1] > inputs_embeds.shape[-1]:
        raise ValueError(
            f"reasoner width {reasoner_hidden.shape[-1]} exceeds generator width {inputs_embeds.shape[-1]}; "
            "use projection='linear'"
        )
    if prev_hidden is not None and tuple(prev_hidden.shape) != (
        reasoner_hidden.shape[0],
        reasoner_hidden.shape[-1],
    ):
        raise ValueError(
            f"prev_hidden must be [B, d_R] = {(reasoner_hidden.shape[0], reasoner_hidden.shape[-1])}, "
            f"got {tuple(prev_hidden.shape)}"
        )
    if channel_gate is not None and tuple(channel_gate.shape) != (reasoner_hidden.shape[-1],):
        raise ValueError(
            f"channel_gate must be [d_R] = ({reasoner_hidden.shape[-1]},), got {tuple(channel_gate.shape)}"
        )


def latent_injection(
    inputs_embeds: torch.Tensor,
    reasoner_hidden: torch.Tensor,
    gate: torch.Tensor,
    mean_norm: torch.Tensor | float,
    fusion_lambda: float,
    norm_eps: float = 0.0,
    prev_hidden: torch.Tensor | None = None,
    channel_gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dispatching entry point with the signature of :func:`latent_injection_reference`.

    Triton (``LatentInjectionFunction``) for CUDA tensors or when forced, the reference otherwise.
    """
    _check_shapes(inputs_embeds, reasoner_hidden, gate, prev_hidden, channel_gate)
    if use_triton(inputs_embeds, reasoner_hidden, prev_hidden, channel_gate):
        from .triton_injection_autograd import latent_injection_triton

        return latent_injection_triton(
            inputs_embeds,
            reasoner_hidden,
            gate,
            mean_norm,
            fusion_lambda,
            norm_eps,
            prev_hidden,
            channel_gate,
        )
    return latent_injection_reference(
        inputs_embeds, reasoner_hidden, gate, mean_norm, fusion_lambda, norm_eps, prev_hidden, channel_gate
    )


def embedding_latent_injection_reference(
    input_ids: torch.Tensor,
    embedding_weight: torch.Tensor,
    reasoner_hidden: torch.Tensor,
    gate: torch.Tensor,
    mean_norm: torch.Tensor | float,
    fusion_lambda: float,
    norm_eps: float = 0.0,
    prev_hidden: torch.Tensor | None = None,
    channel_gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference for the fused gather: ``latent_injection_reference(F.embedding(input_ids, E), ...)``.

    Args:
        input_ids: [B, T] integer token ids, each < V.
        embedding_weight: [V, d_G] the generator's input embedding table ``E_G``.
        (the rest as in :func:`latent_injection_reference`)
    """
    _check_ids(input_ids, embedding_weight, reasoner_hidden)
    embeds = F.embedding(input_ids, embedding_weight)
    return latent_injection_reference(
        embeds, reasoner_hidden, gate, mean_norm, fusion_lambda, norm_eps, prev_hidden, channel_gate
    )


def embedding_latent_injection(
    input_ids: torch.Tensor,
    embedding_weight: torch.Tensor,
    reasoner_hidden: torch.Tensor,
    gate: torch.Tensor,
    mean_norm: torch.Tensor | float,
    fusion_lambda: float,
    norm_eps: float = 0.0,
    prev_hidden: torch.Tensor | None = None,
    channel_gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dispatching latent injection with the embedding gather fused in (``EmbeddingLatentInjectionFunction``).

    Pass ``embedding_weight`` as obtained inside the embedding module's forward (or gathered) so that
    FSDP / ZeRO-3 hand over the full table, not a shard.
    """
    _check_ids(input_ids, embedding_weight, reasoner_hidden)
    ghost = torch.empty((*input_ids.shape, embedding_weight.shape[-1]), device="meta")  # shape only
    _check_shapes(ghost, reasoner_hidden, gate, prev_hidden, channel_gate)
    args = (
        input_ids,
        embedding_weight,
        reasoner_hidden,
        gate,
        mean_norm,
        fusion_lambda,
        norm_eps,
        prev_hidden,
    )
    if use_triton(embedding_weight, reasoner_hidden, prev_hidden, channel_gate):
        from .triton_injection_autograd import embedding_latent_injection_triton

        return embedding_latent_injection_triton(*args, channel_gate)
    return embedding_latent_injection_reference(*args, channel_gate)


def _check_ids(
    input_ids: torch.Tensor, embedding_weight: torch.Tensor, reasoner_hidden: torch.Tensor
) -> None:
    if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(
            f"input_ids must be an integer [B, T] tensor, got {input_ids.dtype} {tuple(input_ids.shape)}"
        )
    if embedding_weight.dim() != 2:
        raise ValueError(f"embedding_weight must be [V, d_G], got {tuple(embedding_weight.shape)}")
    if tuple(input_ids.shape) != tuple(reasoner_hidden.shape[:2]):
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and reasoner_hidden {tuple(reasoner_hidden.shape[:2])} differ in [B, T]"
        )
