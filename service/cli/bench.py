"""Load generator for /generate/stream: N requests at concurrency C, bounded by a duration.

Per request it records the time to the first streamed chunk (TTFT), the gaps between
chunks (inter-token latency, ITL) and the chunk count. The server sends each token's text
as its own chunk, so chunks count tokens; a token that ends mid-way through a UTF-8
character is sent together with the next one (and a token with no text is not sent), so
the count can fall slightly short of the server's completion_tokens.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgspec

from service.cli.http import GENERIC, ClientError, error_for, is_loopback, translate


class Outcome(msgspec.Struct, kw_only=True):
    """One request's measurements (seconds)."""

    status: int | None  # None: no HTTP response (connection failure)
    error: str | None = None  # the status code or transport error, for failed requests
    detail: str | None = None  # the server's message or the error text
    ttft: float | None = None
    itl: list[float] = msgspec.field(default_factory=list)
    tokens: int = 0
    latency: float = 0.0
    cut_off: bool = False  # still running when --duration ran out

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None and not self.cut_off

    @property
    def decode_rate(self) -> float | None:
        """Tokens per second after the first token, as this stream saw them."""
        if self.tokens < 2 or not self.itl:
            return None
        span = sum(self.itl)
        return (self.tokens - 1) / span if span > 0 else None


class Stats(msgspec.Struct):
    """Percentiles of a sample, in milliseconds (or tokens/s for rates)."""

    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None
    count: int


class Report(msgspec.Struct, kw_only=True):
    url: str
    model: str | None
    concurrency: int
    requests: int  # asked for
    sent: int
    completed: int
    failed: int
    cut_off: int
    errors: dict[str, int]  # failed requests by status code or transport error
    error_examples: dict[str, str]  # one message for each kind of error
    wall_s: float
    requests_per_s: float
    tokens: int
    tokens_per_s: float  # aggregate: all completed streams' tokens over the wall time
    ttft_ms: Stats
    itl_ms: Stats
    latency_ms: Stats
    stream_tokens_per_s: Stats  # per stream, after its first token
    params: dict[str, Any]
    token_count: str = "streamed chunks (one per token; see the bench docs)"


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation, as numpy's default."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def stats(values: list[float], scale: float = 1.0) -> Stats:
    """p50/p95/p99/mean of `values` times `scale`."""
    scaled = [v * scale for v in values]

    def pick(q: float) -> float | None:
        v = percentile(scaled, q)
        return None if v is None else round(v, 3)

    mean = round(sum(scaled) / len(scaled), 3) if scaled else None
    return Stats(pick(50), pick(95), pick(99), mean, len(scaled))


async def one_stream(client: httpx.AsyncClient, body: dict[str, Any], outcome: Outcome) -> None:
    """Send one streaming request, filling `outcome` as chunks arrive (so a cut-off keeps its data)."""
    start = time.perf_counter()
    last: float | None = None
    try:
        async with client.stream("POST", "/generate/stream", json=body) as response:
            outcome.status = response.status_code
            if response.status_code != 200:
                await response.aread()
                outcome.error = str(response.status_code)
                outcome.detail = error_for(response).message
                return
            async for chunk in response.aiter_raw():
                if not chunk:
                    continue
                now = time.perf_counter()
                if last is None:
                    outcome.ttft = now - start
                else:
                    outcome.itl.append(now - last)
                last = now
                outcome.tokens += 1
    except httpx.HTTPError as exc:
        outcome.error = type(exc).__name__
        outcome.detail = translate(exc, str(client.base_url)).message
    except asyncio.CancelledError:
        outcome.cut_off = True
        raise
    finally:
        outcome.latency = time.perf_counter() - start


async def run_async(url: str, body: dict[str, Any], *, requests: int, concurrency: int, duration: float,
                    timeout: float = 300.0) -> Report:
    """Run the benchmark; raises ClientError if the server is unreachable or not ready."""
    url = url.rstrip("/")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(timeout, connect=5.0), limits=limits,
                                 trust_env=not is_loopback(url)) as client:
        model = await _check_ready(client, url)
        outcomes: list[Outcome] = []
        started = time.perf_counter()
        deadline = started + duration

        async def worker() -> None:
            while len(outcomes) < requests and time.perf_counter() < deadline:
                outcome = Outcome(status=None)
                outcomes.append(outcome)
                await one_stream(client, body, outcome)

        tasks = [asyncio.create_task(worker()) for _ in range(min(concurrency, requests))]
        _, pending = await asyncio.wait(tasks, timeout=duration)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        wall = time.perf_counter() - started
    return summarise(url, model, body, outcomes, requests=requests, concurrency=concurrency, wall=wall)


async def _check_ready(client: httpx.AsyncClient, url: str) -> str | None:
    """The served model's name, once /health says ok."""
    try:
        response = await client.get("/health")
    except httpx.HTTPError as exc:
        raise translate(exc, url) from None
    if response.status_code != 200:
        raise error_for(response)
    try:
        return response.json().get("model")
    except ValueError:
        raise ClientError(f"{url}/health did not answer with JSON; is this a MiniVault server?", GENERIC) from None


def summarise(url: str, model: str | None, body: dict[str, Any], outcomes: list[Outcome], *,
              requests: int, concurrency: int, wall: float) -> Report:
    """The report for a finished run."""
    done = [o for o in outcomes if o.ok]
    cut = [o for o in outcomes if o.cut_off]
    failed = [o for o in outcomes if not o.ok and not o.cut_off]
    errors: dict[str, int] = {}
    examples: dict[str, str] = {}
    for o in failed:
        key = o.error or str(o.status)
        errors[key] = errors.get(key, 0) + 1
        examples.setdefault(key, o.detail or key)
    tokens = sum(o.tokens for o in done)
    wall = max(wall, 1e-9)
    return Report(
        url=url, model=model, concurrency=concurrency, requests=requests, sent=len(outcomes),
        completed=len(done), failed=len(failed), cut_off=len(cut), errors=errors,
        error_examples=examples, wall_s=round(wall, 3),
        requests_per_s=round(len(done) / wall, 3), tokens=tokens, tokens_per_s=round(tokens / wall, 3),
        ttft_ms=stats([o.ttft for o in done if o.ttft is not None], 1000),
        itl_ms=stats([gap for o in done for gap in o.itl], 1000),
        latency_ms=stats([o.latency for o in done], 1000),
        stream_tokens_per_s=stats([r for o in done if (r := o.decode_rate) is not None]),
        params={k: v for k, v in body.items() if k != "prompt"} | {"prompt_chars": len(body.get("prompt", ""))},
    )


def run(url: str, body: dict[str, Any], *, requests: int, concurrency: int, duration: float,
        timeout: float = 300.0) -> Report:
    """Blocking wrapper around run_async."""
    return asyncio.run(run_async(url, body, requests=requests, concurrency=concurrency, duration=duration,
                                 timeout=timeout))


def to_json(report: Report) -> str:
    return msgspec.json.encode(report).decode()


def format_report(r: Report) -> str:
    """The human-readable report."""

    def row(label: str, s: Stats, unit: str) -> str:
        if not s.count:
            return f"{label:<16}-"
        return (f"{label:<16}p50 {s.p50:>9.2f}   p95 {s.p95:>9.2f}   p99 {s.p99:>9.2f}   "
                f"mean {s.mean:>9.2f} {unit}")

    errors = ", ".join(f"{k}: {v}" for k, v in sorted(r.errors.items())) or "none"
    lines = [
        f"MiniVault bench: {r.url} (model {r.model or '?'}), concurrency {r.concurrency}, "
        f"max_new_tokens {r.params.get('max_new_tokens', 'default')}",
        f"{'requests':<16}{r.sent} sent of {r.requests}: {r.completed} completed, {r.failed} failed, "
        f"{r.cut_off} cut off by --duration, in {r.wall_s:.2f} s",
        f"{'throughput':<16}{r.requests_per_s:.2f} req/s, {r.tokens_per_s:.1f} tokens/s aggregate "
        f"({r.tokens} tokens)",
        row("TTFT", r.ttft_ms, "ms"),
        row("ITL", r.itl_ms, "ms"),
        row("latency", r.latency_ms, "ms"),
        row("stream tok/s", r.stream_tokens_per_s, "tokens/s"),
        f"{'errors':<16}{errors}",
        *(f"{'':<16}{key}: {message}" for key, message in sorted(r.error_examples.items())),
    ]
    return "\n".join(lines)
