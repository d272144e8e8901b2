"""What OpenAPI says about each route beyond its request schema: every error status with its real
body, and the real media types of a response (JSON, text/plain, text/event-stream)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPI, OpenAPIMediaType, Operation, Schema
from litestar.openapi.spec.enums import OpenAPIType

from service.api import schemas, schemas_openai
from service.api.schemas import ErrorBody
from service.api.schemas_openai import ChatCompletion, Completion, OpenAIErrorBody

_OPENAI_ERRORS = {
    400: "Invalid request: the message names the field and its limit (OpenAI's `BadRequestError`).",
    401: "API keys are on and the key is missing or wrong (`AuthenticationError`); with `WWW-Authenticate`.",
    404: "Unknown model or route; the message names the models available (`NotFoundError`).",
    413: "The body is over 1 MiB.",
    415: "The body's `Content-Type` is not `application/json`.",
    429: "Every worker is busy and the queue is full; `Retry-After` says when to retry (`RateLimitError`).",
    500: "The model failed while generating (`InternalServerError`).",
    503: "The model is loading, failed to load, the server is shutting down, or too many requests are in "
         "flight; `Retry-After` is set.",
}
_NATIVE_ERRORS = {
    400: "The body is not valid JSON, or the `Host` header is not an allowed host.",
    401: "API keys are on and the key is missing or wrong; with `WWW-Authenticate`.",
    404: "No installed model has the `model` id asked for; the message lists those installed.",
    413: "The body is over 1 MiB.",
    415: "The body's `Content-Type` is not `application/json`.",
    422: "A field breaks its limit, or an unknown field was sent; `field` names it.",
    429: "Every worker is busy and the queue is full; `Retry-After` says when to retry.",
    500: "The model failed while generating.",
    503: "The model is still loading past MINIVAULT_LOAD_TIMEOUT_S, failed to load, cannot be fitted beside "
         "the models in use, the server is shutting down, or too many requests are in flight; "
         "`Retry-After` is set.",
}
_SSE_DOC = ("With `stream: true` (or `Accept: text/event-stream` on the native stream): Server-Sent Events, "
            "`data: <json>` then a blank line per event, ending with `data: [DONE]` on /v1; an error after the "
            "stream started is sent as an event with an `error` object, and the stream ends.")


def _operation_with(media_types: dict[str, Schema], only: bool = False) -> type[Operation]:
    """An Operation class that adds `media_types` to the 200 response (Litestar documents one);
    with `only`, they replace what Litestar documented."""

    @dataclass
    class _Operation(Operation):
        def __post_init__(self) -> None:
            ok = (self.responses or {}).get("200")
            if ok is not None and not isinstance(ok, dict) and hasattr(ok, "content"):
                ok.content = ({} if only else ok.content or {}) | {
                    k: OpenAPIMediaType(schema=v) for k, v in media_types.items()}
                ok.description = f"{ok.description}. {_SSE_DOC}"

    return _Operation


_TEXT = Schema(type=OpenAPIType.STRING, description="The generated text, chunk by chunk (chunked transfer).")
# Open API 3.1 has the event-stream `schema` describe one event, as an SSE parser yields it
_EVENTS = Schema(
    type=OpenAPIType.OBJECT,
    description=_SSE_DOC,
    required=["data"],
    properties={
        "data": Schema(type=OpenAPIType.STRING,
                       description="One JSON chunk (a completion or an error object), or `[DONE]` last on /v1."),
        "event": Schema(type=OpenAPIType.STRING, description="Always `message` (no `event:` line is sent)."),
        "id": Schema(type=OpenAPIType.STRING),
        "retry": Schema(type=OpenAPIType.INTEGER),
    },
)


def _errors(body: type, table: dict[int, str]) -> dict[int, ResponseSpec]:
    return {status: ResponseSpec(body, description=text, generate_examples=False) for status, text in table.items()}


def _openai(ok: type, streams: bool) -> dict[str, Any]:
    docs: dict[str, Any] = {"responses": {200: ResponseSpec(ok, description="The whole response", generate_examples=False)}
                            | _errors(OpenAIErrorBody, _OPENAI_ERRORS)}
    if streams:
        docs["operation_class"] = _operation_with({"text/event-stream": _EVENTS})
    return docs


COMPLETION_DOCS = _openai(Completion, streams=True)
CHAT_DOCS = _openai(ChatCompletion, streams=True)
MODEL_DOCS = {"responses": {k: v for k, v in _errors(OpenAIErrorBody, _OPENAI_ERRORS).items() if k in (404, 503)}}
NATIVE_DOCS = {"responses": _errors(ErrorBody, _NATIVE_ERRORS)}
NATIVE_STREAM_DOCS = {
    "responses": _errors(ErrorBody, _NATIVE_ERRORS),
    "operation_class": _operation_with({"text/plain": _TEXT, "text/event-stream": _EVENTS}, only=True),
}


def _structs() -> list[type]:
    return [obj for module in (schemas, schemas_openai) for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, msgspec.Struct) and obj.__module__ == module.__name__]


class _ExactOpenAPIPlugin(OpenAPIPlugin):
    """Litestar's OpenAPI plugin, then each of MiniVault's components replaced by msgspec's schema."""

    __slots__ = ()

    def _build_openapi(self) -> OpenAPI:
        openapi = super()._build_openapi()
        _, components = msgspec.json.schema_components(_structs(), ref_template="#/components/schemas/{name}")
        mine = openapi.components.schemas
        for name, schema in components.items():  # all of them: msgspec's $refs name its own components
            mine[name] = schema  # type: ignore[assignment] - a plain JSON Schema dict serialises as is
        return openapi


def exact_schemas(app: Litestar) -> None:
    """Document every body with msgspec's own JSON Schema of it.

    Litestar's generator drops limits inside unions and lists (each `stop` string's 1-256 length,
    a token id's range, `seed`'s minimum); msgspec knows them all, so its schema replaces each
    component Litestar made for one of MiniVault's Structs.
    """
    app.plugins.get(OpenAPIPlugin).__class__ = _ExactOpenAPIPlugin  # the same object, one method changed
