"""The native API's error table: each domain error to one HTTP status and one error body."""

from __future__ import annotations

import re

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    SerializationException,
    ValidationException,
)

from service.api.schemas import ErrorBody, ErrorDetail
from service.api.schemas_openai import OpenAIErrorBody, OpenAIErrorDetail
from service.errors import (
    ContextOverflow,
    GenerationFailed,
    InvalidJSON,
    InvalidRequest,
    NotReady,
    QueueFull,
    ServiceError,
    ShuttingDown,
    UnknownModel,
    UnknownToken,
)

_HTTP_TYPES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
               415: "unsupported_media_type"}

# error class -> (HTTP status, error type). One row per domain error.
ERROR_TABLE: dict[type[ServiceError], tuple[int, str]] = {
    InvalidJSON: (400, "invalid_json"),
    InvalidRequest: (422, "invalid_request"),
    ContextOverflow: (422, "context_length_exceeded"),
    UnknownToken: (422, "unknown_token"),
    QueueFull: (429, "queue_full"),
    NotReady: (503, "model_not_ready"),
    ShuttingDown: (503, "shutting_down"),
    GenerationFailed: (500, "generation_failed"),
    UnknownModel: (404, "model_not_found"),
}

# The /v1 family's table: OpenAI's statuses (the SDK maps each to an exception class) and error
# types; the native type above becomes OpenAI's `code`. Errors not listed keep their status.
OPENAI_PREFIX = "/v1"
OPENAI_STATUS = {422: 400}  # an invalid request is a 400 on OpenAI's API
OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
                415: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
                503: "service_unavailable_error"}


def is_openai(request: Request) -> bool:
    """Whether a request belongs to the /v1 family (and so gets OpenAI's error shape)."""
    path = request.scope.get("path", "")
    return path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/")


def openai_error(status: int, code: str, message: str, param: str | None = None) -> tuple[int, OpenAIErrorBody]:
    """(OpenAI status, OpenAI error body) for a native status and error type."""
    status = OPENAI_STATUS.get(status, status)
    type_ = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return status, OpenAIErrorBody(error=OpenAIErrorDetail(message=message, type=type_, param=param, code=code))


def status_and_type(error: ServiceError) -> tuple[int, str]:
    """The (status, type) row for an error, walking up its classes."""
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return 500, "internal_error"


def _error_response(status: int, type_: str, message: str, field: str | None = None,
                    retry_after: int | None = None, request: Request | None = None) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    if request is not None and is_openai(request):
        status, body = openai_error(status, type_, message, field)
        return Response(body, status_code=status, headers=headers)
    return Response(ErrorBody(error=ErrorDetail(type=type_, message=message, field=field)),
                    status_code=status, headers=headers)


def _field_of(exc: msgspec.ValidationError) -> tuple[str | None, str]:
    """(field path, rule) from msgspec's `Expected ... - at `$.data.top_p``."""
    text = str(exc)
    rule, sep, where = text.rpartition(" - at `")
    if not sep:
        rule, where = text, ""
    path = where.rstrip("`").removeprefix("$.data").lstrip(".") or None
    if m := re.search(r"unknown field `([^`]+)`", rule):
        name = m.group(1)
        return (f"{path}.{name}" if path else name), f"unknown field `{name}` (check its spelling)"
    if m := re.search(r"missing required field `([^`]+)`", rule):
        if m.group(1) == "data":
            return None, "the request body must be a JSON object"
        name = m.group(1)
        return (f"{path}.{name}" if path else name), "this field is required"
    return path, rule


def handle_service_error(request: Request, exc: ServiceError) -> Response:
    status, type_ = status_and_type(exc)
    return _error_response(status, type_, exc.message, exc.field, exc.retry_after, request)


def handle_validation(request: Request, exc: ValidationException) -> Response:
    cause = exc.__cause__
    if isinstance(cause, msgspec.ValidationError):
        field, rule = _field_of(cause)
        error: ServiceError = InvalidRequest(f"{field}: {rule}" if field else rule, field=field)
    else:
        error = InvalidRequest(str(exc.detail))
    return handle_service_error(request, error)


def _caused_by_bad_json(exc: BaseException) -> bool:
    """Whether the body failed to parse as JSON (somewhere down the exception chain)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, (msgspec.DecodeError, SerializationException)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def handle_http(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 400 and _caused_by_bad_json(exc):
        return handle_service_error(request, InvalidJSON(f"the body is not valid JSON: {exc.detail}"))
    type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
    return _error_response(exc.status_code, type_, str(exc.detail), request=request)


def handle_internal(request: Request, exc: Exception) -> Response:
    return _error_response(500, "internal_error", f"internal error: {type(exc).__name__}", request=request)


EXCEPTION_HANDLERS = {
    ServiceError: handle_service_error,
    ValidationException: handle_validation,
    HTTPException: handle_http,
    Exception: handle_internal,
}
