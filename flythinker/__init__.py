"""flythinker: think-while-generating as a 🤗 transformers architecture.

A reasoner LM computes latent token-level reasoning in one parallel pass; its state at position
i−1 is fused into the generator's input embedding at position i (DESIGN §1). Importing this
package needs only torch and transformers: triton, flash-attn, peft and trl stay optional.
"""

from flythinker.decoding import generate, stream
from flythinker.modeling import (
    FlyThinkerCache,
    FlyThinkerConfig,
    FlyThinkerForCausalLM,
    check_vocab_compatibility,
    convert_reference_checkpoint,
)

__version__ = "0.1.0"

__all__ = [
    "FlyThinkerCache",
    "FlyThinkerConfig",
    "FlyThinkerForCausalLM",
    "check_vocab_compatibility",
    "convert_reference_checkpoint",
    "generate",
    "stream",
]
