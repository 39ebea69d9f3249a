"""Model level: a tiny random FlyThinker gives the same loss and parameter gradients with the Triton
kernels forced on (interpreter on CPU) as with the PyTorch references, and as with transformers' own loss.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernels._compare import assert_close
from tests.tiny_models import left_padded_batch, tiny_flythinker

TOL = {torch.float64: (1e-10, 1e-8), torch.float32: (2e-5, 2e-4)}


def _batch(device):
    input_ids, attention_mask, _ = left_padded_batch([9, 5, 7], seed=3)
    labels = input_ids.clone()
    labels[attention_mask == 0] = -100
    labels[:, :3] = -100  # a "prompt" part without loss
    return input_ids.to(device), attention_mask.to(device), labels.to(device)


def _loss_and_grads(model, batch, num_items=None):
    model.zero_grad(set_to_none=True)
    input_ids, attention_mask, labels = batch
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, labels=labels, num_items_in_batch=num_items
    )
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads


def _set_backend(monkeypatch, backend):
    if backend == "triton":
        monkeypatch.delenv("FLYTHINKER_DISABLE_TRITON", raising=False)
        monkeypatch.setenv("FLYTHINKER_FORCE_TRITON", "1")
    else:
        monkeypatch.delenv("FLYTHINKER_FORCE_TRITON", raising=False)
        monkeypatch.setenv("FLYTHINKER_DISABLE_TRITON", "1")


@pytest.mark.parametrize(
    "dtype, config, num_items",
    [
        (torch.float64, {}, None),
        (torch.float64, {}, 13),
        (torch.float64, {"projection": "linear"}, None),
        (torch.float64, {"use_fused_loss": False}, None),
        (torch.float32, {}, 13),
        (torch.float32, {"projection": "linear"}, None),
    ],
    ids=[
        "f64-zero_pad",
        "f64-zero_pad-num_items",
        "f64-linear",
        "f64-hf_loss",
        "f32-zero_pad-num_items",
        "f32-linear",
    ],
)
def test_kernels_on_off_agree(dtype, config, num_items, device, monkeypatch, poison):
    pytest.importorskip("triton")
    model = tiny_flythinker(dtype=dtype, **config).to(device).train()
    batch = _batch(device)

    _set_backend(monkeypatch, "reference")
    ref_loss, ref_grads = _loss_and_grads(model, batch, num_items)
    _set_backend(monkeypatch, "triton")
    loss, grads = _loss_and_grads(model, batch, num_items)

    atol, rtol = TOL[dtype]
    assert torch.isfinite(ref_loss)
    assert_close(loss, ref_loss, atol, rtol, "loss")
    assert set(grads) == set(ref_grads) and len(grads) == len(list(model.parameters()))
    for name, g in grads.items():
        scale = ref_grads[name].abs().max().item()
        assert_close(g, ref_grads[name], atol * max(scale, 1.0), rtol, name)


def test_fused_loss_equals_transformers_loss(device, monkeypatch):
    """The fused path (forced Triton) vs the model with use_fused_loss=False (transformers' loss_function)."""
    pytest.importorskip("triton")
    batch = _batch(device)
    _set_backend(monkeypatch, "triton")
    fused = tiny_flythinker(dtype=torch.float64).to(device).train()
    plain = tiny_flythinker(dtype=torch.float64, use_fused_loss=False).to(device).train()
    plain.load_state_dict(fused.state_dict())
    loss_f, grads_f = _loss_and_grads(fused, batch, 11)
    loss_p, grads_p = _loss_and_grads(plain, batch, 11)
    # transformers' ForCausalLMLoss upcasts logits to float32 only: float32-level agreement
    assert_close(loss_f, loss_p, 1e-6, 1e-6, "loss")
    for name, g in grads_f.items():
        assert_close(g, grads_p[name], 1e-6 * max(grads_p[name].abs().max().item(), 1.0), 1e-5, name)
