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

    async def get(self) -> str | None:
        """Loop: everything produced since the last call, joined; None once closed and empty."""
        while True:
            self._ready.clear()
            with self._lock:
                self._pending = False
                if self._buffer:
                    chunk = "".join(self._buffer)
                    self._buffer.clear()
                    return chunk
                if self._closed:
                    return None
            await self._ready.wait()
