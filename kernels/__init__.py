"""flythinker.kernels: the fused ops of think-while-generating.

Every op comes in layers (see docs/design.md §4): a pure-PyTorch reference, a Triton kernel wrapped in a
``torch.autograd.Function``, and a dispatching functional that picks Triton for CUDA tensors (or when
``FLYTHINKER_FORCE_TRITON=1`` under ``TRITON_INTERPRET=1``) and the reference elsewhere
(``FLYTHINKER_DISABLE_TRITON=1`` forces the reference). Nothing here imports triton at module import
time, and nothing imports from the rest of flythinker.

Ops:
    latent_injection / latent_injection_reference                 e + λ·g·m̄·pad(h_{i-1})/‖h_{i-1}‖
    embedding_latent_injection / embedding_latent_injection_reference   the same with E[ids] gathered in
    fused_linear_cross_entropy / linear_cross_entropy_reference   lm_head + CE, chunked over tokens
    chunked_linear_cross_entropy                                  chunked pure-PyTorch loss (any device)
    mean_embedding_norm                                           m̄ = mean_v ‖E[v]‖₂ (no grad)

Not an op: ``flythinker.kernels.host_memory.keep_freed_host_memory`` keeps freed CPU memory in glibc's
heap (process set-up for CPU training and the decoding worker; imported only where it is used).
"""

from .dispatch import triton_available, use_triton
from .injection import (
    embedding_latent_injection,
    embedding_latent_injection_reference,
    latent_injection,
    latent_injection_reference,
    mean_embedding_norm,
)
from .linear_cross_entropy import (
    chunked_linear_cross_entropy,
    default_chunk_size,
    fused_linear_cross_entropy,
    linear_cross_entropy_reference,
)

__all__ = [
    "latent_injection",
    "latent_injection_reference",
    "embedding_latent_injection",
    "embedding_latent_injection_reference",
    "mean_embedding_norm",
    "fused_linear_cross_entropy",
    "linear_cross_entropy_reference",
    "chunked_linear_cross_entropy",
    "default_chunk_size",
    "triton_available",
    "use_triton",
]
