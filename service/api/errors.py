"""The native API's error table: each domain error to one HTTP status and one error body."""

from __future__ import annotations

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    SerializationException,
    ValidationException,
)

from service.api.families import error_for
from service.api.security import WWW_AUTHENTICATE, authenticate, is_public
from service.api.strict import invalid_request
from service.errors import (
    ContextOverflow,
    GenerationFailed,
    InvalidHost,
    InvalidJSON,
    InvalidRequest,
    ModelCapacity,
    NotReady,
    QueueFull,
    ServiceError,
    ShuttingDown,
    Unauthorized,
    UnknownModel,
    UnknownToken,
    UnsupportedMediaType,
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
    ModelCapacity: (503, "model_capacity"),
    ShuttingDown: (503, "shutting_down"),
    GenerationFailed: (500, "generation_failed"),
    InvalidHost: (400, "invalid_host"),
    Unauthorized: (401, "unauthorized"),
    UnsupportedMediaType: (415, "unsupported_media_type"),
    UnknownModel: (404, "model_not_found"),
}

def status_and_type(error: ServiceError) -> tuple[int, str]:
    """The (status, type) row for an error, walking up its classes."""
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return 500, "internal_error"


def _error_response(request: Request, status: int, type_: str, message: str, field: str | None = None,
                    retry_after: int | None = None) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after else {}
    if status == 401:
        headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    status, body = error_for(request.url.path, status, type_, message, field)
    return Response(body, status_code=status, headers=headers or None)


def handle_service_error(request: Request, exc: ServiceError) -> Response:
    status, type_ = status_and_type(exc)
    return _error_response(request, status, type_, exc.message, exc.field, exc.retry_after)


def handle_validation(request: Request, exc: ValidationException) -> Response:
    cause = exc.__cause__
    if isinstance(cause, msgspec.ValidationError):
        error: ServiceError = invalid_request(cause)
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
    if exc.status_code in (404, 405) and not is_public(request, None):
        try:  # without a valid key, an unknown path says 401 too: routes cannot be probed
            authenticate(request)
        except Unauthorized as refused:
            return handle_service_error(request, refused)
    type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
    return _error_response(request, exc.status_code, type_, str(exc.detail))


def handle_internal(request: Request, exc: Exception) -> Response:
    return _error_response(request, 500, "internal_error", f"internal error: {type(exc).__name__}")


EXCEPTION_HANDLERS = {
    ServiceError: handle_service_error,
    ValidationException: handle_validation,
    HTTPException: handle_http,
    Exception: handle_internal,
}
