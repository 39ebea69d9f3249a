"""Latent injection: Triton kernel (interpreter on CPU) vs the float64 reference, forward and gradients.

Equations under test (kernels/injection.py):
    out[b, i] = e[b, i] + λ·g[b, i]·m̄·pad(src[b, i]) / max(‖src[b, i]‖, eps),  src[b, i] = h[b, i-1] (prev at i=0)
    d e = d out,  d src = λ·g·m̄/max(‖src‖, eps) · d out[..., :d_R]   (‖src‖ held constant)
"""

from __future__ import annotations

import math

import pytest
import torch

from flythinker.kernels.injection import (
    embedding_latent_injection,
    embedding_latent_injection_reference,
    latent_injection,
    latent_injection_reference,
    mean_embedding_norm,
)
from tests.kernels._compare import TOL, assert_close, mismatch_report

LAMBDA = 0.37  # not exactly representable: catches λ rounded to fp32 in an fp64 path
SHAPES = [  # (B, T, d_G, d_R)
    (2, 1, 64, 64),
    (2, 7, 123, 96),
    (3, 33, 96, 64),
]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def _inputs(batch, seq, d_g, d_r, dtype, device, with_prev, seed=0):
    gen = torch.Generator().manual_seed(seed)
    e = torch.randn(batch, seq, d_g, generator=gen).to(device, dtype)
    h = torch.randn(batch, seq, d_r, generator=gen).to(device, dtype)
    prev = torch.randn(batch, d_r, generator=gen).to(device, dtype) if with_prev else None
    gate = (torch.rand(batch, seq, generator=gen) > 0.25).to(device, torch.float32)
    gate[-1] = 0.0  # a fully masked batch row
    if seq > 1:
        h[-1, 0] = 0.0  # zero state feeding a masked position: must not divide by zero with eps = 0
    dout = torch.randn(batch, seq, d_g, generator=gen).to(device, dtype)
    return e, h, prev, gate, dout


def _grads(out, inputs, dout):
    wanted = [x for x in inputs if x is not None]
    return torch.autograd.grad(out, wanted, dout)


def _leaf(x, dtype=None):
    if x is None:
        return None
    y = x.detach().clone()
    if dtype is not None:
        y = y.to(dtype)
    return y.requires_grad_()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("with_prev", [False, True], ids=["no_prev", "prev"])
def test_forward_backward_vs_float64_reference(shape, dtype, with_prev, device, force_triton, poison):
    batch, seq, d_g, d_r = shape
    e, h, prev, gate, dout = _inputs(batch, seq, d_g, d_r, dtype, device, with_prev)
    mean_norm = torch.tensor(2.75, device=device)

    ins = [_leaf(e), _leaf(h), _leaf(prev)]
    out = latent_injection(ins[0], ins[1], gate, mean_norm, LAMBDA, 0.0, ins[2])
    grads = _grads(out, ins, dout)

    ref_ins = [_leaf(x, torch.float64) for x in (e, h, prev)]
    ref = latent_injection_reference(
        ref_ins[0], ref_ins[1], gate, mean_norm.double(), LAMBDA, 0.0, ref_ins[2]
    )
    ref_grads = _grads(ref, ref_ins, dout.double())

    atol, rtol = TOL[dtype]
    assert out.dtype == dtype and out.shape == (batch, seq, d_g)
    assert_close(out, ref, atol, rtol, "out")
    for name, g, rg, x in zip(
        ["d_embeds", "d_hidden", "d_prev"], grads, ref_grads, [x for x in ins if x is not None]
    ):
        assert g.dtype == x.dtype, name
        assert_close(g, rg, atol, rtol, name)
    # the pass-through gradient of the embeddings is exact
    assert torch.equal(grads[0], dout)
    # h[:, -1] feeds no position of this chunk
    assert torch.count_nonzero(grads[1][:, -1]) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_matches_same_dtype_reference(dtype, device, force_triton, poison):
    """Against the reference run in the same dtype: equal up to one rounding of the output."""
    e, h, prev, gate, dout = _inputs(2, 7, 123, 96, dtype, device, True, seed=3)
    out = latent_injection(e, h, gate, 1.5, 0.5, 0.0, prev)
    ref = latent_injection_reference(e, h, gate, 1.5, 0.5, 0.0, prev)
    ulp = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-22
    assert_close(out, ref, atol=ulp, rtol=ulp, name="out")


def test_norm_eps_guards_zero_states(device, force_triton, poison):
    """A zero reasoner state at a gated-on position: eps > 0 gives a finite result equal to the reference."""
    e, h, prev, gate, dout = _inputs(2, 7, 64, 48, torch.float64, device, True, seed=5)
    gate = torch.ones_like(gate)
    h[0, 2] = 0.0
    prev[1] = 0.0
    ins = [_leaf(e), _leaf(h), _leaf(prev)]
    out = latent_injection(*ins[:2], gate, 3.0, LAMBDA, 1e-6, ins[2])
    ref_ins = [_leaf(x) for x in (e, h, prev)]
    ref = latent_injection_reference(*ref_ins[:2], gate, 3.0, LAMBDA, 1e-6, ref_ins[2])
    assert torch.isfinite(out).all()
    assert_close(out, ref, 1e-12, 1e-12, "out")
    for g, rg in zip(_grads(out, ins, dout), _grads(ref, ref_ins, dout)):
        assert_close(g, rg, 1e-12, 1e-12, "grad")


def test_fractional_gate_and_decode_step(device, force_triton, poison):
    """Decode shape [B, 1, d] with a carried state and non-binary gate weights."""
    e, h, prev, gate, dout = _inputs(4, 1, 96, 64, torch.float32, device, True, seed=7)
    gate = torch.tensor([[0.0], [0.25], [1.0], [2.0]], device=device)
    ins = [_leaf(e), _leaf(h), _leaf(prev)]
    out = latent_injection(*ins[:2], gate, 2.0, 0.5, 0.0, ins[2])
    # closed form for T = 1: out = e + λ·g·m̄·pad(prev)/‖prev‖
    p = prev.double()
    expect = e.double().clone()
    expect[:, 0, :64] += 0.5 * gate.double() * 2.0 * p / p.norm(dim=-1, keepdim=True)
    assert_close(out, expect, 2e-6, 2e-6, "out")
    d_e, d_h, d_p = _grads(out, ins, dout)
    assert torch.count_nonzero(d_h) == 0  # the single new state feeds the next step, not this one
    expect_dp = (0.5 * gate.double() * 2.0 / p.norm(dim=-1, keepdim=True)) * dout.double()[:, 0, :64]
    assert_close(d_p, expect_dp, 2e-6, 2e-6, "d_prev")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("with_prev", [False, True], ids=["no_prev", "prev"])
def test_fused_embedding_gather(dtype, with_prev, device, force_triton, poison):
    """ids + table in: same output as gather-then-inject; table gradient = scatter-add of d out rows."""
    batch, seq, d_g, d_r, vocab = 2, 33, 123, 96, 19  # few ids: many repeats hit the atomic adds
    e, h, prev, gate, dout = _inputs(batch, seq, d_g, d_r, dtype, device, with_prev, seed=11)
    gen = torch.Generator().manual_seed(12)
    table = torch.randn(vocab, d_g, generator=gen).to(device, dtype)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
    m = mean_embedding_norm(table)

    ins = [_leaf(table), _leaf(h), _leaf(prev)]
    out = embedding_latent_injection(ids, ins[0], ins[1], gate, m, LAMBDA, 0.0, ins[2])
    grads = _grads(out, ins, dout)
    ref_ins = [_leaf(x, torch.float64) for x in (table, h, prev)]
    ref = embedding_latent_injection_reference(
        ids, ref_ins[0], ref_ins[1], gate, m.double(), LAMBDA, 0.0, ref_ins[2]
    )
    ref_grads = _grads(ref, ref_ins, dout.double())

    atol, rtol = TOL[dtype]
    assert_close(out, ref, atol, rtol, "out")
    # the table gradient sums up to seq*batch rows: allow for fp32 accumulation then one final rounding
    table_tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 6e-2}[dtype]
    for name, g, rg in zip(["d_table", "d_hidden", "d_prev"], grads, ref_grads):
        tol = table_tol if name == "d_table" else atol
        assert_close(g, rg, tol, rtol, name)
    assert torch.count_nonzero(grads[0][~torch.isin(torch.arange(vocab, device=device), ids)]) == 0


def test_empty_sequence(device, force_triton):
    e = torch.randn(2, 0, 8, device=device, requires_grad=True)
    h = torch.randn(2, 0, 8, device=device, requires_grad=True)
    out = latent_injection(e, h, torch.ones(2, 0, device=device), 1.0, 0.5)
    assert out.shape == (2, 0, 8)


def test_shape_errors():
    e, h = torch.randn(2, 3, 8), torch.randn(2, 3, 16)
    with pytest.raises(ValueError, match="exceeds generator width"):
        latent_injection(e, h, torch.ones(2, 3), 1.0, 0.5)
    with pytest.raises(ValueError, match="prev_hidden must be"):
        latent_injection(e, torch.randn(2, 3, 4), torch.ones(2, 3), 1.0, 0.5, 0.0, torch.randn(3, 4))
    with pytest.raises(ValueError, match="integer"):
        embedding_latent_injection(
            torch.randn(2, 3), torch.randn(5, 8), torch.randn(2, 3, 4), torch.ones(2, 3), 1.0, 0.5
        )


# ---------------------------------------------------------------- references: finite differences


def _frozen_norm_injection(e, h, prev, gate, mean_norm, lam, inv_norm):
    """Independent loop form of the contract, with 1/‖src‖ passed in as constants (what backward assumes)."""
    batch, seq, d_g = e.shape
    d_r = h.shape[-1]
    rows = []
    for b in range(batch):
        for i in range(seq):
            src = h[b, i - 1] if i > 0 else prev[b]
            add = lam * gate[b, i] * mean_norm * inv_norm[b, i] * src
            rows.append(e[b, i] + torch.cat([add, e.new_zeros(d_g - d_r)]))
    return torch.stack(rows).reshape(batch, seq, d_g)


@pytest.mark.parametrize("with_prev", [False, True], ids=["no_prev", "prev"])
def test_reference_jacobian_matches_finite_differences(with_prev):
    """The reference's autograd Jacobian equals the finite-difference Jacobian of the norm-frozen map."""
    batch, seq, d_g, d_r = 2, 3, 5, 3
    gen = torch.Generator().manual_seed(0)
    e = torch.randn(batch, seq, d_g, generator=gen, dtype=torch.float64)
    h = torch.randn(batch, seq, d_r, generator=gen, dtype=torch.float64)
    prev = (
        torch.randn(batch, d_r, generator=gen, dtype=torch.float64)
        if with_prev
        else torch.zeros(batch, d_r, dtype=torch.float64)
    )
    gate = torch.tensor([[1.0, 0.0, 1.0], [0.5, 1.0, 1.0]], dtype=torch.float64)
    eff_gate = gate.clone()
    if not with_prev:
        eff_gate[:, 0] = 0.0
    src = torch.cat([prev[:, None], h[:, :-1]], dim=1)
    inv_norm = torch.where(eff_gate != 0, 1.0 / src.norm(dim=-1), torch.zeros_like(eff_gate))

    def frozen(e_, h_, p_):
        return _frozen_norm_injection(e_, h_, p_, eff_gate, 1.7, LAMBDA, inv_norm)

    def ref(e_, h_, p_):
        return latent_injection_reference(e_, h_, gate, 1.7, LAMBDA, 0.0, p_ if with_prev else None)

    args = (e.requires_grad_(), h.requires_grad_(), prev.requires_grad_())
    # 1) the frozen-norm map is what we think it is (its autograd agrees with finite differences)
    assert torch.autograd.gradcheck(frozen, args, eps=1e-6, atol=1e-8)
    # 2) the reference equals it in value and in Jacobian (autograd vs central differences of `frozen`)
    assert_close(ref(*args), frozen(*args), 1e-12, 1e-12, "value")
    jac_ref = torch.autograd.functional.jacobian(ref, args)
    for k, x in enumerate(args):
        flat = x.detach().reshape(-1)
        num = torch.zeros(batch * seq * d_g, flat.numel(), dtype=torch.float64)
        for j in range(flat.numel()):
            plus, minus = [a.detach().clone() for a in args], [a.detach().clone() for a in args]
            plus[k].view(-1)[j] += 1e-6
            minus[k].view(-1)[j] -= 1e-6
            num[:, j] = ((frozen(*plus) - frozen(*minus)) / 2e-6).reshape(-1)
        analytic = jac_ref[k].reshape(batch * seq * d_g, -1)  # zeros for prev when it is unused
        assert_close(analytic, num, 1e-7, 1e-6, f"jacobian wrt input {k}")


def test_reference_hidden_gradient_formula():
    """d h[b, i-1] = λ·g[b, i]·m̄/‖h[b, i-1]‖ · d out[b, i, :d_R], written out directly."""
    gen = torch.Generator().manual_seed(1)
    e = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64)
    h = torch.randn(2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    gate = torch.ones(2, 5, dtype=torch.float64)
    dout = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64)
    out = latent_injection_reference(e, h, gate, 2.0, LAMBDA, 0.0, None)
    (dh,) = torch.autograd.grad(out, h, dout)
    expect = torch.zeros_like(h)
    expect[:, :-1] = LAMBDA * 2.0 / h[:, :-1].detach().norm(dim=-1, keepdim=True) * dout[:, 1:, :4]
    assert_close(dh, expect, 1e-13, 1e-13, "d_hidden")


def test_mismatch_report_flags_nan_inf_and_values():
    a = torch.tensor([1.0, math.nan, math.inf, 2.0, 5.0])
    e = torch.tensor([1.0, 0.0, 1.0, 2.0, 5.1])
    report = mismatch_report(a, e, 1e-3, 1e-3)
    assert (
        "3/5 elements mismatch" in report and "1 NaN" in report and "1 inf" in report and "1 values" in report
    )
    assert mismatch_report(e, e.clone(), 0.0, 0.0) == ""
    assert mismatch_report(torch.tensor([math.nan]), torch.tensor([math.nan]), 0, 0) == ""


# ---------------------------------------------------------------- GPU only: compiled kernels, large shapes


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(4, 2048, 3584, 3584), (2, 4096, 4096, 896)], ids=["3584", "pad896"])
def test_gpu_large_shapes(shape, dtype, force_triton, poison):
    batch, seq, d_g, d_r = shape
    e, h, prev, gate, dout = _inputs(batch, seq, d_g, d_r, dtype, "cuda", True, seed=21)
    ins = [_leaf(e), _leaf(h), _leaf(prev)]
    out = latent_injection(ins[0], ins[1], gate, 1.9, LAMBDA, 0.0, ins[2])
    grads = _grads(out, ins, dout)
    ref_ins = [_leaf(x, torch.float64) for x in (e, h, prev)]
    ref = latent_injection_reference(ref_ins[0], ref_ins[1], gate, 1.9, LAMBDA, 0.0, ref_ins[2])
    ref_grads = _grads(ref, ref_ins, dout.double())
    atol, rtol = TOL[dtype]
    assert_close(out, ref, atol, rtol, "out")
    for name, g, rg in zip(["d_embeds", "d_hidden", "d_prev"], grads, ref_grads):
        assert_close(g, rg, atol, rtol, name)


@pytest.mark.parametrize("gather", [False, True], ids=["embeds", "gather"])
@pytest.mark.parametrize("with_prev", [False, True], ids=["no_prev", "prev"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_channel_gate_and_its_gradient_vs_float64_reference(
    gather, with_prev, dtype, device, force_triton, poison
):
    """out = e + λ·g·m̄·pad(c ⊙ src)/‖src‖ with a learned c: d c is summed over rows by the kernel."""
    batch, seq, d_g, d_r = 3, 9, 96, 64
    e, h, prev, gate, dout = _inputs(batch, seq, d_g, d_r, dtype, device, with_prev, seed=11)
    h[0, 4] = 0.0  # a zero state at an open position: scale 0, no NaN, no gradient
    gen = torch.Generator().manual_seed(12)
    c = torch.tanh(torch.randn(d_r, generator=gen)).to(device, dtype)
    table = torch.randn(40, d_g, generator=gen).to(device, dtype)
    ids = torch.randint(0, 40, (batch, seq), generator=gen).to(device)
    mean_norm = torch.tensor(1.9, device=device)

    def run(fn_plain, fn_gather, to=None):
        first = [_leaf(table, to)] if gather else [_leaf(e, to)]
        hid, prv, cg = _leaf(h, to), _leaf(prev, to), _leaf(c, to)
        args = (ids, first[0]) if gather else (first[0],)
        fn = fn_gather if gather else fn_plain
        out = fn(*args, hid, gate, mean_norm if to is None else mean_norm.double(), LAMBDA, 0.0, prv, cg)
        return out, _grads(out, [*first, hid, prv, cg], dout if to is None else dout.double())

    out, grads = run(latent_injection, embedding_latent_injection)
    ref, ref_grads = run(latent_injection_reference, embedding_latent_injection_reference, torch.float64)
    atol, rtol = TOL[dtype]
    assert_close(out, ref, atol, rtol, "out")
    names = ["d_first", "d_hidden", *(["d_prev"] if with_prev else []), "d_channel_gate"]
    for name, g, rg in zip(names, grads, ref_grads):
        assert torch.isfinite(g).all(), name
        # d c sums B·T rows: its rounding grows with the row count in low precision
        scale = math.sqrt(batch * seq) if name == "d_channel_gate" and dtype != torch.float64 else 1.0
        assert_close(g, rg, atol * scale, rtol * scale, name)
