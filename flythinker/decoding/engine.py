"""The think-while-generating decode loop: ``prefill``, ``decode_one_token``, ``decode_n_tokens``, ``generate``.

Schedule (docs/design.md §1)::

    prefill   chunks c_0..c_{n-1} of the prompt:  R(c_0);  then  R(c_{k+1}) ∥ G(c_k, h of c_k);  G's
              LM head on the last position only  → sample x_{T0}
    step t    R.step(x_t) → h_t   ∥   G.step(E_G[x_t] + λ·r_{t-1}) → logits → x_{t+1}

``∥`` is whatever the runner makes of it (``runners.py``, ``process_runner.py``): the sequential reference, a
side CUDA stream, a second device, a worker thread or a worker process. The tokens never depend on it.
No host synchronisation per token: EOS flags live on the device; the host reads them, checks stop
strings and drops finished rows every ``check_every`` steps (every step while streaming).
``generate`` and ``stream`` drain the same iterator, :func:`run`.
"""

from __future__ import annotations

import functools
import inspect
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .context import check_context_settings, check_reasoner_prompt, context_prefill
from .runners import ReasonerRunner, make_runner
from .sampling import TokenSelector
from .settings import DecodeOptions, DecodingSettings, check_inputs, resolve_settings
from .state import DecodeState, GenerationOutput, Timings, Transcript
from .steps import GeneratorSide, ReasonerSide, prefill_gate


@torch.no_grad()
def prefill(generator: GeneratorSide, runner: ReasonerRunner, ids, positions, mask, cache, chunk: int):
    """Pipelined chunked prefill; returns (G's logits at the last prompt position, h of that position)."""
    chunks = [slice(start, start + chunk) for start in range(0, ids.shape[1], chunk)]
    runner.start(ids[:, chunks[0]], positions[:, chunks[0]])
    previous = last = None
    for k, part in enumerate(chunks):
        hidden = runner.finish()  # R's states for chunk k
        if k + 1 < len(chunks):  # R on chunk k+1 while G runs chunk k
            runner.start(ids[:, chunks[k + 1]], positions[:, chunks[k + 1]])
        else:  # G's last chunk runs alone: the runner may hand G the reasoner's cores
            runner.generator_alone()
        gate = prefill_gate(mask, positions[:, part], part.start)
        last = generator.forward_chunk(ids[:, part], hidden, gate, previous, mask, positions[:, part], cache)
        previous = hidden[:, -1]
    return generator.logits(last), previous


@torch.no_grad()
def decode_one_token(step: Callable, runner: ReasonerRunner, state: DecodeState) -> torch.Tensor:
    """R.step(x_t) ∥ G.step(x_t, h_{t-1}); returns G's logits [b, V] and keeps h_t in the state."""
    state.position = state.position + 1
    shift = state.reasoner_shift
    runner.start(state.token[:, None], state.position if shift is None else state.position + shift)
    logits = step(state.token[:, None], state.hidden, state.mask, state.position, state.cache)
    state.hidden = runner.finish()[:, -1]
    return logits


@dataclass
class Call:
    """The fixed parts of one call: settings, the two sides, the runner, token selection, the record."""

    settings: DecodingSettings
    input_ids: torch.Tensor
    prompt_mask: torch.Tensor
    generator: GeneratorSide
    reasoner: ReasonerSide
    step: Callable  # G's one-token step (compiled or not)
    runner: ReasonerRunner
    selector: TokenSelector
    transcript: Transcript
    streamer: object = None
    timings: Timings = field(default_factory=Timings)
    prefill_logits: torch.Tensor | None = None  # [B, V], kept for inspection
    output: GenerationOutput | None = None
    reasoner_prompt: tuple[torch.Tensor, torch.Tensor] | None = None  # reasoner-context models (context.py)

    def select(self, state: DecodeState, logits: torch.Tensor, step: int) -> torch.Tensor:
        def ids_so_far():  # only for a user LogitsProcessorList
            tokens = self.transcript.tokens.index_select(0, state.rows)[:, :step]
            return torch.cat([self.input_ids.index_select(0, state.rows), tokens], dim=1)

        return self.selector.select(logits, state.rows, state.seen, ids_so_far)


def decode_n_tokens(call: Call, state: DecodeState, logits: torch.Tensor) -> Iterator[int]:
    """Tokens 0..N-1 (token 0 from the prefill's ``logits``); yields the step after each is recorded."""
    s, timings = call.settings, call.timings
    for step in range(s.max_new_tokens):
        tick = time.perf_counter()
        if step > 0:
            logits = decode_one_token(call.step, call.runner, state)
            timings.generator_rows += state.token.shape[0]
            timings.reasoner_rows += state.token.shape[0]
        state.token = call.transcript.record(state, step, call.select(state, logits, step))
        if step > 0:
            timings.step_s.append(time.perf_counter() - tick)
        if call.streamer is not None:
            call.streamer.put(call.transcript.tokens[:, step].cpu())
        if (step + 1) % s.check_every == 0 or step == s.max_new_tokens - 1:
            keep = call.transcript.check(state, step)
            if keep is None:
                yield step
                return
            if keep.numel() < state.rows.numel():
                state.select(keep)
                call.runner.select(keep)
        yield step


def run(call: Call) -> Iterator[int]:
    """One call: prefill, then ``decode_n_tokens``; yields each step, sets ``call.output`` at the end."""
    s, timings, (batch, prompt_length) = call.settings, call.timings, call.input_ids.shape
    begin = time.perf_counter()
    vocab = (
        call.generator.model.config.get_text_config().vocab_size
        if s.sampling.repetition_penalty != 1.0
        else 0
    )
    config = call.generator.model.config.generator_config
    state, positions = DecodeState.for_prompts(
        call.input_ids, call.prompt_mask, s.max_new_tokens, config, vocab, s.static_cache
    )
    if call.streamer is not None:
        call.streamer.put(call.input_ids.cpu())
    try:
        if call.reasoner_prompt is None:
            call.runner.setup(call.reasoner, state.mask, prompt_length + s.max_new_tokens, s.prefill_chunk)
            logits, state.hidden = prefill(
                call.generator,
                call.runner,
                call.input_ids,
                positions,
                state.mask,
                state.cache,
                s.prefill_chunk,
            )
        else:
            logits, state.hidden = _context_prefill(call, state, positions)
        call.prefill_logits = logits
        timings.generator_rows += batch
        timings.reasoner_rows += batch
        steps = decode_n_tokens(call, state, logits)
        next(steps)  # the first token
        _synchronize(call.input_ids.device)
        first = time.perf_counter()
        timings.time_to_first_token_s = first - begin
        yield 0
        yield from steps
        _synchronize(call.input_ids.device)
        end = time.perf_counter()
    finally:
        call.runner.end()
        timings.reasoner_head_share = call.runner.head_share
    if call.streamer is not None:
        call.streamer.end()
    timings.decode_s, timings.total_s = end - first, end - begin
    call.output = call.transcript.output(call.input_ids, timings)


def _context_prefill(call: Call, state: DecodeState, positions: torch.Tensor):
    """The prefill of a reasoner-context model (``context.py``); sets the per-row reasoner shift."""
    reasoner_ids, reasoner_prompt_mask = call.reasoner_prompt
    new = call.settings.max_new_tokens
    reasoner_mask = torch.cat(
        [reasoner_prompt_mask, reasoner_prompt_mask.new_ones(len(reasoner_ids), new)], 1
    )
    reasoner_positions = (reasoner_prompt_mask.cumsum(-1) - 1).clamp_min(0)
    length = reasoner_ids.shape[1]
    call.runner.setup(call.reasoner, reasoner_mask, length + new, length)
    state.reasoner_shift = reasoner_positions[:, -1:] - positions[:, -1:]
    return context_prefill(
        call.generator,
        call.runner,
        call.input_ids,
        positions,
        state.mask,
        state.cache,
        call.settings.prefill_chunk,
        reasoner_ids,
        reasoner_positions,
        reasoner_mask,
    )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def open_call(
    model,
    input_ids,
    attention_mask,
    options: DecodeOptions,
    streaming: bool,
    reasoner_input_ids=None,
    reasoner_attention_mask=None,
) -> Call:
    """Check everything, resolve the settings, build the sides and the runner (before any compute)."""
    vocab = min(
        model.config.get_text_config().vocab_size, model.config.reasoner_config.get_text_config().vocab_size
    )
    mask = check_inputs(input_ids, attention_mask, vocab)
    if model.training:
        warnings.warn("model is in training mode (dropout active); call model.eval() first", stacklevel=4)
    settings = resolve_settings(model, input_ids, options, streaming)
    reasoner_prompt = check_reasoner_prompt(
        model, mask, reasoner_input_ids, reasoner_attention_mask, settings.max_new_tokens
    )
    if reasoner_prompt is not None:
        check_context_settings(settings)
    runner, settings = make_runner(settings, model, options.schedule)
    if reasoner_prompt is not None:
        check_context_settings(settings)  # concurrent may have fallen back to threads
    generator = GeneratorSide(model)
    if settings.compile is not None:
        step = torch.compile(generator.step, mode=settings.compile, dynamic=False)
    else:  # the runner computes the logits (a worker process may take some of the head's rows)
        step = functools.partial(generator.step, head=runner.logits)
    device = torch.device(settings.generator_device)
    return Call(
        settings=settings,
        input_ids=input_ids.to(device),
        prompt_mask=mask.to(device),
        generator=generator,
        reasoner=ReasonerSide(model.reasoner, model.fusion),
        step=step,
        runner=runner,
        selector=TokenSelector(settings.sampling, input_ids.shape[0], device, options.logits_processor),
        transcript=Transcript(input_ids.shape[0], settings, device, options.tokenizer),
        streamer=options.streamer,
        reasoner_prompt=None if reasoner_prompt is None else tuple(t.to(device) for t in reasoner_prompt),
    )


def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    reasoner_input_ids: torch.Tensor | None = None,
    reasoner_attention_mask: torch.Tensor | None = None,
    **options,
) -> GenerationOutput:
    """Decode with a :class:`~flythinker.FlyThinkerForCausalLM`, reasoner and generator concurrently.

    Args:
        model: a FlyThinker model (eval mode). Put ``model.reasoner`` on another device for ``two-device``.
        input_ids, attention_mask: [B, T0] left-padded prompts (every row needs ≥ 1 real token).
        reasoner_input_ids, reasoner_attention_mask: [B, T_R] the reasoner's own left-padded prompts, for a
            ``FlyThinkerConfig(reasoner_context=True)`` model only (required there; schedules ``sequential``
            and ``processes``, no ``compile``); see ``decoding/context.py``.
        schedule: ``"concurrent"`` (the default: ``cuda-streams`` on one GPU, ``two-device`` when R and
            G sit on different devices, a worker process on CPU — ``threads`` where one cannot start),
            or explicitly ``"sequential"`` (the reference), ``"threads"``, ``"processes"``,
            ``"cuda-streams"``, ``"two-device"``.
        max_new_tokens: required (here or in ``generation_config``).
        do_sample, temperature, top_k, top_p, min_p, repetition_penalty, seed: token selection; unset
            options are off (greedy by default). ``generation_config`` (a transformers
            ``GenerationConfig``) fills what is not given explicitly; ``logits_processor`` (a
            ``LogitsProcessorList``) runs after the repetition penalty.
        eos_token_id, pad_token_id: explicit, else from ``generation_config``, else from ``tokenizer``.
        tokenizer: decodes ``texts`` and stop strings. stop_strings: a row stops at the token completing one.
        streamer: a transformers streamer (``put``/``end``), fed every step.
        prefill_chunk: prompt chunk length for the pipelined prefill (default: the whole prompt for
            ``sequential`` and ``processes``, where each side prefills alone with every core; else 256).
        check_every: host reads finish flags and checks stop strings every k steps (default 8; no per-token sync).
        shrink_finished: drop finished rows from both models' batches at those checks (default True).
        threads: (generator, reasoner) CPU threads for the processes/threads schedules (default: split cores).
        compile: ``torch.compile`` the one-token steps (True = ``reduce-overhead`` on CUDA, or a mode name).
        share_head: ``processes`` without compile: once its reasoner step is done, the worker computes
            a balanced share of the generator's LM-head rows (default True; the logits are the whole
            head's bit for bit, see ``decoding/head_split.py``). False keeps the whole head in the caller.

    The defaults are those of :class:`~flythinker.decoding.settings.DecodeOptions`; every value is checked.

    Returns:
        :class:`GenerationOutput` with sequences, per-row lengths/finish reasons, texts (with a
        tokenizer), the effective :class:`DecodingSettings` and :class:`Timings`.
    """
    call = open_call(
        model,
        input_ids,
        attention_mask,
        DecodeOptions.from_kwargs("generate", options),
        streaming=False,
        reasoner_input_ids=reasoner_input_ids,
        reasoner_attention_mask=reasoner_attention_mask,
    )
    for _ in run(call):
        pass
    return call.output


class TextStream:
    """Iterator of text pieces as they are generated; ``.output`` holds the result afterwards.

    Batch 1 yields ``str`` pieces; a batch yields ``list[str]`` (one piece per row, "" when nothing new).
    A piece is emitted once its bytes decode cleanly (no dangling partial UTF-8 character).
    """

    def __init__(self, call: Call):
        self.call = call
        self.output: GenerationOutput | None = None

    def __iter__(self) -> Iterator[str | list[str]]:
        transcript, batch = self.call.transcript, self.call.input_ids.shape[0]
        sent = [0] * batch
        for step in run(self.call):
            pieces = []
            for r in range(batch):
                text = transcript.text(r, upto=step + 1)
                if text.endswith("\ufffd"):
                    pieces.append("")
                    continue
                pieces.append(text[sent[r] :])
                sent[r] = max(sent[r], len(text))
            if batch > 1:
                yield pieces
            elif pieces[0]:
                yield pieces[0]
        self.output = self.call.output


def stream(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    reasoner_input_ids: torch.Tensor | None = None,
    reasoner_attention_mask: torch.Tensor | None = None,
    **options,
) -> TextStream:
    """Like :func:`generate` (same options; ``tokenizer`` required) but an iterator of text pieces."""
    if options.get("tokenizer") is None:
        raise ValueError("stream() needs a tokenizer= to turn tokens into text")
    return TextStream(
        open_call(
            model,
            input_ids,
            attention_mask,
            DecodeOptions.from_kwargs("stream", options),
            streaming=True,
            reasoner_input_ids=reasoner_input_ids,
            reasoner_attention_mask=reasoner_attention_mask,
        )
    )


def _signature(base) -> inspect.Signature:
    """``base``'s positional parameters, then every option of :class:`DecodeOptions` with its default."""
    params = [p for p in inspect.signature(base).parameters.values() if p.kind != p.VAR_KEYWORD]
    defaults = DecodeOptions()
    params += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=getattr(defaults, name))
        for name in DecodeOptions.__dataclass_fields__
    ]
    return inspect.Signature(params, return_annotation=inspect.signature(base).return_annotation)


generate.__signature__ = _signature(generate)  # help() and IDEs show every option and its one default
stream.__signature__ = _signature(stream)
