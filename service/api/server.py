"""Run the app under uvicorn with MiniVault's settings (used by `minivault serve`)."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import threading

from service.config import Settings, SettingsError, unknown_variables


def serve(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; on either, drain running generations for up to drain_s."""
    import uvicorn

    from service.api.app import create_app
    from service.api.streaming import quiet_uvicorn_about_aborted_streams

    for warning in unknown_variables():
        print(f"minivault: warning: {warning}", file=sys.stderr, flush=True)
    app = create_app(settings)
    quiet_uvicorn_about_aborted_streams()
    # uvicorn re-raises the signal that stopped it once the drain is over, which would end the
    # process with status 143; a drained SIGTERM is a clean stop, so it exits 0 instead.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_cleanly) if main_thread else None
    try:
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            # only a backstop: the runtime ends every request itself when drain_s runs out
            timeout_graceful_shutdown=settings.drain_s + BACKSTOP_S,  # type: ignore[arg-type] - a float works
            log_level="info",
            access_log=False,
            # hostile clients: set explicitly, not left to defaults that may change
            timeout_keep_alive=KEEP_ALIVE_S,  # an idle keep-alive connection is closed after this
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,  # request line + headers larger than this: 400
            backlog=2048,
        )
        _draining_server(uvicorn.Server)(config, app.state.runtime, settings.shutdown_delay_s).run()
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


BACKSTOP_S = 10.0
KEEP_ALIVE_S = 5
MAX_HEADER_BYTES = 16 * 1024


def _draining_server(base: type) -> type:
    """uvicorn's Server with MiniVault's shutdown order (uvicorn is imported only when serving)."""

    class DrainingServer(base):  # type: ignore[misc, valid-type]
        """On SIGTERM: readiness false and new requests refused first, then (after shutdown_delay_s)
        the listener closes; running generations get drain_s, then each is ended by the runtime in
        its endpoint's normal shape; uvicorn's own forced cancel comes only BACKSTOP_S later."""

        def __init__(self, config, runtime, delay_s: float) -> None:
            super().__init__(config)
            self._runtime = runtime
            self._delay_s = delay_s

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            self._runtime.begin_drain()
            if self._delay_s:  # let load balancers see /health turn 503 before the port closes
                await asyncio.sleep(self._delay_s)
            finishing = asyncio.ensure_future(self._runtime.finish_jobs())
            try:
                await super().shutdown(sockets)
            finally:
                await finishing

    return DrainingServer


def _exit_cleanly(signum: int, frame: object) -> None:
    """SIGTERM after uvicorn's drain (or before it started): exit with status 0."""
    raise SystemExit(0)


def main() -> None:
    """`python -m service.api.server`: serve with settings from the environment."""
    try:
        settings = Settings.from_env()
        serve(settings)
    except SettingsError as exc:
        print(f"minivault: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
