"""Counts the requests that are not jobs (refusals, /tokenize, ...); jobs count themselves when they end."""

from __future__ import annotations

from litestar.types import ASGIApp, Message, Receive, Scope, Send

# not API calls: probes, scrapes, the page and the schema
_UNCOUNTED_OPTS = ("public", "metrics")


def metering_middleware(app: ASGIApp) -> ASGIApp:
    """After each counted request, add it to minivault_requests_total as ok or refused_<status>."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        handler = scope.get("route_handler")
        if (scope["type"] != "http" or scope.get("method") == "OPTIONS" or handler is None
                or any(handler.opt.get(o) for o in _UNCOUNTED_OPTS) or scope["path"].startswith("/schema")):
            await app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_and_note)
        finally:
            metrics = scope["litestar_app"].state.runtime.metrics
            # an admitted request is a job: the runtime counts it once it ends, with how it ended
            if metrics is not None and not scope.get("state", {}).get("job"):
                code = status["code"]
                metrics.observe_request(scope.get("path_template") or scope["path"],
                                        "ok" if code < 400 else f"refused_{code}")

    return middleware
