"""The `minivault` Typer app, the options its commands share, and how failures are reported.

Every command module imports this one and nothing imports a command module but
service/cli/main.py, so the CLI has no import circle.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Annotated, Iterator, Optional

import typer

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
