"""The native API: /generate, /generate/stream, /tokenize, /detokenize.

Never imports an engine library: everything model-side goes through the Runtime.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, AsyncIterator

from litestar import Request, post
from litestar.datastructures import State
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Stream

from service.api import sse
from service.api.openai_docs import NATIVE_DOCS, NATIVE_STREAM_DOCS
from service.api.request_id import request_id
from service.api.schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorBody,
    ErrorDetail,
    GenerateRequest,
    GenerateResponse,
    Timings,
    TokenizeRequest,
    TokenizeResponse,
    Usage,
)
from service.api.streaming import StreamAborted
from service.engine.sampling import SamplingParams
from service.errors import GenerationFailed, ShuttingDown
from service.runtime.jobs import Job
from service.runtime.runtime import Runtime
from service.runtime.scheduler import Scheduler

_JSON = Body(media_type=RequestEncodingType.JSON)


def runtime_of(state: State) -> Runtime:
    """The Runtime the app's lifespan put on its state."""
    return state.runtime


def _request_id(request: Request) -> str:
    return request_id(request.scope)


async def _admit(runtime: Runtime, request: Request, data: GenerateRequest) -> Job:
    """Validate and admit before any response starts: every refusal is a plain error response."""
    async with runtime.serving(data.model) as scheduler:  # loads the model first if needed
        scheduler.check_capacity()  # refuse at once under overload, before spending time on tokens
        prompt_ids = await runtime.prepare(scheduler.tokenize, data.prompt, size=len(data.prompt))
        params = SamplingParams(
            max_new_tokens=data.max_new_tokens, temperature=data.temperature, top_k=data.top_k,
            top_p=data.top_p, repetition_penalty=data.repetition_penalty, seed=data.seed, stop=tuple(data.stop),
        )
        state = request.scope["state"]
        job = scheduler.admit(request.url.path, data.prompt, prompt_ids, params, _request_id(request),
                              key_id=state.get("key_id"),
                              cache_prompt=data.cache_prompt and runtime.settings.cache_prompt)
    state["job"] = job.id  # the job is counted in the metrics when it ends, not by the middleware
    return job


async def _client_gone(request: Request) -> None:
    """Return when the client disconnects (the body has been read, so only that can arrive)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


@post("/generate", status_code=200, summary="Generate a completion and return it whole", **NATIVE_DOCS)
async def generate(request: Request, data: Annotated[GenerateRequest, _JSON], state: State) -> GenerateResponse:
    """Generate text for a prompt; the response carries usage and timings."""
    runtime = runtime_of(state)
    job = await _admit(runtime, request, data)
    gone = asyncio.ensure_future(_client_gone(request))
    done = asyncio.ensure_future(job.done.wait())
    try:
        await asyncio.wait({gone, done}, return_when=asyncio.FIRST_COMPLETED)
        if not job.done.is_set():  # the client left: free the worker now
            job.abort()
            await job.done.wait()
    except asyncio.CancelledError:  # the server gave up on this request (end of the drain period)
        job.abort()
        raise
    finally:
        gone.cancel()
        done.cancel()
    if job.error is not None:
        raise GenerationFailed(f"generation failed: {job.error}")
    if job.shut_down:
        raise ShuttingDown("the server shut down before the generation finished; retry it",
                           retry_after=runtime.settings.retry_after_s)
    t = job.timings()
    return GenerateResponse(
        id=job.id, response=job.text, model=job.model_id, finish_reason=job.finish_reason or "error",
        usage=Usage(prompt_tokens=len(job.prompt_ids), completion_tokens=job.completion_tokens,
                    cached_tokens=job.cached_tokens),
        timings=Timings(**t),
    )


async def _plain_pieces(runtime: Runtime, job: Job) -> AsyncIterator[str]:
    """The job's text; a failure or a shutdown cut ends the stream without its final chunk."""
    try:
        async for piece in Scheduler.pieces(job):
            yield piece
    except GenerationFailed as exc:
        raise StreamAborted(f"generation failed: {exc.message}") from None
    if job.shut_down:
        raise StreamAborted("cancelled: the drain's grace period ran out")


async def _events(runtime: Runtime, job: Job) -> AsyncIterator[bytes]:
    """The native stream as SSE: a `{"text"}` event per piece, then `event: done` (or `event: error`)."""
    try:
        async for piece in Scheduler.pieces(job):
            yield sse.event({"text": piece})
    except GenerationFailed as exc:
        detail = ErrorDetail(type="generation_failed", message=f"generation failed: {exc.message}")
        yield sse.event(ErrorBody(error=detail), name="error")
        return
    if job.shut_down:
        detail = ErrorDetail(type="shutting_down", message="the server shut down before the generation finished")
        yield sse.event(ErrorBody(error=detail), name="error")
        return
    yield sse.event({
        "id": job.id, "finish_reason": job.finish_reason,
        "usage": Usage(prompt_tokens=len(job.prompt_ids), completion_tokens=job.completion_tokens),
        "timings": Timings(**job.timings()),
    }, name="done")


@post("/generate/stream", status_code=200, summary="Stream a completion token by token: plain text, or SSE",
      **NATIVE_STREAM_DOCS)
async def generate_stream(request: Request, data: Annotated[GenerateRequest, _JSON], state: State) -> Stream:
    """Stream each token's text as it is produced: text/plain, chunked; with `Accept: text/event-stream`,
    Server-Sent Events ending with a `done` event (finish_reason, usage, timings) or an `error` event.

    A plain-text stream whose generation fails after the headers are out is ended abnormally (no
    final chunk), so that clients report an error instead of a short text.
    """
    runtime = runtime_of(state)
    job = await _admit(runtime, request, data)
    if sse.wants_sse(request):
        return Stream(_events(runtime, job), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)
    return Stream(
        _plain_pieces(runtime, job),
        media_type="text/plain",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@post("/tokenize", status_code=200, summary="Token ids of a text, as the engine counts them", **NATIVE_DOCS)
async def tokenize(data: Annotated[TokenizeRequest, _JSON], state: State) -> TokenizeResponse:
    """Tokenize with the same tokenizer the engine uses."""
    runtime = runtime_of(state)
    async with runtime.serving(data.model) as scheduler:
        tokens = await runtime.prepare(scheduler.tokenize, data.text, size=len(data.text))
    return TokenizeResponse(tokens=tokens, count=len(tokens))


@post("/detokenize", status_code=200, summary="Text of a list of token ids", **NATIVE_DOCS)
async def detokenize(data: Annotated[DetokenizeRequest, _JSON], state: State) -> DetokenizeResponse:
    """Turn token ids back into text; an id outside the vocabulary is an error naming it."""
    runtime = runtime_of(state)
    async with runtime.serving(data.model) as scheduler:
        text = await runtime.prepare(scheduler.detokenize, data.tokens, size=len(data.tokens))
    return DetokenizeResponse(text=text)


HANDLERS = [generate, generate_stream, tokenize, detokenize]
