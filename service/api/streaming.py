"""Ending a streamed response so that the client can tell it did not succeed.

Once the headers are out, the status can no longer say that a generation failed or was cut
short. A plain-text stream then ends without its final chunk: the connection closes at a chunk
boundary and curl and HTTP clients report an incomplete body. StreamAborted, raised by a body
iterator, does that; the reason goes to the server's log instead of a traceback.
"""

from __future__ import annotations

import logging

from litestar.types import ASGIApp, Receive, Scope, Send

from service.api.request_id import request_id

log = logging.getLogger("minivault")
_INCOMPLETE = "ASGI callable returned without completing response."


class StreamAborted(Exception):
    """Raised by a body iterator after the headers are out: end the response abnormally."""


def abortable_streams(app: ASGIApp) -> ASGIApp:
    """Middleware: a StreamAborted from the response leaves it incomplete, with one log line."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await app(scope, receive, send)
        except Exception as exc:
            aborted = _find_abort(exc)
            if aborted is None:
                raise
            log.warning("request %s: stream ended abnormally: %s", request_id(scope), aborted)

    return middleware


def _find_abort(exc: BaseException | None, depth: int = 0) -> StreamAborted | None:
    """The StreamAborted behind `exc`: Litestar re-raises it as "caught after response started",
    from inside the task group (an ExceptionGroup) that streams the body."""
    if exc is None or depth > 8:
        return None
    if isinstance(exc, StreamAborted):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        if found := _find_abort(inner, depth + 1):
            return found
    return _find_abort(exc.__cause__ or exc.__context__, depth + 1)


class _IncompleteIsIntended(logging.Filter):
    """uvicorn reports every incomplete response as an error; an aborted stream is one on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _INCOMPLETE


def quiet_uvicorn_about_aborted_streams() -> None:
    """Install the filter on uvicorn's error logger (once)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _IncompleteIsIntended) for f in logger.filters):
        logger.addFilter(_IncompleteIsIntended())
