"""One generation on a backend: prompt evaluation, sampling, stop strings, UTF-8-safe pieces."""

from __future__ import annotations

import threading
import time
from typing import Iterator

from service.engine.base import Backend
from service.engine.sampling import Sampler, SamplingParams, TokenLogprob
from service.engine.scoring import score_prompt
from service.engine.textstream import TextStream
from service.errors import ContextOverflow

PROMPT_BATCH = 32  # prompt tokens evaluated per call: fast, and cancellation is checked between batches


class Generation:
    """One running generation: iterate it for text pieces; then read why it ended."""

    def __init__(self, engine: Backend, prompt_ids: list[int], params: SamplingParams,
                 cancel: threading.Event | None, deadline: float | None) -> None:
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
        self.started_at = time.monotonic()
        self._text = TextStream(tuple(params.stop))

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

    def __iter__(self) -> Iterator[str]:
        eng = self.engine
        n_past = 0
        if self.params.prompt_logprobs is not None:  # scoring evaluates the prompt itself
            self.prompt_logprobs, reason = score_prompt(eng, self.prompt_ids, self.params.prompt_logprobs,
                                                        self._interrupted)
            if reason:
                self.finish_reason = reason
                return
            n_past = len(self.prompt_ids)
        for start in range(n_past, len(self.prompt_ids), PROMPT_BATCH):
            if reason := self._interrupted():
                self.finish_reason = reason
                return
            batch = self.prompt_ids[start : start + PROMPT_BATCH]
            eng.eval(batch, n_past)
            n_past += len(batch)
        history = list(self.prompt_ids)
        for _ in range(self.params.max_new_tokens):
            if reason := self._interrupted():
                self.finish_reason = reason
                break
            token = self.sampler(eng.logits(), history)
            if token == eng.eos_id:
                self.finish_reason = "stop"
                break
            self.tokens.append(token)
            history.append(token)
            if self.first_token_at is None:
                self.first_token_at = time.monotonic()
            piece = self._text.feed(eng.tokenizer.token_bytes(token))
            if piece:
                yield piece
            if self._text.stopped:
                self.finish_reason = "stop"
                return
            if len(self.tokens) < self.params.max_new_tokens:
                eng.eval([token], n_past)
                n_past += 1
        else:
            self.finish_reason = "length"
        tail = self._text.finish()
        if tail:
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
                     cancel: threading.Event | None = None, deadline: float | None = None) -> Generation:
    """Check the limits and return a generation to iterate (in a worker thread)."""
    if not prompt_ids:
        raise ContextOverflow("the prompt has no tokens", field="prompt")
    check_fits(backend.context_length, len(prompt_ids), params.max_new_tokens)
    return Generation(backend, prompt_ids, params, cancel, deadline)
