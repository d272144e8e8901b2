"""The app factory: create_app(settings) builds the Litestar app; the lifespan owns the model."""

from __future__ import annotations

import re
import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator

from litestar import Litestar
from litestar.datastructures import MutableScopeHeaders
from litestar.openapi import OpenAPIConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__
from service.api.errors import EXCEPTION_HANDLERS
from service.api.docs_page import OPENAPI_RENDER
from service.api.native import HANDLERS as NATIVE
from service.api.openai import HANDLERS as OPENAI
from service.api.openai_docs import exact_schemas
from service.api.ops import HANDLERS as OPS
from service.config import Settings
from service.runtime.runtime import Runtime

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


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
                # read at send time: a route may give the request its API's id form (/v1: cmpl-...)
                MutableScopeHeaders.from_message(message)["X-Request-ID"] = scope["state"]["request_id"]
            await send(message)

        await app(scope, receive, send_with_id)

    return middleware


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

    app = Litestar(
        route_handlers=[*NATIVE, *OPS, *OPENAI, *OPENAPI_RENDER.handlers],
        lifespan=[lifespan],
        middleware=[request_id_middleware],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=1_048_576,
        openapi_config=OpenAPIConfig(title="MiniVault", version=__version__,
                                     render_plugins=OPENAPI_RENDER.plugins),
        logging_config=None,
    )
    exact_schemas(app)
    return app
