"""One generation run by a batching engine's step thread (llama.cpp's), from its prompt to its end.

The request's thread starts it (the scheduler, on the event loop, at admission) and is not woken
again. Each step's callback runs on the step thread: it queues the prompt's next chunk, or picks
the next token, turns it into text and hands the piece on (Generation's own steps: the same
sampler, stop strings, UTF-8 and limits as the calling-thread loop), then queues the next step;
as llama-server's loop samples and sends in one place. Measured: no worker thread between the
step thread and the event loop takes two thread hand-overs off each first token (README, the
llama.cpp engine). A generation that scores its prompt (prompt_logprobs) runs on a worker thread.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from service.errors import GenerationFailed

# emit(piece, then): hand a piece of text on; `then`, if given, is called once it has been sent
# (or soon after, if the reader is slow; at once if no one reads): the next step waits for it
Emit = Callable[[str, "Callable[[], None] | None"], None]
Done = Callable[["BaseException | None"], None]  # the run has ended: None, or why it failed


class GenerationSteps(Protocol):
    """What a run needs of its generation (engine/generation.py's Generation: its steps)."""

    params: Any  # its SamplingParams
    finish_reason: str | None
    cancel: threading.Event

    def open(self) -> int: ...
    def next_chunk(self, n_past: int) -> list[int] | None: ...
    def evaluated(self, n_past: int, chunk: list[int]) -> int: ...
    def prompt_logits(self, given: np.ndarray | None = None) -> np.ndarray: ...
    def keep_prompt(self, logits: np.ndarray) -> None: ...
    def pick(self, logits: np.ndarray) -> int: ...
    def accept(self, token: int) -> tuple[str, bool]: ...
    def close(self) -> None: ...


class Slot(Protocol):
    """What a run needs of its sequence slot (llama.cpp's LlamaSlot)."""

    # queue(slot, tokens, n_past, then): decode the tokens in a coming step; then(logits) on the
    # step thread with a view of their logits valid during the call, or None if the decode failed
    context: Any


class StepRun:
    """A generation driven by its engine's step callbacks; `done` is called exactly once."""

    def __init__(self, slot: Slot, gen: GenerationSteps, emit: Emit, done: Done) -> None:
        self.slot, self.gen, self.emit, self._done = slot, gen, emit, done
        self.n_past = 0
        self._chunk: list[int] = []
        self._token = -1  # the last token taken, whose step comes next
        self._opened = False
        self._ended = False

    def start(self) -> None:
        """On the caller's thread: open the generation and queue its prompt (or take its first
        token at once, when the whole prompt is reused)."""
        self._guard(self._start)

    def _start(self) -> None:
        self.n_past = self.gen.open()
        self._opened = True
        self._prompt()

    def _prompt(self, given: np.ndarray | None = None) -> None:
        """Queue the prompt's next chunk; once it is all in, take the first token (from `given`:
        the last chunk's logits, when this runs in its step's callback)."""
        chunk = self.gen.next_chunk(self.n_past)
        if chunk is not None:
            self._chunk = chunk
            self.slot.context.queue(self.slot, chunk, self.n_past, self._evaluated)
            return
        if self.gen.finish_reason is not None:  # interrupted during the prompt
            self._end()
            return
        logits = self.gen.prompt_logits(given)
        if self.gen.params.max_new_tokens <= 0:
            self.gen.keep_prompt(logits)
            self.gen.finish_reason = "length"
            self._end()
            return
        self._take(logits, first=True)

    def _evaluated(self, logits: np.ndarray | None) -> None:
        """Step thread: a prompt chunk was decoded (its logits, valid during this call) or not (None)."""
        self._guard(self._after_chunk, logits)

    def _after_chunk(self, logits: np.ndarray | None) -> None:
        if logits is None:
            raise GenerationFailed("llama.cpp failed to decode the batch")
        self.n_past = self.gen.evaluated(self.n_past, self._chunk)
        self._prompt(logits)

    def _take(self, logits: np.ndarray, first: bool) -> None:
        """Pick a token, hand its text on and queue its step, unless the generation ends here."""
        token = self.gen.pick(logits)
        piece, more = self.gen.accept(token)
        self._token = token
        # the first token's step is queued once its piece is out: the step's threads would take
        # the cores the piece needs on its way to the client (the time a client waits for)
        then = self._next if more and first and piece else None
        if piece:
            self.emit(piece, then)
        if first:  # the copy kept for the same prompt again, once the first piece is on its way
            self.gen.keep_prompt(logits)
        if not more:
            self._end()
        elif then is None:
            self._next()

    def _next(self) -> None:
        """Queue the step of the last token taken (on the step thread, or the loop's after a first piece)."""
        self._guard(self.slot.context.queue, self.slot, [self._token], self.n_past, self._stepped)

    def _stepped(self, logits: np.ndarray | None) -> None:
        """Step thread: the last token was decoded (its logits, valid during this call) or not
        (None): take the next one."""
        self._guard(self._after_step, logits)

    def _after_step(self, logits: np.ndarray | None) -> None:
        if logits is None:
            raise GenerationFailed("llama.cpp failed to decode the batch")
        self.n_past += 1
        self._take(logits, first=False)

    def _guard(self, step: Callable[..., None], *args: Any) -> None:
        """Run one step of the run; anything it raises ends the run with that failure."""
        try:
            step(*args)
        except BaseException as exc:  # the step thread goes on with the other sequences
            self._end(exc)

    def _end(self, failure: BaseException | None = None) -> None:
        """Hand on what the slot holds and tell the scheduler, once."""
        if self._ended:
            return
        self._ended = True
        try:
            if self._opened:
                self.gen.close()
        except BaseException as exc:
            failure = failure or exc
        try:
            self._done(failure)
        except BaseException:  # nothing is left to tell it to (the event loop has closed)
            pass


def driven_pieces(gen: GenerationSteps, drive: Callable[[GenerationSteps, Emit, Done], None]) -> Iterator[str]:
    """The pieces of `gen` run by a batching engine's step thread (its slot's drive), for a caller
    that iterates them; the step after a first piece is queued when the next piece is asked for."""
    out: queue.SimpleQueue[tuple[str, Callable[[], None] | None] | BaseException | None] = queue.SimpleQueue()
    drive(gen, lambda piece, then=None: out.put((piece, then)), out.put)
    then = None
    try:
        while (item := out.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            piece, then = item
            yield piece
            if then is not None:
                then, go_on = None, then
                go_on()
    finally:
        if item is not None and not isinstance(item, BaseException):  # the caller stopped early
            gen.cancel.set()
            if then is not None:
                then()
            while (item := out.get()) is not None and not isinstance(item, BaseException):
                pass
