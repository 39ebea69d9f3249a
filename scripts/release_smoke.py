"""Smoke test of an installed flythinker wheel (run by scripts/ci_release.sh outside the repository).

Checks that what ``pip install flythinker-*.whl`` installs works on its own: the package imports from
site-packages (not from a checkout), a tiny random FlyThinker runs forward and generate, saves and loads
back bit for bit (``from_pretrained`` and ``AutoModelForCausalLM``), and the ``flythinker`` command
answers ``--help`` and ``--version`` (the distribution's version). Exits non-zero with the failed check.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import flythinker
from flythinker import FlyThinkerForCausalLM

VOCAB = 64


def check(condition: bool, what: str) -> None:
    if not condition:
        raise SystemExit(f"release smoke test failed: {what}")
    print(f"ok  {what}")


def tiny_model() -> FlyThinkerForCausalLM:
    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, intermediate_size=64, num_hidden_layers=2, max_position_embeddings=128,
                  pad_token_id=0, bos_token_id=1, eos_token_id=None)  # fmt: skip
    generator = Qwen2ForCausalLM(
        Qwen2Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, **common)
    )
    reasoner = LlamaForCausalLM(
        LlamaConfig(hidden_size=16, num_attention_heads=2, num_key_value_heads=1, **common)
    )
    return FlyThinkerForCausalLM.from_components(generator=generator, reasoner=reasoner).eval()


def main() -> None:
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    package = Path(flythinker.__file__).resolve().parent
    check(package.parent == site, f"flythinker imports from site-packages ({package})")
    import flythinker.kernels.injection as injection
    import flythinker.train.readers as readers

    for module in (injection, readers):
        check(
            Path(module.__file__).resolve().is_relative_to(package), f"{module.__name__} is inside the wheel"
        )
    version = importlib.metadata.version("flythinker")
    check(version == flythinker.__version__, f"distribution version {version} == flythinker.__version__")

    model = tiny_model()
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    check(logits.shape == (2, 7, VOCAB) and bool(logits.isfinite().all()), "forward")
    out = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    check(out.shape == (2, 12), "generate (GenerationMixin)")

    folder = Path(tempfile.mkdtemp(prefix="flythinker-smoke-"))
    try:
        model.save_pretrained(folder)
        for loader in (FlyThinkerForCausalLM, AutoModelForCausalLM):
            with torch.no_grad():
                again = loader.from_pretrained(folder).eval()(ids, attention_mask=mask).logits
            check(
                torch.equal(again, logits),
                f"save_pretrained + {loader.__name__}.from_pretrained: same logits",
            )
    finally:
        shutil.rmtree(folder)

    # the console script sits beside this interpreter (the venv need not be activated)
    command = str(Path(sys.executable).parent / "flythinker")
    check(Path(command).is_file(), f"the flythinker command is installed ({command})")
    helped = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=300)
    check(helped.returncode == 0 and "usage: flythinker" in helped.stdout, "flythinker --help")
    shown = subprocess.run([command, "--version"], capture_output=True, text=True, timeout=300)
    check(shown.returncode == 0 and shown.stdout.strip() == f"flythinker {version}", "flythinker --version")


if __name__ == "__main__":
    sys.exit(main())
