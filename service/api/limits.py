"""Concurrent-request limit: refuse at once past it, never the operations endpoints.

Workers are taken only after a body is read and validated, so a slow or hostile client holds a
connection, not a model; this limit bounds how many requests may be in flight at all. Past it a
request gets 503 `overloaded` with Retry-After before anything is read, while /health and
/metrics are always answered, so a flood never makes a load balancer think the replica is dead.
"""

from __future__ import annotations

import msgspec
from litestar.types import ASGIApp, Receive, Scope, Send

from service.api.families import error_for

EXEMPT = ("/health", "/metrics")
_encoder = msgspec.json.Encoder()


def request_limit(max_requests: int, retry_after_s: int):
    """Middleware factory: at most `max_requests` requests in flight (the exempt paths aside)."""

    in_flight = 0  # shared by every route: Litestar wraps each route's handler separately

    def wrap(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            nonlocal in_flight
            if scope["type"] != "http" or scope["path"] in EXEMPT:
                await app(scope, receive, send)
                return
            if in_flight >= max_requests:
                await _refuse(send, scope["path"], max_requests, retry_after_s)
                return
            in_flight += 1
            try:
                await app(scope, receive, send)
            finally:
                in_flight -= 1

        return middleware

    return wrap


async def _refuse(send: Send, path: str, limit: int, retry_after_s: int) -> None:
    """503 overloaded, in the error shape of the path's API family."""
    message = f"the server has {limit} requests in flight (MINIVAULT_MAX_CONCURRENT_REQUESTS); retry later"
    status, error = error_for(path, 503, "overloaded", message, None)
    body = _encoder.encode(error)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after_s).encode()),
    ]})
    await send({"type": "http.response.body", "body": body})
