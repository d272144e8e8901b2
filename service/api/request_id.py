"""The request id: the client's X-Request-ID if sane, else a new one; echoed on every response."""

from __future__ import annotations

import re
import uuid

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id(scope: Scope) -> str:
    """This request's id, assigned on first use (the same id for the log, the body and the header)."""
    state = scope.setdefault("state", {})
    if (known := state.get("request_id")) is not None:
        return known
    incoming = dict(scope.get("headers", ())).get(b"x-request-id", b"").decode("latin-1")
    state["request_id"] = rid = incoming if _CLIENT_ID.match(incoming) else uuid.uuid4().hex
    return rid


async def add_request_id(message: Message, scope: Scope) -> None:
    """before_send hook: every response carries X-Request-ID, also 404s, 405s and errors raised
    outside a route (the app's middleware runs only for matched routes)."""
    if message["type"] == "http.response.start" and scope.get("type") == "http":
        MutableScopeHeaders.from_message(message)["X-Request-ID"] = request_id(scope)
