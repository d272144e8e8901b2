"""Run the app under uvicorn with MiniVault's settings (used by `minivault serve`)."""

from __future__ import annotations

import signal
import sys
import threading

from service.config import Settings, SettingsError, unknown_variables


def serve(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; on either, drain running generations for up to drain_s."""
    import uvicorn

    from service.api.app import create_app

    for warning in unknown_variables():
        print(f"minivault: warning: {warning}", file=sys.stderr, flush=True)
    app = create_app(settings)
    # uvicorn re-raises the signal that stopped it once the drain is over, which would end the
    # process with status 143; a drained SIGTERM is a clean stop, so it exits 0 instead.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_cleanly) if main_thread else None
    try:
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            timeout_graceful_shutdown=settings.drain_s,  # type: ignore[arg-type] - a float works (asyncio timeout)
            log_level="info",
            access_log=False,
        )
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


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
