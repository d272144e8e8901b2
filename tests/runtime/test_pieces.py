"""Pieces between a worker thread and the event loop: the worker can wait until the reader has sent
the first piece (so the next decode does not take the cores it needs), and never waits without one."""

from __future__ import annotations

import asyncio
import threading
import time

from service.runtime.pieces import Pieces


def test_the_worker_waits_until_the_reader_asks_again_after_the_first_piece() -> None:
    events: list[str] = []

    async def main() -> list[str]:
        pieces = Pieces()
        loop = asyncio.get_running_loop()

        def worker() -> None:
            pieces.put("Hello", loop)
            pieces.wait_sent(10)
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


def test_without_a_reader_the_worker_does_not_wait() -> None:
    """A whole-response job's pieces are never read: its worker goes on at once, not after the timeout."""

    async def main() -> float:
        pieces = Pieces()
        loop = asyncio.get_running_loop()

        def worker() -> float:
            t0 = time.monotonic()
            pieces.put("Hello", loop)
            pieces.wait_sent(30)
            return time.monotonic() - t0

        return await asyncio.to_thread(worker)

    assert asyncio.run(main()) < 10
