"""Which error body a path gets: OpenAI's shape and statuses under /v1, the native shape elsewhere.

One place decides it for the errors MiniVault sends as responses: the exception handlers and the
concurrent-request limit build their bodies here (a /v1 stream's error event too).
"""

from __future__ import annotations

import msgspec

from service.api.schemas import ErrorBody, ErrorDetail
from service.api.schemas_openai import OpenAIErrorBody, OpenAIErrorDetail

OPENAI_PREFIX = "/v1"
# The /v1 family's table: OpenAI's statuses (the SDK maps each to an exception class) and error
# types; the native type becomes OpenAI's `code`. Errors not listed keep their status.
OPENAI_STATUS = {422: 400}  # an invalid request is a 400 on OpenAI's API
OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
                415: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
                503: "service_unavailable_error"}
# native error type -> OpenAI's `code` where OpenAI has a name of its own for it
OPENAI_CODES = {"unauthorized": "invalid_api_key"}


def is_openai_path(path: str) -> bool:
    """Whether a path belongs to the /v1 family."""
    return path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/")


def openai_error(status: int, code: str, message: str, param: str | None = None) -> tuple[int, OpenAIErrorBody]:
    """(OpenAI status, OpenAI error body) for a native status and error type."""
    status = OPENAI_STATUS.get(status, status)
    type_ = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    detail = OpenAIErrorDetail(message=message, type=type_, param=param, code=OPENAI_CODES.get(code, code))
    return status, OpenAIErrorBody(error=detail)


def error_for(path: str, status: int, type_: str, message: str, field: str | None) -> tuple[int, msgspec.Struct]:
    """(status, body) of an error for a request to `path`, in its API family's shape."""
    if is_openai_path(path):
        return openai_error(status, type_, message, field)
    return status, ErrorBody(error=ErrorDetail(type=type_, message=message, field=field))
