"""The think-while-generating decode loop: ``prefill``, ``decode_one_token``, the loop, ``generate``.

Schedule (DESIGN §1)::

    prefill   chunks c_0..c_{n-1} of the prompt:  R(c_0);  then  R(c_{k+1}) ∥ G(c_k, h of c_k);  G's
              LM head on the last position only  → sample x_{T0}
    step t    R.step(x_t) → h_t   ∥   G.step(E_G[x_t] + λ·r_{t-1}) → logits → x_{t+1}

``∥`` is whatever the runner makes of it (``workers.py``): the sequential reference, a side CUDA
stream, a second device, a worker thread or a worker process. The tokens never depend on it.

No host synchronisation per token: finished flags (EOS) live on the device and the host reads them,
checks stop strings and drops finished rows every ``check_every`` steps (every step while streaming).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .sampling import SamplingSettings, TokenSelector, resolve_sampling
from .steps import GeneratorSide, ReasonerSide, new_static_cache, prefill_gate, select_cache_rows
from .stopping import find_stop
from .workers import DeviceRunner, ProcessRunner, ThreadRunner, default_cpu_threads

SCHEDULES = ("sequential", "concurrent", "threads", "processes", "cuda-streams", "two-device")
# Measured on the 2-core CPU with the SmolLM2-135M pair (bench/results/decode_cpu*.md): processes 62.9 vs
# threads 66.1 ms/token (sequential 108.9, generator alone 61.9) in a quieter window; equal within noise
# when other jobs held the cores. "threads" stays selectable (no worker start-up, no shared-memory weights).
CPU_CONCURRENT_DEFAULT = "processes"


@dataclass(frozen=True)
class DecodingSettings:
    """Everything that decided the output: token selection, stopping and the schedule."""

    sampling: SamplingSettings
    max_new_tokens: int
    eos_token_id: tuple[int, ...]
    pad_token_id: int
    stop_strings: tuple[str, ...]
    schedule: str  # resolved (``concurrent`` becomes the placement actually used)
    prefill_chunk: int
    check_every: int
    shrink_finished: bool
    threads: tuple[int, int] | None  # (generator, reasoner) CPU threads, None = untouched
    compile: str | None
    generator_device: str
    reasoner_device: str


@dataclass
class Timings:
    """Host wall-clock times (CUDA: launch times, except the synchronised first token and total)."""

    time_to_first_token_s: float
    decode_s: float
    total_s: float
    new_tokens: int  # the longest row
    step_s: list[float] = field(default_factory=list)  # each decode step after the first token
    generator_rows: int = 0  # Σ rows fed to the generator over all forward passes (prefill counts once)
    reasoner_rows: int = 0

    @property
    def per_token_s(self) -> float:
        """Median decode step latency (0 when only one token was generated)."""
        return float(torch.tensor(self.step_s).median()) if self.step_s else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Decode tokens per second per row (after the first token)."""
        return len(self.step_s) / self.decode_s if self.decode_s > 0 else 0.0


@dataclass
class GenerationOutput:
    """``sequences`` = prompt + generated tokens ([B, T0 + n], pad after a row finishes, n = longest row)."""

    sequences: torch.Tensor
    new_tokens: torch.Tensor  # [B, n]
    lengths: list[int]  # generated tokens kept per row (EOS / stop-completing token included)
    finish_reasons: list[str]  # "eos" | "stop_string" | "length"
    texts: list[str] | None
    settings: DecodingSettings
    timings: Timings


# ------------------------------------------------------------------------------------------ inputs
def _check_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype.is_floating_point:
        raise ValueError(f"input_ids must be an integer tensor [batch, length], got {getattr(input_ids, 'shape', input_ids)}")
    if attention_mask is None:
        return torch.ones_like(input_ids)
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
    mask = attention_mask.to(torch.long)
    if not bool(mask[:, -1].all()) or not bool((mask[:, 1:] >= mask[:, :-1]).all()):
        raise ValueError("prompts must be left-padded: each attention_mask row must be 0…0 1…1 and end with 1")
    return mask


def _as_tuple(value) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (list, tuple, set)):
        return tuple(value)
    if isinstance(value, torch.Tensor):
        return tuple(int(v) for v in value.flatten().tolist())
    return (value,)


def _resolve_schedule(schedule: str, generator_device: torch.device, reasoner_device: torch.device) -> str:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule != "concurrent":
        return schedule
    if reasoner_device != generator_device:
        return "two-device"
    return "cuda-streams" if generator_device.type == "cuda" else CPU_CONCURRENT_DEFAULT


# ------------------------------------------------------------------------------------------ the loop
class _Decoding:
    """One call: state, prefill, decode steps, finish bookkeeping. ``run()`` yields after each token."""

    def __init__(self, model, input_ids, mask, settings: DecodingSettings, selector, runner, tokenizer,
                 streamer, logits_processor):
        self.model, self.settings, self.selector, self.runner = model, settings, selector, runner
        self.tokenizer, self.streamer, self.logits_processor = tokenizer, streamer, logits_processor
        self.generator_side = GeneratorSide(model)
        self.reasoner_side = ReasonerSide(model.reasoner, model.projection)
        self.device = self.generator_side.embed.weight.device
        self.input_ids, self.prompt_mask = input_ids.to(self.device), mask.to(self.device)
        self.step_fn = self.generator_side.step
        if settings.compile:
            self.step_fn = torch.compile(self.generator_side.step, mode=settings.compile, dynamic=False)
        self.output: GenerationOutput | None = None

    # ------------------------------------------------------------------------------ prefill
    @torch.no_grad()
    def prefill(self) -> torch.Tensor:
        """Pipelined chunked prefill; returns the generator's logits at the last prompt position."""
        ids, positions, mask, cache = self.input_ids, self.positions, self.mask, self.generator_cache
        length, chunk = ids.shape[1], self.settings.prefill_chunk
        bounds = [(s, min(s + chunk, length)) for s in range(0, length, chunk)]
        self.runner.start(ids[:, : bounds[0][1]], positions[:, : bounds[0][1]])
        previous = last = None
        for k, (start, end) in enumerate(bounds):
            hidden = self.runner.finish()  # R's states for chunk k
            if k + 1 < len(bounds):  # R on chunk k+1 while G runs chunk k
                next_start, next_end = bounds[k + 1]
                self.runner.start(ids[:, next_start:next_end], positions[:, next_start:next_end])
            gate = prefill_gate(mask, positions[:, start:end], start)
            last = self.generator_side.forward_chunk(
                ids[:, start:end], hidden, gate, previous, mask, positions[:, start:end], cache
            )
            previous = hidden[:, -1]
        self.previous_hidden = previous
        rows = ids.shape[0]
        self.timings.generator_rows += rows
        self.timings.reasoner_rows += rows
        return self.generator_side.logits(last)

    # ------------------------------------------------------------------------------ one step
    @torch.no_grad()
    def decode_one_token(self, tokens: torch.Tensor) -> torch.Tensor:
        """R.step(x_t) ∥ G.step(x_t, h_{t-1}); returns G's logits and stores h_t for the next step."""
        self.last_position = self.last_position + 1
        self.runner.start(tokens[:, None], self.last_position)
        logits = self.step_fn(tokens[:, None], self.previous_hidden, self.mask, self.last_position, self.generator_cache)
        self.previous_hidden = self.runner.finish()[:, -1]
        rows = tokens.shape[0]
        self.timings.generator_rows += rows
        self.timings.reasoner_rows += rows
        return logits

    @torch.no_grad()
    def select(self, logits: torch.Tensor) -> torch.Tensor:
        def ids_so_far():
            prompt = self.input_ids.index_select(0, self.active)
            return torch.cat([prompt, self.tokens.index_select(0, self.active)[:, : self.step]], dim=1)

        return self.selector.select(logits, self.active, self.seen, ids_so_far)

    @torch.no_grad()
    def record(self, tokens: torch.Tensor) -> torch.Tensor:
        """Write the step's tokens (pad for finished rows) and update the on-device finish flags."""
        s = self.settings
        done = self.done.index_select(0, self.active)
        tokens = torch.where(done, torch.full_like(tokens, s.pad_token_id), tokens)
        self.tokens[self.active, self.step] = tokens
        if self.eos is not None:
            newly = torch.isin(tokens, self.eos) & ~done
            self.length[self.active] = torch.where(newly, self.step + 1, self.length.index_select(0, self.active))
            self.done[self.active] = done | newly
        if self.seen is not None:
            self.seen.scatter_(1, tokens[:, None], True)
        return tokens

    # ------------------------------------------------------------------------------ host checks
    @torch.no_grad()
    def check(self) -> bool:
        """Host side, every ``check_every`` steps: stop strings, shrink the batch; False = all done."""
        done = self.done.tolist()
        if self.settings.stop_strings and self.tokenizer is not None:
            lengths = self.length.tolist()
            rows = [r for r in self.active_rows if self.reasons[r] is None]
            token_rows = self.tokens[rows, : self.step + 1].tolist() if rows else []
            for r, row_tokens in zip(rows, token_rows):
                limit = min(lengths[r], self.step + 1)
                found = find_stop(self.tokenizer, row_tokens[:limit], self.settings.stop_strings)
                if found is not None and self.reasons[r] is None:
                    n, chars = found
                    self.reasons[r], self.stop_chars[r] = "stop_string", chars
                    self.length[r] = n
                    self.tokens[r, n:] = self.settings.pad_token_id
                    self.done[r] = True
                    done[r] = True
        keep = [i for i, r in enumerate(self.active_rows) if not done[r]]
        if not keep:
            return False
        if self.settings.shrink_finished and len(keep) < len(self.active_rows):
            local = torch.tensor(keep, device=self.device)
            self.active_rows = [self.active_rows[i] for i in keep]
            self.active = self.active.index_select(0, local)
            select_cache_rows(self.generator_cache, local)
            self.runner.select(local)
            self.mask = self.mask.index_select(0, local)
            self.last_position = self.last_position.index_select(0, local)
            self.previous_hidden = self.previous_hidden.index_select(0, local)
            self.current = self.current.index_select(0, local)
            if self.seen is not None:
                self.seen = self.seen.index_select(0, local)
        return True

    # ------------------------------------------------------------------------------ the loop
    def run(self) -> Iterator[int]:
        """Generate; yields the step index after each token is recorded. Sets ``self.output``."""
        s, device = self.settings, self.device
        batch, prompt_length = self.input_ids.shape
        max_len = prompt_length + s.max_new_tokens
        self.mask = torch.cat([self.prompt_mask, self.prompt_mask.new_ones(batch, s.max_new_tokens)], dim=1)
        self.positions = (self.prompt_mask.cumsum(-1) - 1).clamp_min(0)
        self.last_position = self.positions[:, -1:]
        self.generator_cache = new_static_cache(self.model.config.generator_config, max_len)
        self.tokens = torch.full((batch, s.max_new_tokens), s.pad_token_id, dtype=torch.long, device=device)
        self.length = torch.full((batch,), s.max_new_tokens, dtype=torch.long, device=device)
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.eos = torch.tensor(s.eos_token_id, dtype=torch.long, device=device) if s.eos_token_id else None
        self.active = torch.arange(batch, device=device)
        self.active_rows = list(range(batch))
        self.reasons: list[str | None] = [None] * batch
        self.stop_chars: list[int | None] = [None] * batch
        self.seen = None
        if s.sampling.repetition_penalty != 1.0:
            vocab = self.model.config.get_text_config().vocab_size
            counts = torch.zeros(batch, vocab, device=device).scatter_add_(
                1, self.input_ids, self.prompt_mask.to(torch.float32))
            self.seen = counts > 0
        self.timings = Timings(0.0, 0.0, 0.0, 0)
        streaming = self.streamer is not None or self._streaming
        check_every = 1 if streaming else s.check_every
        if self.streamer is not None:
            self.streamer.put(self.input_ids.cpu())

        begin = time.perf_counter()
        self.runner.setup(self.reasoner_side, batch, max_len, s.prefill_chunk, self.mask)
        try:
            self.step = 0
            self.prefill_logits = self.prefill()  # [B, V], kept for inspection (one tensor)
            self.current = self.record(self.select(self.prefill_logits))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            first = time.perf_counter()
            self.timings.time_to_first_token_s = first - begin
            alive = True
            for self.step in range(0, s.max_new_tokens):
                if self.step > 0:
                    tick = time.perf_counter()
                    self.current = self.record(self.select(self.decode_one_token(self.current)))
                    self.timings.step_s.append(time.perf_counter() - tick)
                if self.streamer is not None:
                    self.streamer.put(self.tokens[:, self.step].cpu())
                last_step = self.step == s.max_new_tokens - 1
                if (self.step + 1) % check_every == 0 or last_step:
                    alive = self.check()
                yield self.step
                if not alive:
                    break
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            end = time.perf_counter()
        finally:
            self.runner.end()
        if self.streamer is not None:
            self.streamer.end()
        self.timings.decode_s = end - first
        self.timings.total_s = end - begin
        self.output = self._finish(batch)

    _streaming = False

    def _finish(self, batch: int) -> GenerationOutput:
        lengths = self.length.tolist()
        for r in range(batch):
            if self.reasons[r] is None:
                self.reasons[r] = "eos" if lengths[r] < self.settings.max_new_tokens or self._ends_with_eos(r) else "length"
        n = max(lengths)
        new_tokens = self.tokens[:, :n]
        texts = None
        if self.tokenizer is not None:
            texts = []
            for r, row in enumerate(new_tokens.tolist()):
                if self.reasons[r] == "stop_string":
                    texts.append(self.tokenizer.decode(row[: lengths[r]], skip_special_tokens=False)[: self.stop_chars[r]])
                else:
                    texts.append(self.tokenizer.decode(row[: lengths[r]], skip_special_tokens=True))
        self.timings.new_tokens = n
        return GenerationOutput(
            sequences=torch.cat([self.input_ids, new_tokens], dim=1),
            new_tokens=new_tokens,
            lengths=lengths,
            finish_reasons=list(self.reasons),
            texts=texts,
            settings=self.settings,
            timings=self.timings,
        )

    def _ends_with_eos(self, row: int) -> bool:
        return bool(self.settings.eos_token_id) and int(self.tokens[row, -1]) in self.settings.eos_token_id


# ------------------------------------------------------------------------------------------ entry points
def _prepare(model, input_ids, attention_mask, *, schedule, max_new_tokens, do_sample, temperature, top_k,
             top_p, min_p, repetition_penalty, seed, eos_token_id, pad_token_id, generation_config,
             logits_processor, tokenizer, stop_strings, streamer, prefill_chunk, check_every, shrink_finished,
             threads, compile):
    mask = _check_inputs(input_ids, attention_mask)
    if not bool(mask.any(dim=1).all()):
        raise ValueError("every prompt row needs at least one real token")
    if model.training:
        warnings.warn("model is in training mode (dropout active); call model.eval() first", stacklevel=3)
    config = generation_config

    def pick(value, name):
        return value if value is not None else getattr(config, name, None) if config is not None else None

    max_new = pick(max_new_tokens, "max_new_tokens")
    if max_new is None and config is not None and getattr(config, "max_length", None) is not None:
        max_new = config.max_length - input_ids.shape[1]
    if max_new is None or int(max_new) < 1:
        raise ValueError(f"max_new_tokens must be given and >= 1 (no default), got {max_new}")
    eos = pick(eos_token_id, "eos_token_id")
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    pad = pick(pad_token_id, "pad_token_id")
    if pad is None and tokenizer is not None:
        pad = tokenizer.pad_token_id
    if pad is None:
        eos_tuple = _as_tuple(eos)
        pad = eos_tuple[0] if eos_tuple else 0
    stops = _as_tuple(pick(stop_strings, "stop_strings"))
    if stops and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer= to decode the generated tokens")
    sampling = resolve_sampling(config, logits_processor, do_sample=do_sample, temperature=temperature,
                                top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
                                seed=seed)

    generator_device = model.generator.get_input_embeddings().weight.device
    reasoner_device = next(model.reasoner.parameters()).device
    resolved = _resolve_schedule(schedule, generator_device, reasoner_device)
    if resolved in ("threads", "processes") and (generator_device.type != "cpu" or reasoner_device.type != "cpu"):
        raise ValueError(f"the {resolved} schedule is for CPU models; use cuda-streams or two-device on GPUs")
    if resolved == "cuda-streams" and reasoner_device.type != "cuda":
        raise ValueError("the cuda-streams schedule needs the model on a CUDA device")
    split = None
    if resolved in ("threads", "processes"):
        total = default_cpu_threads()
        split = tuple(threads) if threads is not None else (max(1, total - total // 2), max(1, total // 2))
    if prefill_chunk is None:
        prefill_chunk = input_ids.shape[1] if resolved == "sequential" else 256
    compile_mode = None
    if compile:
        compile_mode = compile if isinstance(compile, str) else (
            "reduce-overhead" if generator_device.type == "cuda" else "default")
    settings = DecodingSettings(
        sampling=sampling,
        max_new_tokens=int(max_new),
        eos_token_id=tuple(int(e) for e in _as_tuple(eos)),
        pad_token_id=int(pad),
        stop_strings=stops,
        schedule=resolved,
        prefill_chunk=max(1, int(prefill_chunk)),
        check_every=max(1, int(check_every)),
        shrink_finished=bool(shrink_finished),
        threads=split,
        compile=compile_mode,
        generator_device=str(generator_device),
        reasoner_device=str(reasoner_device),
    )
    if resolved == "threads":
        runner = ThreadRunner(generator_device)
    elif resolved == "processes":
        runner = ProcessRunner(generator_device, threads=split[1])
    else:
        step_fn = None
        if compile_mode is not None:
            step_fn = torch.compile(ReasonerSide(model.reasoner, model.projection), mode=compile_mode, dynamic=False)
        runner = DeviceRunner(generator_device, use_stream=resolved == "cuda-streams", step_fn=step_fn)
    selector = TokenSelector(sampling, input_ids.shape[0], generator_device, logits_processor)
    return _Decoding(model, input_ids, mask, settings, selector, runner, tokenizer, streamer, logits_processor)


class _ThreadSetting:
    """``torch.set_num_threads`` for the duration of a call (process-wide in PyTorch)."""

    def __init__(self, settings: DecodingSettings):
        self.threads = None
        if settings.schedule == "threads":
            self.threads = settings.threads[1]  # one shared intra-op setting for both worker threads
        elif settings.schedule == "processes":
            self.threads = settings.threads[0]

    def __enter__(self):
        self.saved = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc):
        torch.set_num_threads(self.saved)


def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    schedule: str = "concurrent",
    max_new_tokens: int | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    seed: int | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    generation_config=None,
    logits_processor=None,
    tokenizer=None,
    stop_strings: str | list[str] | None = None,
    streamer=None,
    prefill_chunk: int | None = None,
    check_every: int = 8,
    shrink_finished: bool = True,
    threads: tuple[int, int] | None = None,
    compile: bool | str = False,
) -> GenerationOutput:
    """Decode with a :class:`~flythinker.FlyThinkerForCausalLM`, reasoner and generator concurrently.

    Args:
        model: a FlyThinker model (eval mode). Put ``model.reasoner`` on another device for ``two-device``.
        input_ids, attention_mask: [B, T0] left-padded prompts (every row needs ≥ 1 real token).
        schedule: ``"concurrent"`` (= ``cuda-streams`` on one GPU, ``two-device`` when R and G sit on
            different devices, ``processes`` on CPU), or explicitly ``"sequential"`` (the reference),
            ``"threads"``, ``"processes"``, ``"cuda-streams"``, ``"two-device"``.
        max_new_tokens: required (here or in ``generation_config``).
        do_sample, temperature, top_k, top_p, min_p, repetition_penalty, seed: token selection; unset
            options are off (greedy by default). ``generation_config`` (a transformers
            ``GenerationConfig``) fills what is not given explicitly; ``logits_processor`` (a
            ``LogitsProcessorList``) runs after the repetition penalty.
        eos_token_id, pad_token_id: explicit, else from ``generation_config``, else from ``tokenizer``.
        tokenizer: decodes ``texts`` and stop strings. stop_strings: a row stops at the token completing one.
        streamer: a transformers streamer (``put``/``end``), fed every step.
        prefill_chunk: prompt chunk length for the pipelined prefill (default: 256, whole prompt when sequential).
        check_every: host reads finish flags and checks stop strings every k steps (no per-token sync).
        shrink_finished: drop finished rows from both models' batches at those checks.
        threads: (generator, reasoner) CPU threads for the processes/threads schedules (default: split cores).
        compile: ``torch.compile`` the one-token steps (True = ``reduce-overhead`` on CUDA, or a mode name).

    Returns:
        :class:`GenerationOutput` with sequences, per-row lengths/finish reasons, texts (with a
        tokenizer), the effective :class:`DecodingSettings` and :class:`Timings`.
    """
    decoding = _prepare(**locals())
    with _ThreadSetting(decoding.settings):
        for _ in decoding.run():
            pass
    return decoding.output


class TextStream:
    """Iterator of text pieces as they are generated; ``.output`` holds the result afterwards.

    Batch 1 yields ``str`` pieces; a batch yields ``list[str]`` (one piece per row, "" when nothing new).
    A piece is emitted once its bytes decode cleanly (no dangling partial UTF-8 character).
    """

    def __init__(self, decoding: _Decoding, tokenizer):
        self.decoding, self.tokenizer = decoding, tokenizer
        self.output: GenerationOutput | None = None

    def __iter__(self):
        decoding, batch = self.decoding, self.decoding.input_ids.shape[0]
        sent = [0] * batch
        decoding._streaming = True
        with _ThreadSetting(decoding.settings):
            for step in decoding.run():
                lengths = decoding.length.tolist()
                rows = decoding.tokens[:, : step + 1].tolist()
                pieces = []
                for r in range(batch):
                    kept = rows[r][: min(lengths[r], step + 1)]
                    if decoding.reasons[r] == "stop_string":
                        text = self.tokenizer.decode(kept, skip_special_tokens=False)[: decoding.stop_chars[r]]
                    else:
                        text = self.tokenizer.decode(kept, skip_special_tokens=True)
                    if text.endswith("\ufffd"):
                        pieces.append("")
                        continue
                    pieces.append(text[sent[r]:])
                    sent[r] = max(sent[r], len(text))
                if batch == 1:
                    if pieces[0]:
                        yield pieces[0]
                else:
                    yield pieces
        self.output = decoding.output


def stream(model, input_ids, attention_mask=None, *, tokenizer, **kwargs) -> TextStream:
    """Like :func:`generate` but returns an iterator of text pieces (see :class:`TextStream`)."""
    if tokenizer is None:
        raise ValueError("stream() needs a tokenizer to turn tokens into text")
    args = dict(
        schedule="concurrent", max_new_tokens=None, do_sample=None, temperature=None, top_k=None, top_p=None,
        min_p=None, repetition_penalty=None, seed=None, eos_token_id=None, pad_token_id=None,
        generation_config=None, logits_processor=None, stop_strings=None, streamer=None, prefill_chunk=None,
        check_every=1, shrink_finished=True, threads=None, compile=False,
    )
    unknown = set(kwargs) - set(args)
    if unknown:
        raise TypeError(f"stream() got unexpected arguments {sorted(unknown)}")
    args.update(kwargs)
    decoding = _prepare(model, input_ids, attention_mask, tokenizer=tokenizer, **args)
    return TextStream(decoding, tokenizer)
