"""Run the app under uvicorn with MiniVault's settings (used by `minivault serve`)."""

from __future__ import annotations

import sys

from service.config import Settings, SettingsError


def serve(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; on either, drain running generations for up to drain_s."""
    import uvicorn

    from service.app import create_app

    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=settings.drain_s,  # type: ignore[arg-type] - a float works (asyncio timeout)
        log_level="info",
        access_log=False,
    )


def main() -> None:
    """`python -m service.server`: serve with settings from the environment."""
    try:
        settings = Settings.from_env()
        serve(settings)
    except SettingsError as exc:
        print(f"minivault: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
