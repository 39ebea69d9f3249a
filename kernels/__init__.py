"""flythinker.kernels: the fused ops of think-while-generating.

Every op comes in three layers (see DESIGN §4): a pure-PyTorch reference, a Triton kernel wrapped
in a ``torch.autograd.Function``, and a dispatching functional that picks Triton for CUDA tensors
(or when ``FLYTHINKER_FORCE_TRITON=1`` under ``TRITON_INTERPRET=1``) and the reference elsewhere.
Nothing here imports triton at module import time, and nothing imports from the rest of flythinker.
"""

from .injection import latent_injection, latent_injection_reference, mean_embedding_norm

__all__ = ["latent_injection", "latent_injection_reference", "mean_embedding_norm"]
