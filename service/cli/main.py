"""The `minivault` command: registers every command on the app, then runs it.

Heavy libraries (litestar, uvicorn, ctransformers, huggingface_hub, numpy) and httpx are
imported inside the commands that need them, so `minivault --help` starts fast.
"""

from __future__ import annotations

import os

# Each command module registers on `app` when imported; the import order is the order --help lists them.
from service.cli import (  # noqa: F401  (isort: skip)
    client_commands, serve_command, model_commands, import_command, logs_commands,
)
from service.cli.options import app, say
from service.errors import one_line

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the `minivault` script and `python -m service`."""
    try:
        app(prog_name="minivault")
    except Exception as exc:  # a bug, not a user error: one line unless asked for the traceback
        if os.environ.get("MINIVAULT_DEBUG"):
            raise
        say(f"internal error: {type(exc).__name__}: {one_line(exc)} (set MINIVAULT_DEBUG=1 for details)")
        raise SystemExit(1) from None
