"""`minivault serve`: run the HTTP server with settings from flags and MINIVAULT_*."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from service.cli.options import Float, Int, Text, app, fail, opt


@app.command()
def serve(
    host: Annotated[Text, opt("Address to listen on [env MINIVAULT_HOST; 127.0.0.1].")] = None,
    port: Annotated[Int, opt("Port [env MINIVAULT_PORT; 8000].")] = None,
    model: Annotated[Text, opt("GGML model file [env MINIVAULT_MODEL; the one in the models dir].")] = None,
    models_dir: Annotated[Text, opt("Models dir [env MINIVAULT_MODELS_DIR; ./models].")] = None,
    workers: Annotated[Int, opt("Model instances generating at once [env MINIVAULT_WORKERS; 1].")] = None,
    threads: Annotated[Int, opt("Threads per instance; 0 = cores / workers [env MINIVAULT_THREADS].")] = None,
    max_queue: Annotated[Int, opt("Requests waiting for a worker before 429 [env MINIVAULT_MAX_QUEUE; 16].")] = None,
    timeout: Annotated[Float, opt("Seconds one generation may run [env MINIVAULT_TIMEOUT_S; 120].")] = None,
    drain: Annotated[Float, opt("Seconds running generations get to finish on SIGTERM [env MINIVAULT_DRAIN_S; 30].",
                                "--drain")] = None,
    log_file: Annotated[Text, opt("JSONL request log [env MINIVAULT_LOG_FILE; ./logs/log.jsonl].")] = None,
    log_prompts: Annotated[Optional[bool], opt("Record prompts and responses [env MINIVAULT_LOG_PROMPTS; on].",
                                               "--log-prompts/--no-log-prompts")] = None,
) -> None:
    """Run the HTTP server.

    Flags override the MINIVAULT_* environment. On SIGINT/SIGTERM the server takes no
    new requests and lets running generations finish for up to --drain seconds.
    """
    from service.cli.http import USAGE
    from service.config import Settings, SettingsError

    overrides = {
        "host": host, "port": port, "model": model, "models_dir": models_dir, "workers": workers,
        "threads": threads, "max_queue": max_queue, "timeout_s": timeout, "drain_s": drain,
        "log_file": log_file, "log_prompts": log_prompts,
    }
    try:
        settings = Settings.from_env(overrides)
        from service.api.server import (
            serve as run_server,  # uvicorn + create_app, drain_s as the graceful timeout
        )

        run_server(settings)
    except SettingsError as exc:
        raise fail(str(exc), USAGE) from None
    except KeyboardInterrupt:  # uvicorn handles SIGINT itself; this is a Ctrl-C during start-up
        raise typer.Exit(130) from None
