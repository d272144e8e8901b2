"""Text pieces handed from a generation's thread (a worker, or a batching engine's step thread)
to the event loop.

One wake-up of the loop per piece while the reader keeps up (so each token is sent as soon as it
exists), none for pieces that arrive while a wake-up is already pending: a reader slower than
the model gets what piled up as one chunk, and the loop never works once per token behind it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Callable

# How long a generation waits, after its first piece, for the event loop to send it before it goes
# on. The engine's threads take every core while they decode; measured on 2 cores, the event loop
# then got the first piece out 0.1 ms after it was produced when requests came back to back, but
# 2.3 ms after when the server had been idle for 50 ms (the client's wait for its first token).
FIRST_PIECE_WAIT_S = 0.02


class Pieces:
    """A one-producer (thread), one-consumer (loop) channel of text that coalesces when behind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer: list[str] = []
        self._pending = False  # a wake-up is scheduled or the reader has not looked yet
        self._closed = False
        self._ready = asyncio.Event()
        self._reading = False  # a reader has asked (a stream: no one reads a whole response's pieces)
        self._then: Callable[[], None] | None = None  # called once the piece put with it is out
        self._then_given = False  # the chunk holding that piece has been handed to the reader
        self._timer: asyncio.TimerHandle | None = None

    def put(self, piece: str, loop: asyncio.AbstractEventLoop, then: Callable[[], None] | None = None) -> None:
        """Producer's thread: add a piece; wake the loop only if no wake-up is pending. `then` is
        called once the reader has sent the piece, or FIRST_PIECE_WAIT_S after it was handed over
        (on the loop), or at once here when no one reads."""
        with self._lock:
            self._buffer.append(piece)
            if then is not None and self._reading:
                self._then, then = then, None
                self._then_given = False
                wake = True  # the wake-up starts the timer, even when one is already pending
            else:
                wake = not self._pending
            self._pending = True
        if then is not None:
            then()
        if wake:
            loop.call_soon_threadsafe(self._wake, loop)

    def put_and_wait(self, piece: str, loop: asyncio.AbstractEventLoop) -> None:
        """Worker thread: put a piece and wait until it is out (see put's `then`)."""
        sent = threading.Event()
        self.put(piece, loop, sent.set)
        sent.wait(FIRST_PIECE_WAIT_S * 2)  # the loop's timer fires first; this only if the loop has stopped

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        self._ready.set()
        if self._then is not None and self._timer is None:
            self._timer = loop.call_later(FIRST_PIECE_WAIT_S, self._fire)

    def _fire(self) -> None:
        """Loop: the piece put with `then` is out (or has waited long enough): call it, once."""
        with self._lock:
            then, self._then, self._then_given = self._then, None, False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if then is not None:
            then()

    def close(self) -> None:
        """Loop: no more pieces; the reader gets what is left, then None."""
        with self._lock:
            self._closed = True
        self._ready.set()

    async def get(self) -> str | None:
        """Loop: everything produced since the last call, joined; None once closed and empty."""
        self._reading = True
        if self._then_given:  # the reader asked again: the chunk with the waited-for piece went out
            self._fire()
        while True:
            self._ready.clear()
            with self._lock:
                self._pending = False
                if self._buffer:
                    chunk = "".join(self._buffer)
                    self._buffer.clear()
                    self._then_given = self._then is not None
                    return chunk
                if self._closed:
                    return None
            await self._ready.wait()
