"""flythinker.modeling: FlyThinkerConfig, FlyThinkerForCausalLM, its cache, loading and conversion."""

from transformers import AutoConfig, AutoModelForCausalLM

from .cache_flythinker import FlyThinkerCache
from .configuration_flythinker import FlyThinkerConfig
from .conversion import convert_reference_checkpoint
from .loading import check_vocab_compatibility
from .modeling_flythinker import FlyThinkerForCausalLM, FlyThinkerPreTrainedModel

AutoConfig.register(FlyThinkerConfig.model_type, FlyThinkerConfig, exist_ok=True)
AutoModelForCausalLM.register(FlyThinkerConfig, FlyThinkerForCausalLM, exist_ok=True)

__all__ = [
    "FlyThinkerCache",
    "FlyThinkerConfig",
    "FlyThinkerForCausalLM",
    "FlyThinkerPreTrainedModel",
    "check_vocab_compatibility",
    "convert_reference_checkpoint",
]
