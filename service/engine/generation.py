"""One generation on a backend: prompt evaluation, sampling, stop strings, UTF-8-safe pieces."""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterator

import numpy as np

from service.engine.base import Backend, TokenRun
from service.engine.prefix import LastPrompt, held, last_prompt, reusable
from service.engine.sampling import Sampler, SamplingParams, TokenLogprob
from service.engine.scoring import score_prompt
from service.engine.step_run import driven_pieces
from service.engine.textstream import TextStream
from service.errors import ContextOverflow

# ctransformers' prompt tokens per call; cancellation is checked between calls. The wheel's library
# aborts the process above a limit that depends on the model's shape and the context filled so
# far (tests/benchmarks/probe_prompt_batch.py finds it): 32 is the measured choice, see the README.
PROMPT_BATCH = 32


class Generation:
    """One running generation: iterate it for text pieces; then read why it ended."""

    def __init__(self, engine: Backend, prompt_ids: list[int], params: SamplingParams,
                 cancel: threading.Event | None, deadline: float | None, cache_prompt: bool = True,
                 exact: bool = True) -> None:
        self.engine = engine
        self.prompt_ids = prompt_ids
        self.params = params
        self.sampler = Sampler(params, prompt_len=len(prompt_ids))
        self.prompt_logprobs: list[TokenLogprob | None] | None = None  # with params.prompt_logprobs
        self.cancel = cancel or threading.Event()
        self.deadline = deadline
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.started_at = time.monotonic()
        self.prompt_done_at: float | None = None  # the prompt's logits are ready
        cache_prompt = cache_prompt and params.prompt_logprobs is None  # scoring evaluates every position
        self._again = last_prompt(engine, prompt_ids) if cache_prompt else None  # the very same prompt
        self.exact = exact  # reuse only what gives a fresh evaluation's bits, else to the token (engine/prefix.py)
        self.cached_tokens = reusable(engine, prompt_ids, exact) if cache_prompt else 0
        self.prompt_evaluated = 0  # prompt tokens evaluated so far (past the cached ones)
        self._held = list(prompt_ids[: self.cached_tokens])
        if self._again is not None:
            self.cached_tokens = len(prompt_ids)
            # exact: unchanged, the KV state is kept whole; to the token: the prompt, then this reply
            self._held = list(held(engine)) if exact else list(prompt_ids)
        self._text = TextStream(tuple(params.stop))
        self._tokens: TokenRun | None = None  # the engine's sampled tokens, once decoding starts
        self._history: list[int] = []  # prompt and sampled tokens, for the sampler's penalties

    @property
    def text(self) -> str:
        """The text emitted so far."""
        return self._text.text

    def _interrupted(self) -> str | None:
        if self.cancel.is_set():
            return "cancelled"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "timeout"
        return None

    def timings(self) -> dict[str, float | None]:
        """prompt_ms, prompt_tokens_per_second (evaluated tokens only), decode_ms, decode tokens/s."""
        prompt_s = (self.prompt_done_at - self.started_at) if self.prompt_done_at else None
        end = self.last_token_at or self.prompt_done_at
        decode_s = (end - self.prompt_done_at) if self.prompt_done_at and end else 0.0
        return {
            "prompt_ms": round(prompt_s * 1000, 3) if prompt_s is not None else None,
            "prompt_tokens_per_second": round(self.prompt_evaluated / prompt_s, 3) if prompt_s else None,
            "decode_ms": round(decode_s * 1000, 3),
            "decode_tokens_per_second": round(len(self.tokens) / decode_s, 3) if decode_s > 0 else 0.0,
        }

    @property
    def step_driver(self) -> Callable[..., None] | None:
        """The engine's drive if this generation runs on its step thread (a batching engine's slot;
        one that scores its prompt evaluates it position by position on the calling thread)."""
        drive = getattr(self.engine, "drive", None)
        return drive if self.params.prompt_logprobs is None else None

    def __iter__(self) -> Iterator[str]:
        if (drive := self.step_driver) is not None:
            yield from driven_pieces(self, drive)  # as the server runs it: on the engine's step thread
            return
        n_past = self.open()
        try:
            yield from self._run(n_past)
        finally:
            self.close()

    # --- the steps of a generation, shared by the calling thread's loop (_run) and a batching
    # engine's step thread (engine/step_run.py), so both behave alike ---------------------------
    def open(self) -> int:
        """The generation starts on its instance: the positions already held (n_past)."""
        eng = self.engine
        eng.begin()
        self.started_at = time.monotonic()
        if self._again is None:
            eng.last_prompt = None  # its KV state is about to be overwritten
            return len(self._held)
        return len(self.prompt_ids)

    def next_chunk(self, n_past: int) -> list[int] | None:
        """The prompt tokens for the next eval call at n_past; None once the prompt is in, or
        when the generation was interrupted (its finish_reason says why)."""
        if n_past >= len(self.prompt_ids):
            return None
        if reason := self._interrupted():
            self.finish_reason = reason
            return None
        return self.prompt_ids[n_past : n_past + self.engine.chunks.size(n_past, len(self.prompt_ids))]

    def evaluated(self, n_past: int, chunk: list[int]) -> int:
        """`chunk` was evaluated at n_past: the positions held now."""
        n_past += len(chunk)
        self.prompt_evaluated += len(chunk)
        # exact: only what a later prompt's fresh evaluation would compute with the same bits
        self._held = self.prompt_ids[: self.engine.chunks.kept(n_past, len(self.prompt_ids)) if self.exact else n_past]
        return n_past

    def prompt_logits(self, given: np.ndarray | None = None) -> np.ndarray:
        """The logits after the whole prompt, for the first token: `given` (the engine's step handed
        them over) or the engine's own (the sampler never changes them)."""
        self.prompt_done_at = time.monotonic()
        self._history = list(self.prompt_ids)
        if self._again is not None:
            return self._again.logits.copy()
        return given if given is not None else self.engine.logits()

    def keep_prompt(self, logits: np.ndarray, scored: bool = False) -> None:
        """Keep a copy of the prompt's logits for the same prompt again (before its next step)."""
        if self._again is None:
            # one token per call computes other bits than batches do: such logits are not offered again
            self.engine.last_prompt = None if scored else LastPrompt(self.prompt_ids, logits.copy())

    def pick(self, logits: np.ndarray) -> int:
        """Sample the next token (the engine calls it: on this thread or on its step thread)."""
        token = self.sampler(logits, self._history)
        self._history.append(token)
        return token

    def accept(self, token: int) -> tuple[str, bool]:
        """A sampled token: the text to send now (maybe ''), and whether the generation goes on.

        It ends at end-of-text, a stop string, an interruption (the token is dropped: it may have
        been sampled after the generation was cancelled) or max_new_tokens; its finish_reason is
        then set and the text includes what was held back (all but after a stop string).
        """
        if reason := self._interrupted():
            self.finish_reason = reason
            return self._text.finish(), False
        if token == self.engine.eos_id:
            self.finish_reason = "stop"
            return self._text.finish(), False
        self.tokens.append(token)
        self.last_token_at = time.monotonic()
        if self.first_token_at is None:
            self.first_token_at = self.last_token_at
        piece = self._text.feed(self.engine.tokenizer.token_bytes(token))
        if self._text.stopped:
            self.finish_reason = "stop"
            return piece, False
        if len(self.tokens) >= self.params.max_new_tokens:
            self.finish_reason = "length"
            return piece + self._text.finish(), False
        return piece, True

    def close(self) -> None:
        """The generation has ended: what the instance holds is handed on (see engine/prefix.py)."""
        try:
            if self._tokens is not None:  # a step under way ends before the state is handed on
                self._tokens.close()
        finally:
            # what the next request may reuse (see engine/prefix.py); to the token, the reply too:
            # every token but the last was evaluated after the prompt (the last never is)
            whole = not self.exact and len(self._held) == len(self.prompt_ids)
            self.engine.sequence = self._held + self.tokens[:-1] if whole else self._held
            self.engine.end(self.finish_reason)

    def _run(self, n_past: int) -> Iterator[str]:
        eng = self.engine
        scored = self.params.prompt_logprobs is not None
        if scored:  # scoring evaluates the prompt itself, position by position (reuse is off for it)
            self.prompt_logprobs, reason = score_prompt(eng, self.prompt_ids, self.params.prompt_logprobs,
                                                        self._interrupted)
            if reason:
                self.finish_reason = reason
                return
            n_past = self.prompt_evaluated = len(self.prompt_ids)
        while (chunk := self.next_chunk(n_past)) is not None:
            eng.eval(chunk, n_past)
            n_past = self.evaluated(n_past, chunk)
        if self.finish_reason is not None:  # interrupted during the prompt
            return
        logits = self.prompt_logits()
        self.keep_prompt(logits, scored)
        if self.params.max_new_tokens <= 0:
            self.finish_reason = "length"
            return
        # the engine may sample ahead on its own thread: a token that arrives after the generation
        # has stopped (cancelled, a stop string) is dropped and never becomes part of its text
        self._tokens = eng.decode(logits, self.pick, n_past, self.params.max_new_tokens)
        for token in self._tokens:
            piece, more = self.accept(token)
            if piece:
                yield piece
            if not more:
                return
        self.finish_reason = "length"  # the engine stopped sampling (at its limit)
        if tail := self._text.finish():
            yield tail


def check_fits(context_length: int, prompt_tokens: int, max_new_tokens: int) -> None:
    """Raise ContextOverflow unless prompt + new tokens fit a context of `context_length`."""
    if prompt_tokens + max_new_tokens > context_length:
        left = context_length - prompt_tokens
        raise ContextOverflow(
            f"prompt has {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}: "
            f"together {prompt_tokens + max_new_tokens}, over the model's context of {context_length} "
            + (f"(at most {left} new tokens fit)" if left > 0 else "(the prompt alone does not fit)"),
            field="max_new_tokens" if left > 0 else "prompt",
        )


def start_generation(backend: Backend, prompt_ids: list[int], params: SamplingParams, *,
                     cancel: threading.Event | None = None, deadline: float | None = None,
                     cache_prompt: bool = True, exact: bool = True) -> Generation:
    """Check the limits and return a generation to iterate (in a worker thread); with
    cache_prompt, the prefix the instance already holds is not evaluated again (exact: only as
    far as its `chunks` allow, so the results are bit for bit those without reuse)."""
    if not prompt_ids:
        raise ContextOverflow("the prompt has no tokens", field="prompt")
    check_fits(backend.context_length, len(prompt_ids), params.max_new_tokens)
    return Generation(backend, prompt_ids, params, cancel, deadline, cache_prompt, exact)


class Generates:
    """check_fits and generate for a Backend (ctransformers' instances, llama.cpp's slots)."""

    context_length: int

    def decode(self, logits: np.ndarray, pick: Callable[[np.ndarray], int], n_past: int,
               limit: int) -> Iterator[int]:
        """Tokens picked and evaluated on the calling thread, each handed out before it is
        evaluated (so its piece goes out first); closing the generator stops it between steps."""
        for i in range(limit):
            token = pick(logits)
            yield token
            if token == self.eos_id or i + 1 == limit:  # type: ignore[attr-defined] - every Backend has them
                return
            self.eval([token], n_past)  # type: ignore[attr-defined]
            n_past += 1
            logits = self.logits()  # type: ignore[attr-defined]

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """Raise ContextOverflow unless prompt + new tokens fit the context."""
        check_fits(self.context_length, prompt_tokens, max_new_tokens)

    def generate(self, prompt_ids: list[int], params: SamplingParams, *,
                 cancel: threading.Event | None = None, deadline: float | None = None,
                 cache_prompt: bool = True, exact: bool = True) -> Generation:
        """A generation to iterate (in a worker thread) for text pieces as tokens are sampled."""
        return start_generation(self, prompt_ids, params, cancel=cancel, deadline=deadline,
                                cache_prompt=cache_prompt, exact=exact)
