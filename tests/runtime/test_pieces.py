"""Pieces between a generation's thread and the event loop: the producer can wait until the reader
has sent the first piece (so the next decode does not take the cores it needs), never longer than
FIRST_PIECE_WAIT_S, and never waits without a reader."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.runtime import pieces as pieces_module
from service.runtime.pieces import Pieces


def test_the_worker_waits_until_the_reader_asks_again_after_the_first_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pieces_module, "FIRST_PIECE_WAIT_S", 10.0)
    events: list[str] = []

    async def main() -> list[str]:
        pieces = Pieces()
        loop = asyncio.get_running_loop()

        def worker() -> None:
            pieces.put_and_wait("Hello", loop)
            events.append("worker goes on")
            pieces.put(" world", loop)

        reading = asyncio.ensure_future(pieces.get())  # the reader waits before anything is produced
        await asyncio.sleep(0)
        thread = threading.Thread(target=worker)
        thread.start()
        events.append(f"got {await reading!r}")
        await asyncio.sleep(0.2)  # the reader is still sending: the worker must not go on
        events.append("asks again")
        events.append(f"got {await pieces.get()!r}")
        await asyncio.to_thread(thread.join, 10)
        return events

    assert asyncio.run(main()) == ["got 'Hello'", "asks again", "worker goes on", "got ' world'"]


def test_a_slow_reader_holds_the_producer_only_for_the_first_piece_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """The step thread's form: `then` runs on the loop once, after FIRST_PIECE_WAIT_S when the
    reader does not come back, and not again when it does."""
    monkeypatch.setattr(pieces_module, "FIRST_PIECE_WAIT_S", 0.05)
    calls: list[tuple[str, float]] = []

    async def main() -> None:
        pieces = Pieces()
        loop = asyncio.get_running_loop()
        reading = asyncio.ensure_future(pieces.get())
        await asyncio.sleep(0)
        t0 = time.monotonic()
        then = lambda: calls.append((threading.current_thread().name, time.monotonic() - t0))  # noqa: E731
        threading.Thread(target=pieces.put, args=("Hello", loop, then), name="producer").start()
        assert await reading == "Hello"
        await asyncio.sleep(1.0)  # the reader takes long to send it
        pieces.put(" world", loop)
        assert await pieces.get() == " world"  # asking again does not call `then` a second time
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert len(calls) == 1
    thread, after = calls[0]
    assert thread == threading.main_thread().name  # on the loop, not the producer's thread
    assert 0.04 < after < 0.9


def test_without_a_reader_the_worker_does_not_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole-response job's pieces are never read: its worker goes on at once, not after the wait."""
    monkeypatch.setattr(pieces_module, "FIRST_PIECE_WAIT_S", 10.0)

    async def main() -> float:
        pieces = Pieces()
        loop = asyncio.get_running_loop()

        def worker() -> float:
            t0 = time.monotonic()
            pieces.put_and_wait("Hello", loop)
            return time.monotonic() - t0

        return await asyncio.to_thread(worker)

    assert asyncio.run(main()) < 5
