"""Backend dispatch: env switches, clear errors, and no triton import at module import time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from flythinker.kernels import dispatch, injection, linear_cross_entropy

_ENV = ("FLYTHINKER_FORCE_TRITON", "FLYTHINKER_DISABLE_TRITON", "TRITON_INTERPRET")


@pytest.fixture
def clean_env(monkeypatch):
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _injection_args():
    return torch.randn(2, 3, 8), torch.randn(2, 3, 4), torch.ones(2, 3), 1.0, 0.5


def _spy(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_cpu_default_uses_reference(clean_env):
    """On CPU: the injection's reference, and the loss's chunked loop with the PyTorch step (never full logits)."""
    ref_calls = _spy(clean_env, injection, "latent_injection_reference")
    ce_calls = _spy(clean_env, linear_cross_entropy, "ce_chunk_step_torch")
    eager_calls = _spy(clean_env, linear_cross_entropy, "linear_cross_entropy_reference")
    injection.latent_injection(*_injection_args())
    linear_cross_entropy.fused_linear_cross_entropy(
        torch.randn(4, 8), torch.randn(11, 8), torch.tensor([1, 2, -100, 3])
    )
    assert (
        ref_calls == ["latent_injection_reference"]
        and ce_calls == ["ce_chunk_step_torch"]
        and not eager_calls
    )
    assert dispatch.use_triton(torch.zeros(1)) is False


def test_force_with_interpreter_runs_triton(clean_env):
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        clean_env.setenv("TRITON_INTERPRET", "1")
    clean_env.setenv("FLYTHINKER_FORCE_TRITON", "1")
    from flythinker.kernels import triton_injection_autograd, triton_linear_cross_entropy

    inj_calls = _spy(clean_env, triton_injection_autograd, "latent_injection_triton")
    emb_calls = _spy(clean_env, triton_injection_autograd, "embedding_latent_injection_triton")
    ce_calls = _spy(clean_env, triton_linear_cross_entropy, "ce_chunk_step_triton")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    e, h, g, m, lam = (x.to(dev) if torch.is_tensor(x) else x for x in _injection_args())
    out = injection.latent_injection(e, h, g, m, lam)
    assert torch.allclose(out, injection.latent_injection_reference(e, h, g, m, lam), atol=1e-6)
    injection.embedding_latent_injection(
        torch.zeros(2, 3, dtype=torch.long, device=dev), torch.randn(5, 8, device=dev), h, g, m, lam
    )
    linear_cross_entropy.fused_linear_cross_entropy(
        torch.randn(4, 8, device=dev),
        torch.randn(11, 8, device=dev),
        torch.tensor([1, 2, -100, 3], device=dev),
    )
    assert inj_calls and emb_calls and ce_calls


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only behaviour")
def test_force_without_interpreter_errors_clearly(clean_env):
    clean_env.setenv("FLYTHINKER_FORCE_TRITON", "1")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        injection.latent_injection(*_injection_args())
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        linear_cross_entropy.fused_linear_cross_entropy(
            torch.randn(4, 8), torch.randn(11, 8), torch.tensor([1, 2, -100, 3])
        )


def test_force_without_triton_errors_clearly(clean_env):
    clean_env.setenv("FLYTHINKER_FORCE_TRITON", "1")
    clean_env.setenv("TRITON_INTERPRET", "1")
    clean_env.setattr(dispatch, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="triton is not installed"):
        injection.latent_injection(*_injection_args())


def test_disable_wins_over_force(clean_env):
    clean_env.setenv("FLYTHINKER_FORCE_TRITON", "1")
    clean_env.setenv("FLYTHINKER_DISABLE_TRITON", "1")
    calls = _spy(clean_env, injection, "latent_injection_reference")
    injection.latent_injection(*_injection_args())
    assert calls == ["latent_injection_reference"]


def test_cuda_tensors_pick_triton_when_available(clean_env):
    class FakeCuda:
        is_cuda = True

    clean_env.setattr(dispatch, "triton_available", lambda: True)
    assert dispatch.use_triton(FakeCuda(), None, FakeCuda()) is True
    clean_env.setattr(dispatch, "triton_available", lambda: False)
    assert dispatch.use_triton(FakeCuda()) is False  # no triton: reference, silently
    clean_env.setenv("FLYTHINKER_DISABLE_TRITON", "1")
    clean_env.setattr(dispatch, "triton_available", lambda: True)
    assert dispatch.use_triton(FakeCuda()) is False


_BLOCKER = textwrap.dedent(
    """
    import sys
    class _NoTriton:
        def find_spec(self, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                raise ImportError("triton blocked for this test")
            return None
    sys.meta_path.insert(0, _NoTriton())
    """
)

_BODY = textwrap.dedent(
    """
    import os, torch
    from flythinker.kernels import dispatch as D, injection as I, linear_cross_entropy as L
    out = I.latent_injection(torch.randn(2, 3, 8), torch.randn(2, 3, 4), torch.ones(2, 3), 1.0, 0.5)
    loss = L.fused_linear_cross_entropy(torch.randn(4, 8), torch.randn(11, 8), torch.tensor([1, 2, -100, 3]))
    loss2 = L.chunked_linear_cross_entropy(torch.randn(4, 8), torch.randn(11, 8), torch.tensor([1, 2, -100, 3]))
    assert out.shape == (2, 3, 8) and loss.isfinite() and loss2.isfinite()
    print("TRITON_LOADED", any(m == "triton" or m.startswith("triton.") for m in sys.modules))
    print("OUR_TRITON_MODULES", sorted(m for m in sys.modules if m.startswith("flythinker.kernels.triton_")))
    print("AVAILABLE", D.triton_available())
    os.environ["FLYTHINKER_FORCE_TRITON"] = "1"
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        I.latent_injection(torch.randn(2, 3, 8), torch.randn(2, 3, 4), torch.ones(2, 3), 1.0, 0.5)
    except RuntimeError as err:
        print("FORCED_ERROR", err)
    """
)


def _run_python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in _ENV}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_and_cpu_use_without_triton_installed():
    out = _run_python(_BLOCKER + "import sys\n" + _BODY)
    assert "TRITON_LOADED False" in out
    assert "AVAILABLE False" in out
    assert "FORCED_ERROR FLYTHINKER_FORCE_TRITON=1 but triton is not installed" in out


def test_import_does_not_import_our_triton_modules():
    """With triton installed, importing and CPU use never load the modules that import triton.

    (``triton`` itself may still appear in ``sys.modules``: transformers' ``modeling_utils``, which the
    top-level ``flythinker`` package imports, imports it — not ours to control.)
    """
    pytest.importorskip("triton")
    out = _run_python("import sys\n" + _BODY.split("os.environ")[0])
    assert "OUR_TRITON_MODULES []" in out
    assert "AVAILABLE True" in out
