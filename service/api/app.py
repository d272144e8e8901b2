"""The app factory: create_app(settings) builds the Litestar app; the lifespan owns the model."""

from __future__ import annotations

import re
import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator

import msgspec
from litestar import Litestar, Request, Response
from litestar.datastructures import MutableScopeHeaders
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__
from service.config import Settings
from service.errors import InvalidJSON, InvalidRequest, ServiceError, status_and_type
from service.api.native import HANDLERS
from service.runtime.runtime import Runtime
from service.api.schemas import ErrorBody, ErrorDetail

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_HTTP_TYPES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
               415: "unsupported_media_type"}


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Give every request an id (the client's X-Request-ID if sane) and echo it on the response."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _CLIENT_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableScopeHeaders.from_message(message)["X-Request-ID"] = request_id
            await send(message)

        await app(scope, receive, send_with_id)

    return middleware


def _error_response(status: int, type_: str, message: str, field: str | None = None,
                    retry_after: int | None = None) -> Response[ErrorBody]:
    headers = {"Retry-After": str(retry_after)} if retry_after else None
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


def handle_service_error(request: Request, exc: ServiceError) -> Response[ErrorBody]:
    status, type_ = status_and_type(exc)
    return _error_response(status, type_, exc.message, exc.field, exc.retry_after)


def handle_validation(request: Request, exc: ValidationException) -> Response[ErrorBody]:
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


def handle_http(request: Request, exc: HTTPException) -> Response[ErrorBody]:
    if exc.status_code == 400 and _caused_by_bad_json(exc):
        return handle_service_error(request, InvalidJSON(f"the body is not valid JSON: {exc.detail}"))
    type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
    return _error_response(exc.status_code, type_, str(exc.detail))


def handle_internal(request: Request, exc: Exception) -> Response[ErrorBody]:
    return _error_response(500, "internal_error", f"internal error: {type(exc).__name__}")


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the MiniVault app. Raises SettingsError at once if the model cannot be found."""
    settings = settings or Settings.from_env()
    runtime = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.runtime = runtime
        runtime.start_loading()
        try:
            yield
        finally:
            await runtime.shutdown()

    return Litestar(
        route_handlers=HANDLERS,
        lifespan=[lifespan],
        middleware=[request_id_middleware],
        exception_handlers={
            ServiceError: handle_service_error,
            ValidationException: handle_validation,
            HTTPException: handle_http,
            Exception: handle_internal,
        },
        request_max_body_size=1_048_576,
        openapi_config=OpenAPIConfig(title="MiniVault", version=__version__),
        logging_config=None,
    )
