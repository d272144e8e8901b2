"""Which error body a path gets: OpenAI's shape under /v1, the native shape everywhere else.

Issue 9's OpenAI error table replaces `openai_body` (the /v1 row of FAMILIES) when it lands.
"""

from __future__ import annotations

from typing import Callable

import msgspec

from service.api.schemas import ErrorBody, ErrorDetail


class OpenAIErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(msgspec.Struct, kw_only=True):
    error: OpenAIErrorDetail


# native error type -> OpenAI's `code` where OpenAI has a name of its own for it
_OPENAI_CODES = {"unauthorized": "invalid_api_key"}


def native_body(status: int, type_: str, message: str, field: str | None) -> ErrorBody:
    """`{"error": {"type", "message", "field"}}`."""
    return ErrorBody(error=ErrorDetail(type=type_, message=message, field=field))


def openai_body(status: int, type_: str, message: str, field: str | None) -> OpenAIErrorBody:
    """`{"error": {"message", "type", "param", "code"}}`, as the OpenAI API and its SDKs expect."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return OpenAIErrorBody(error=OpenAIErrorDetail(message=message, type=kind, param=field,
                                                   code=_OPENAI_CODES.get(type_, type_)))


# path prefix -> body builder; the first match wins, the native shape is the fallback
FAMILIES: list[tuple[str, Callable[[int, str, str, str | None], msgspec.Struct]]] = [("/v1", openai_body)]


def error_body(path: str, status: int, type_: str, message: str, field: str | None) -> msgspec.Struct:
    """The error body for a request to `path`, in its API family's shape."""
    for prefix, build in FAMILIES:
        if path == prefix or path.startswith(prefix + "/"):
            return build(status, type_, message, field)
    return native_body(status, type_, message, field)
