"""Where a job's generation runs: a worker thread pulling its pieces (ctransformers, and any
generation that scores its prompt), or its batching engine's step thread (llama.cpp: no worker
thread between that thread and the event loop). Either way the job's future ends with it."""

from __future__ import annotations

import asyncio
from typing import Callable

from service.engine.generation import Generation
from service.errors import GenerationFailed, ServiceError
from service.runtime.pieces import Pieces


def on_worker_thread(gen: Generation, out: Pieces, loop: asyncio.AbstractEventLoop) -> None:
    """Worker thread: pull pieces from the blocking generator and hand them to the loop; the
    second token is asked for once the first piece is out (runtime/pieces.py)."""
    try:
        first = True
        for piece in gen:
            if first:
                out.put_and_wait(piece, loop)
                first = False
            else:
                out.put(piece, loop)
    except ServiceError:
        raise
    except Exception as exc:
        raise failure_of(exc) from exc


def on_step_thread(drive: Callable[..., None], gen: Generation, out: Pieces,
                   loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    """Hand `gen` to its engine's step thread (its slot's drive, engine/step_run.py), from the
    loop: its prompt is queued now; the future ends with the generation."""
    ended: asyncio.Future[None] = loop.create_future()

    def settle(failure: BaseException | None) -> None:
        if ended.done():  # the job's task was cancelled meanwhile
            return
        if failure is None:
            ended.set_result(None)
        else:
            ended.set_exception(failure_of(failure))

    def emit(piece: str, then: Callable[[], None] | None = None) -> None:
        out.put(piece, loop, then)

    drive(gen, emit, lambda failure: loop.call_soon_threadsafe(settle, failure))
    return ended


def failure_of(exc: BaseException) -> BaseException:
    """What a generation's failure ends its job with: a ServiceError as it is, else the reason
    (callers add context)."""
    if isinstance(exc, ServiceError) or not isinstance(exc, Exception):
        return exc
    return GenerationFailed(f"{type(exc).__name__}: {exc}")
