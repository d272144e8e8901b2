"""What the /v1 handlers share about jobs: admitting every choice as one group, waiting for them,
merging their streams, and the ids, usage and finish reasons they report."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable

from litestar import Request
from litestar.response import Stream

from service.api import sse
from service.api.families import openai_error
from service.api.native import _client_gone
from service.api.openai_convert import Plan, job_params, log_params, logit_bias
from service.api.request_id import request_id
from service.api.schemas_openai import CompletionUsage, PromptTokensDetails
from service.errors import ContextOverflow, GenerationFailed
from service.runtime.jobs import Job, JobGroup
from service.runtime.runtime import Runtime
from service.runtime.scheduler import Scheduler


def new_id(request: Request, prefix: str) -> str:
    """`<prefix>-<request id>`; it becomes the request's id everywhere (X-Request-ID, the log)."""
    state = request.scope["state"]
    state["request_id"] = f"{prefix}-{request_id(request.scope)}"
    return state["request_id"]


def usage(group: JobGroup, n: int) -> CompletionUsage:
    """OpenAI's usage: each prompt (and what the cache gave its first choice) counted once."""
    firsts = group.jobs[::n]
    prompt = sum(len(j.prompt_ids) for j in firsts)
    completion = sum(j.completion_tokens for j in group.jobs)
    cached = PromptTokensDetails(cached_tokens=sum(j.cached_tokens for j in firsts))
    return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                           prompt_tokens_details=cached)


def finish(job: Job) -> str:
    """The finish reason a choice reports."""
    return job.finish_reason or "error"


async def admit(runtime: Runtime, request: Request, data: Any,
                prompts: Callable[[Scheduler], list[tuple[str, list[int]]]], endpoint_id: str, plan: Plan,
                exclude: tuple[str, ...], inputs: dict[str, Any] | None = None,
                size: int | None = None) -> tuple[str, JobGroup, Scheduler]:
    """Validate everything, then admit every choice of every prompt as one group (or raise).

    `inputs` are request fields the log keeps beside the prompt (when it keeps prompts), for replay;
    `size` is the prompt's length in characters when known (a short one is tokenized inline).
    """
    async with runtime.serving(data.model) as scheduler:  # loads the model first if needed
        rid, group = await admit_to(scheduler, runtime, request, data, prompts, endpoint_id, plan, exclude, inputs,
                                    size)
    return rid, group, scheduler


async def admit_to(scheduler: Scheduler, runtime: Runtime, request: Request, data: Any,
                   prompts: Callable[[Scheduler], list[tuple[str, list[int]]]], endpoint_id: str, plan: Plan,
                   exclude: tuple[str, ...], inputs: dict[str, Any] | None,
                   size: int | None) -> tuple[str, JobGroup]:
    """admit's work on a loaded model: tokenize, check every choice's limits, admit the group."""
    scheduler.check_capacity()  # refuse at once under overload, before spending time on tokens
    planned = await runtime.prepare(prompts, scheduler, size=size)
    bias = logit_bias(data, scheduler.engine.vocab_size)
    ctx = scheduler.engine.context_length
    items = [(text, ids, job_params(data, plan, bias, ctx, len(ids), k))
             for text, ids in planned for k in range(data.n)]
    rid = new_id(request, endpoint_id)
    params = log_params(data, exclude)
    extra = {"user": data.user}

    def on_finish(group: JobGroup) -> None:
        runtime.record_group(group, request.url.path, params, extra, n=data.n, inputs=inputs)

    try:
        group = scheduler.admit_group(request.url.path, items, rid, on_finish,
                                      key_id=request.scope["state"].get("key_id"),
                                      cache_prompt=data.cache_prompt and runtime.settings.cache_prompt)
        request.scope["state"]["job"] = rid  # its jobs are counted in the metrics when they end
        return rid, group
    except ContextOverflow as exc:  # say it with this API's field name
        field = "max_tokens" if exc.field == "max_new_tokens" else exc.field
        raise ContextOverflow(exc.message.replace("max_new_tokens", "max_tokens"), field=field) from None


async def wait(request: Request, group: JobGroup) -> None:
    """Until every job ends; a client that leaves aborts them. A failed job fails the request."""
    gone = asyncio.ensure_future(_client_gone(request))
    done = asyncio.ensure_future(group.wait())
    try:
        await asyncio.wait({gone, done}, return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            group.abort()
            await group.wait()
    except asyncio.CancelledError:
        group.abort()
        raise
    finally:
        gone.cancel()
        done.cancel()
    for job in group.jobs:
        if job.error is not None:
            raise GenerationFailed(f"generation failed: {job.error}")


async def merged(group: JobGroup) -> AsyncIterator[tuple[int, str | None | GenerationFailed]]:
    """(choice index, piece) from every job as produced; (index, None) when one ends, or its error."""
    queue: asyncio.Queue = asyncio.Queue()

    async def forward(i: int, job: Job) -> None:
        try:
            async for piece in Scheduler.pieces(job):
                queue.put_nowait((i, piece))
            queue.put_nowait((i, None))
        except GenerationFailed as exc:
            queue.put_nowait((i, exc))

    tasks = [asyncio.ensure_future(forward(i, job)) for i, job in enumerate(group.jobs)]
    try:
        left = len(tasks)
        while left:
            i, item = await queue.get()
            left -= item is None or isinstance(item, GenerationFailed)
            yield i, item
    finally:
        group.abort()  # no-op for ended jobs; a client that left stops the rest
        for t in tasks:
            t.cancel()


def error_event(exc: GenerationFailed) -> bytes:
    """The SSE event that ends a /v1 stream whose generation failed, in OpenAI's error shape."""
    _, body = openai_error(500, "generation_failed", f"generation failed: {exc.message}")
    return sse.event(body)


def sse_stream(body: AsyncIterator[bytes]) -> Stream:
    """A Server-Sent Events response of `body`'s events."""
    return Stream(body, media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)
