"""The `minivault` command: the app, its shared options and error reporting, and `serve`;
the client commands are in service/cli_client.py, the models-dir ones in service/cli_models.py.

Heavy libraries (litestar, uvicorn, ctransformers, huggingface_hub, numpy) and httpx are
imported inside the commands that need them, so `minivault --help` starts fast.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Annotated, Iterator, Optional

import typer

from service.errors import one_line

EXIT_TABLE = """\
\b
Exit codes:
  0    success
  1    other failure (download, conversion, connection cut mid-response)
  2    bad usage or settings
  3    server unreachable
  4    request rejected (4xx; the server's message is shown)
  5    server busy or not ready (429/503; with the Retry-After hint)
  6    server error (5xx)
  130  interrupted (Ctrl-C)
"""

app = typer.Typer(
    name="minivault",
    help="MiniVault: a small self-hosted text-generation service (quantised GPT-2 on the CPU).",
    epilog=EXIT_TABLE,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# --- shared options -----------------------------------------------------------------------

def opt(help: str, *decls: str, **kw) -> typer.models.OptionInfo:
    """A typer.Option with its help (keeps the signatures below readable)."""
    return typer.Option(*decls, help=help, **kw)


Url = Annotated[str, opt("Server base URL.", envvar="MINIVAULT_URL")]
Timeout = Annotated[float, opt("Seconds to wait for the server's answer.", min=0.1)]
MaxNewTokens = Annotated[Optional[int], opt("Tokens to generate at most (server default 128).")]
Temperature = Annotated[Optional[float], opt("Sampling temperature; 0 is greedy (default 0.8).")]
TopK = Annotated[Optional[int], opt("Sample from the k likeliest tokens; 0 is off (default 40).")]
TopP = Annotated[Optional[float], opt("Nucleus sampling mass (default 0.95).")]
RepetitionPenalty = Annotated[Optional[float], opt("Penalty on repeated tokens; 1 is off (default 1.1).")]
Seed = Annotated[Optional[int], opt("Seed: same seed and parameters give the same text.")]
Stop = Annotated[Optional[list[str]], opt("A string that ends generation (repeat, up to 4).", metavar="TEXT")]
Prompt = Annotated[str, typer.Argument(metavar="PROMPT", help="The text to continue; '-' reads it from stdin.")]
Text = Optional[str]
Int = Optional[int]
Float = Optional[float]

DEFAULT_URL = "http://127.0.0.1:8000"


def say(message: str) -> None:
    """One line on stderr, prefixed with the program name."""
    print(f"minivault: {message}", file=sys.stderr, flush=True)


def fail(message: str, code: int) -> typer.Exit:
    """Say `message`; the typer.Exit with `code` for the caller to raise."""
    say(message)
    return typer.Exit(code)


@contextmanager
def reporting() -> Iterator[None]:
    """Turn the expected failures into one stderr line and the documented exit code."""
    from service.cli.http import INTERRUPTED, ClientError

    try:
        yield
    except ClientError as exc:
        raise fail(exc.message, exc.code) from None
    except KeyboardInterrupt:
        raise fail("interrupted", INTERRUPTED) from None
    except BrokenPipeError:
        _silence_stdout()  # the reader went away (e.g. `| head`): nothing more to say
        raise typer.Exit(1) from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush can't fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


# --- commands -------------------------------------------------------------------------------

# The client commands (generate, stream, bench) live in service/cli_client.py and the models
# dir's (download, models, convert) in service/cli_models.py; each registers on `app` when
# imported, which needs the names above, and the import order is the order --help lists them.
from service.cli import client_commands as cli_client  # noqa: E402, F401


# --- the server ---------------------------------------------------------------------------


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
        from service.api.server import serve as run_server  # uvicorn + create_app, drain_s as the graceful timeout

        run_server(settings)
    except SettingsError as exc:
        raise fail(str(exc), USAGE) from None
    except KeyboardInterrupt:  # uvicorn handles SIGINT itself; this is a Ctrl-C during start-up
        raise typer.Exit(130) from None


from service.cli import model_commands as cli_models  # noqa: E402, F401


def main() -> None:
    """Entry point of the `minivault` script and `python -m service`."""
    try:
        app(prog_name="minivault")
    except Exception as exc:  # a bug, not a user error: one line unless asked for the traceback
        if os.environ.get("MINIVAULT_DEBUG"):
            raise
        say(f"internal error: {type(exc).__name__}: {one_line(exc)} (set MINIVAULT_DEBUG=1 for details)")
        raise SystemExit(1) from None
