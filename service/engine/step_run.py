"""One generation's tokens on a batching engine, sampled on its step thread (llama.cpp's)."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Protocol

import numpy as np

from service.errors import GenerationFailed


class Slot(Protocol):
    """What a run needs of its sequence slot (llama.cpp's LlamaSlot)."""

    eos_id: int
    context: Any  # queues a step (follow(run, token, n_past) -> bool) and ends a run (stop(run))

    def logits(self) -> np.ndarray: ...


class StepRun:
    """One generation's tokens, sampled on the step thread: as a step ends, its logits are picked
    from and the token queued for the next step at once, as llama-server samples in its own loop,
    instead of waking the request's thread and waiting for it to hand the token back. The
    request's thread only turns tokens into text; it reads them from a queue. The slot's
    context queues each step (follow) and ends the run (stop) under its own lock.
    """

    def __init__(self, slot: Slot, logits: np.ndarray, pick: Callable[[np.ndarray], int],
                 n_past: int, limit: int) -> None:
        self.slot, self.pick, self.n_past, self.left = slot, pick, n_past, limit
        self._first: np.ndarray | None = logits
        self._held: int | None = None  # the first token, its step queued on the next call (see __next__)
        self._out: queue.SimpleQueue[int | BaseException | None] = queue.SimpleQueue()
        self.stopped = False  # set under the context's lock: no step is queued after it
        self.idle = threading.Event()  # no step of this run queued or under way
        self.idle.set()

    def __iter__(self) -> "StepRun":
        return self

    def __next__(self) -> int:
        if self._first is not None:  # the prompt's logits: the first token is picked here
            logits, self._first = self._first, None
            if self.left <= 0:
                raise StopIteration
            token, more = self._take(logits)
            if more:
                self._held = token
            else:
                self._out.put(None)
            return token
        if self._held is not None:
            # the first token's step is queued only now, when the caller asks for the next token:
            # its piece is out first, so the step's threads do not take the cores the first piece
            # needs on its way to the client (the first token's time is what a client waits for)
            token, self._held = self._held, None
            if not self._follow(token):
                raise StopIteration
        item = self._out.get()
        if item is None:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def _take(self, logits: np.ndarray) -> tuple[int, bool]:
        """Pick a token at n_past and move past it: (the token, whether a step should follow it)."""
        token = self.pick(logits)
        self.left -= 1
        self.n_past += 1
        return token, token != self.slot.eos_id and self.left > 0

    def _follow(self, token: int) -> bool:
        """Queue the step of `token` (the last one taken), unless the run was stopped."""
        return self.slot.context.follow(self, token, self.n_past - 1)

    def stepped(self, ok: bool) -> None:
        """Step thread: the last token was decoded (ok) or not; pick the next one and go on."""
        again = False
        try:
            if self.stopped:
                return
            if not ok:
                raise GenerationFailed("llama.cpp failed to decode the batch")
            token, more = self._take(self.slot.logits())
            again = more and self._follow(token)
            self._out.put(token)
            if not again:
                self._out.put(None)
        except BaseException as exc:  # the request's thread raises it
            self._out.put(exc)
        finally:
            if not again:
                self.idle.set()

    def close(self) -> None:
        """Stop queuing steps and wait for one under way (a generation ends before its state is used)."""
        self.slot.context.stop(self)
