"""Server-Sent Events framing: `data: <json>` lines, a blank line after each event, `[DONE]`."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request

MEDIA_TYPE = "text/event-stream"
DONE = b"data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering: tokens arrive live

_encoder = msgspec.json.Encoder()


def event(data: Any, name: str | None = None) -> bytes:
    """One SSE event carrying `data` as JSON (msgspec's JSON has no raw newlines: one data line)."""
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + _encoder.encode(data) + b"\n\n"


def wants_sse(request: Request) -> bool:
    """Whether the client's Accept header asks for text/event-stream."""
    accept = request.headers.get("accept", "")
    return any(part.split(";")[0].strip().lower() == MEDIA_TYPE for part in accept.split(","))
