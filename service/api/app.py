"""The app factory: create_app(settings) builds the Litestar app; the lifespan owns the model."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

from litestar import Litestar
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig

from service import __version__
from service.api.docs_page import OPENAPI_RENDER
from service.api.errors import EXCEPTION_HANDLERS
from service.api.limits import request_limit
from service.api.metering import metering_middleware
from service.api.native import HANDLERS as NATIVE
from service.api.openai import HANDLERS as OPENAI
from service.api.openai_docs import exact_schemas
from service.api.ops import HANDLERS as OPS
from service.api.request_id import add_request_id
from service.api.security import allowed_hosts, cors_config, guard, load_keyring
from service.api.streaming import abortable_streams
from service.api.strict import strict_body
from service.config import Settings
from service.runtime.runtime import Runtime


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the MiniVault app. Raises SettingsError at once if the model cannot be found."""
    settings = settings or Settings.from_env()
    keyring = load_keyring(settings)  # a missing keys file stops the start, like a missing model
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
        state=State({"runtime": runtime, "settings": settings, "keyring": keyring}),
        route_handlers=[*NATIVE, *OPS, *OPENAI, *OPENAPI_RENDER.handlers],
        lifespan=[lifespan],
        # the Host check (Litestar's allowed-hosts middleware, on the name) before anything is counted
        middleware=[allowed_hosts(settings), metering_middleware,
                    request_limit(settings.max_concurrent_requests, settings.retry_after_s), abortable_streams],
        guards=[guard],
        cors_config=cors_config(settings),
        before_send=[add_request_id],
        before_request=strict_body,
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=1_048_576,
        openapi_config=OpenAPIConfig(title="MiniVault", version=__version__,
                                     render_plugins=OPENAPI_RENDER.plugins),
        logging_config=None,
    )
    exact_schemas(app)
    return app
