"""Every Triton kernel configuration compiles for sm_80 and sm_90 on this GPU-less machine.

One child process (``python -m flythinker.kernels.aot``, no ``TRITON_INTERPRET``, 2 compile processes)
compiles the whole case table of :mod:`flythinker.kernels.aot`; the tests then require: no compile
error, no spill, shared memory within the target's limit, and coverage — both targets, fp32/bf16/fp16,
and exactly the (BLOCK, num_warps) pairs the launchers' own helpers pick for the table's widths.
"""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("triton")

from bench.aot_compile import run_aot  # noqa: E402
from flythinker.kernels import aot, aot_specs  # noqa: E402

ARCHS = (80, 90)


@pytest.fixture(scope="module")
def records() -> list[dict]:
    payload = run_aot(ARCHS, processes=2, timeout=900)
    assert payload["records"], payload["log_tail"]
    return payload["records"]


@pytest.mark.slow  # one child process compiling ~660 configurations with 2 workers (~60 s on 2 free cores)
def test_every_configuration_compiles_without_spills_within_shared_memory(records):
    bad = [p for r in records for p in aot.problems(r)]
    assert not bad, f"{len(bad)} of {len(records)} kernel configurations fail:\n" + "\n".join(bad)
    accepted = [aot.config_key(r) for r in records if aot.spill_bytes(r)]
    if accepted:
        warnings.warn(
            f"{len(accepted)} configurations spill within ACCEPTED_SPILLS: {accepted}", stacklevel=1
        )


@pytest.mark.slow  # one child process compiling ~660 configurations with 2 workers (~60 s on 2 free cores)
def test_every_kernel_target_and_dtype_is_compiled(records):
    seen = {
        (r["kernel"], r["arch"], next(v for v in r["signature"].values() if v.startswith("*")))
        for r in records
    }
    want = {(s.name, a, f"*{d}") for s in aot.SPECS for a in ARCHS for d in aot.DTYPES}
    assert want <= seen, sorted(want - seen)


@pytest.mark.slow  # one child process compiling ~660 configurations with 2 workers (~60 s on 2 free cores)
def test_block_and_warps_are_the_launchers_choices(records, monkeypatch):
    """The recorded launches carry the launchers' (BLOCK, num_warps) for every width of the table."""
    # Import first, under this session's TRITON_INTERPRET: importing a kernel module decorates its
    # kernels for good, and compiled-mode kernels would break every interpreter test that runs later.
    from flythinker.kernels import triton_injection as ti
    from flythinker.kernels import triton_linear_cross_entropy as tce

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the helpers read it at call time

    def compiled(kernel):
        return {(r["constexprs"].get("BLOCK", r["constexprs"].get("BLOCK_V")), r["options"]["num_warps"])
                for r in records if r["kernel"] == kernel}  # fmt: skip

    want_inj = {ti._launch_config(d) for d in aot_specs.INJECTION_WIDTHS}
    assert compiled("latent_injection_fwd") == want_inj
    assert compiled("latent_injection_bwd") == want_inj
    assert compiled("ce_chunk") == {tce._block_v(v, None) for v in aot_specs.CE_VOCABS}
    assert {w for _, w in want_inj} == {4, 8, 16, 32} and {w for _, w in compiled("ce_chunk")} == {8, 16, 32}


@pytest.mark.slow  # one child process compiling ~660 configurations with 2 workers (~60 s on 2 free cores)
def test_channel_gate_variants_are_compiled_when_the_launcher_has_them(records):
    flags = {r["constexprs"].get("HAS_CGATE") for r in records if r["kernel"].startswith("latent_injection")}
    expected = set(
        aot_specs.optional_flags(aot_specs.INJECTION_MODULE, "latent_injection_forward", "channel_gate")()
    )
    assert flags == expected or flags == {None} and expected == {False}


_PTXAS_LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ce_chunk_kernel' for 'sm_90a'
ptxas info    : Function properties for _ce_chunk_kernel
    48 bytes stack frame, 48 bytes spill stores, 52 bytes spill loads
ptxas info    : Used 64 registers, used 1 barriers, 48 bytes cumulative stack size, 16 bytes smem, 404 bytes cmem[0]
"""


def test_ptxas_log_parsing_and_the_pass_fail_contract():
    parsed = aot.parse_ptxas_log(_PTXAS_LOG)
    assert parsed == {"registers": 64, "stack_frame_bytes": 48, "spill_store_bytes": 48, "spill_load_bytes": 52,
                      "static_smem_bytes": 16}  # fmt: skip
    base = {"kernel": "k", "arch": 90, "constexprs": {"BLOCK": 64}, "options": {"num_warps": 4}, **parsed}
    assert any("spill" in p for p in aot.problems({**base, "smem_bytes": 16}))
    key = aot.config_key(base)
    assert key == "k sm_90 ? BLOCK=64 - warps=4"
    assert aot.problems({**base, "smem_bytes": 16}, accepted={key: 100}) == []
    assert aot.problems({**base, "smem_bytes": 16}, accepted={key: 99})  # 100 B spilled > 99 accepted
    clean = {**base, "spill_store_bytes": 0, "spill_load_bytes": 0}
    assert aot.problems({**clean, "smem_bytes": aot.SMEM_LIMIT[90]}) == []
    assert "shared memory" in aot.problems({**clean, "smem_bytes": aot.SMEM_LIMIT[90] + 1})[0]
    assert aot.problems({**clean, "smem_bytes": aot.SMEM_LIMIT[80] + 1, "arch": 80})
    assert "compile error" in aot.problems({**base, "error": "boom"})[0]
