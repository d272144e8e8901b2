"""The `minivault` commands that talk to a running server: generate, stream, bench.

They register on the app of service/cli/options.py when service/cli/main.py imports this module; httpx and the
client are imported inside the commands, so `minivault --help` stays fast.
"""

from __future__ import annotations

import json
import sys
from contextlib import closing
from typing import Annotated

import typer

from service.cli.options import (
    DEFAULT_URL,
    MaxNewTokens,
    Prompt,
    RepetitionPenalty,
    Seed,
    Stop,
    Temperature,
    Timeout,
    TopK,
    TopP,
    Url,
    app,
    fail,
    opt,
    reporting,
    say,
)


def _lenient_stdout():
    """stdout that writes what its encoding can't show as '?' instead of failing mid-stream."""
    try:
        sys.stdout.reconfigure(errors="replace")  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        pass
    return sys.stdout


def _prompt_text(prompt: str) -> str:
    if prompt == "-":
        return sys.stdin.read()
    return prompt


def _body(prompt: str, **params) -> dict:
    from service.cli.http import generation_body

    return generation_body(_prompt_text(prompt), **params)


# --- client commands ----------------------------------------------------------------------


@app.command()
def generate(
    prompt: Prompt,
    url: Url = DEFAULT_URL,
    max_new_tokens: MaxNewTokens = None,
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    repetition_penalty: RepetitionPenalty = None,
    seed: Seed = None,
    stop: Stop = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full JSON response.")] = False,
    timeout: Timeout = 300.0,
) -> None:
    """Generate a completion and print it when done."""
    from service.cli.http import Client

    with reporting():
        body = _body(prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                     repetition_penalty=repetition_penalty, seed=seed, stop=stop)
        with Client(url, timeout) as client:
            result = client.generate(body)
        out = _lenient_stdout()
        if as_json:
            print(json.dumps(result, indent=2, ensure_ascii=False), file=out, flush=True)
        else:
            print(result.get("response", ""), file=out, flush=True)
            if result.get("finish_reason") == "timeout":
                say("the generation hit the server's time limit; the text above is cut short")


@app.command()
def stream(
    prompt: Prompt,
    url: Url = DEFAULT_URL,
    max_new_tokens: MaxNewTokens = None,
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    repetition_penalty: RepetitionPenalty = None,
    seed: Seed = None,
    stop: Stop = None,
    timeout: Timeout = 300.0,
) -> None:
    """Print the completion token by token, as it is produced.

    Ctrl-C closes the connection, which cancels the generation on the server.
    """
    from service.cli.http import Client

    out = _lenient_stdout()
    wrote = False
    try:
        with reporting():
            body = _body(prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                         top_p=top_p, repetition_penalty=repetition_penalty, seed=seed, stop=stop)
            # closing(): on Ctrl-C the generator exits its `with`, closing the connection at once
            with Client(url, timeout) as client, closing(client.stream(body)) as chunks:
                for chunk in chunks:
                    out.write(chunk)
                    out.flush()
                    wrote = True
    finally:
        if wrote:
            try:
                out.write("\n")
                out.flush()
            except (BrokenPipeError, ValueError):
                pass


# --- benchmark ----------------------------------------------------------------------------

BENCH_PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"


@app.command()
def bench(
    url: Url = DEFAULT_URL,
    concurrency: Annotated[int, opt("Streams in flight at once.", "--concurrency", "-c", min=1, max=256)] = 4,
    requests: Annotated[int, opt("Requests to send in all.", "--requests", "-n", min=1, max=100_000)] = 32,
    duration: Annotated[float, opt("Stop after this many seconds even if requests remain.", min=0.1)] = 120.0,
    prompt: Annotated[str, opt("The prompt every request sends.")] = BENCH_PROMPT,
    max_new_tokens: Annotated[int, opt("Tokens each request asks for.", min=1)] = 128,
    temperature: Temperature = None,
    top_k: TopK = None,
    top_p: TopP = None,
    repetition_penalty: RepetitionPenalty = None,
    seed: Seed = None,
    stop: Stop = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    timeout: Timeout = 300.0,
) -> None:
    """Load-test a server's /generate/stream.

    Sends --requests streaming requests, --concurrency at a time, for at most --duration
    seconds; reports requests/s, time to first token (TTFT) and inter-token latency (ITL)
    percentiles, aggregate and per-stream tokens/s, and errors by status. Tokens are
    counted as streamed chunks (the server sends one per token).
    """
    from service.cli import bench as benchmark
    from service.cli.http import GENERIC, generation_body

    with reporting():
        body = generation_body(prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                               top_p=top_p, repetition_penalty=repetition_penalty, seed=seed, stop=stop)
        report = benchmark.run(url, body, requests=requests, concurrency=concurrency, duration=duration,
                               timeout=timeout)
        print(benchmark.to_json(report) if as_json else benchmark.format_report(report), flush=True)
        if report.completed == 0:
            raise fail("no request completed", GENERIC)
