"""Text pieces handed from a generation's worker thread to the event loop.

One wake-up of the loop per piece while the reader keeps up (so each token is sent as soon as it
exists), none for pieces that arrive while a wake-up is already pending: a reader slower than
the model gets what piled up as one chunk, and the loop never works once per token behind it.
"""

from __future__ import annotations

import asyncio
import threading


class Pieces:
    """A one-producer (thread), one-consumer (loop) channel of text that coalesces when behind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer: list[str] = []
        self._pending = False  # a wake-up is scheduled or the reader has not looked yet
        self._closed = False
        self._ready = asyncio.Event()
        self._reading = False  # a reader has asked (a stream: no one reads a whole response's pieces)
        self._gave = False  # a chunk has been handed to the reader
        self._sent = threading.Event()  # the reader asked again after a chunk: that chunk went out

    def put(self, piece: str, loop: asyncio.AbstractEventLoop) -> None:
        """Worker thread: add a piece; wake the loop only if no wake-up is pending."""
        with self._lock:
            self._buffer.append(piece)
            if self._pending:
                return
            self._pending = True
        loop.call_soon_threadsafe(self._ready.set)

    def close(self) -> None:
        """Loop: no more pieces; the reader gets what is left, then None."""
        with self._lock:
            self._closed = True
        self._ready.set()

    def wait_sent(self, timeout: float) -> None:
        """Worker thread: until the reader has sent the chunk it took (at most `timeout` s); at once
        when no one reads."""
        if self._reading:
            self._sent.wait(timeout)

    async def get(self) -> str | None:
        """Loop: everything produced since the last call, joined; None once closed and empty."""
        self._reading = True
        if self._gave:
            self._sent.set()
        while True:
            self._ready.clear()
            with self._lock:
                self._pending = False
                if self._buffer:
                    chunk = "".join(self._buffer)
                    self._buffer.clear()
                    self._gave = True
                    return chunk
                if self._closed:
                    return None
            await self._ready.wait()
