"""The generator's logits and the next-token loss of :class:`FlyThinkerForCausalLM` (docs/design.md §1).

A mixin of the model (it reads ``self.config``, ``self.generator`` and transformers' ``self.loss_function``):
``forward`` hands the fused generator's final hidden states to :meth:`FlyThinkerLossMixin._loss_and_logits`,
which uses the chunked fused linear-cross-entropy when ``config.use_fused_loss`` holds and the generator's
logits are plain ``lm_head(hidden)``, and otherwise transformers' loss on :meth:`generator_logits`.
"""

from __future__ import annotations

import torch
from torch import nn

from flythinker.kernels.linear_cross_entropy import fused_linear_cross_entropy

# Generator configs whose logits are not plain ``lm_head(hidden)``: the fused loss would be wrong.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class FlyThinkerLossMixin:
    """Logits and loss on the generator's LM head; mixed into :class:`FlyThinkerForCausalLM`."""

    def _uses_fused_loss(self) -> bool:
        if not self.config.use_fused_loss:
            return False
        generator_config = self.config.get_text_config()
        return not any(getattr(generator_config, name, None) for name in _LOGIT_TRANSFORMS)

    def _loss_and_logits(
        self, hidden_states, labels, logits_to_keep, return_logits, num_items_in_batch, shift_labels=None
    ):
        """Next-token CE on label positions (fused, chunked when configured) and the requested logits.
        ``shift_labels`` ([B, L], target of position i at i) replaces the shift of ``labels`` when given."""
        lm_head = self.generator.get_output_embeddings()
        loss = None
        if shift_labels is not None and labels is None:
            labels = shift_labels  # only a marker that a loss is wanted: shift_labels are the targets
        if labels is not None and self._uses_fused_loss():
            shifted = (
                shift_labels
                if shift_labels is not None
                else nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]
            )
            shifted = shifted.to(hidden_states.device)
            # One function: its own dispatch picks the Triton or the PyTorch per-chunk step.
            loss = fused_linear_cross_entropy(
                hidden_states.flatten(0, 1),
                lm_head.weight,
                shifted.flatten(),
                getattr(lm_head, "bias", None),
                num_items_in_batch=num_items_in_batch,
            )
            if not return_logits:
                return loss, None
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.generator_logits(hidden_states[:, keep, :])
        if labels is not None and loss is None:
            loss = self.loss_function(
                logits=logits,
                labels=labels,
                vocab_size=self.config.get_text_config().vocab_size,
                num_items_in_batch=num_items_in_batch,
                shift_labels=shift_labels,
            )
        return loss, logits

    def generator_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The generator's logits for final hidden states, including any softcapping/scaling it applies."""
        return self.scale_generator_logits(self.generator.get_output_embeddings()(hidden_states))

    def scale_generator_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The generator's own scaling and softcapping of its LM head's raw outputs (elementwise, so
        it may follow a head computed in row slices)."""
        generator_config = self.config.get_text_config()
        if scale := getattr(generator_config, "logit_scale", None):
            logits = logits * scale
        if cap := getattr(generator_config, "final_logit_softcapping", None):
            logits = torch.tanh(logits / cap) * cap
        return logits
