"""Hooks that run on every request are coroutines: Litestar runs a sync guard, before_request or
before_send hook through a worker thread (anyio.to_thread), a hop there and back per request."""

from __future__ import annotations

from litestar.utils.sync import AsyncCallable

from service.api.app import create_app


def name_of(hook: object) -> str:
    """The wrapped function's name (Litestar may wrap a wrapper)."""
    while isinstance(hook, AsyncCallable):
        hook = hook.func
    return getattr(hook, "__name__", repr(hook))


def test_no_per_request_hook_runs_in_a_thread(settings_for, tiny_model) -> None:
    app = create_app(settings_for(tiny_model))
    threaded = [f"before_send {name_of(h)}" for h in app.before_send if isinstance(h, AsyncCallable)]
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            hooks = [*handler.resolve_guards(), handler.before_request]
            threaded += [f"{handler.handler_name}: {name_of(h)}" for h in hooks
                         if isinstance(h, AsyncCallable)]
    assert threaded == []
