"""The OpenAI-compatible API: /v1/completions, /v1/chat/completions, /v1/models.

Each choice (n per prompt) is its own job, admitted all together or not at all; the request's one
log record is written when the last job ends (Runtime.record_group), whatever its client does.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, AsyncIterator, Callable

import msgspec
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath
from litestar.response import Response, Stream

from service.api import sse
from service.api.families import openai_error
from service.api.native import _client_gone, runtime_of
from service.api.openai_convert import (
    LegacyBuilder,
    Plan,
    chat_logprobs,
    chat_plan,
    chat_transcript,
    check_completion_fields,
    completion_plan,
    completion_prompts,
    job_params,
    log_params,
    logit_bias,
    lookup_model,
)
from service.api.openai_docs import CHAT_DOCS, COMPLETION_DOCS, MODEL_DOCS
from service.api.request_id import request_id
from service.api.schemas_openai import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatMessageOut,
    ChatRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    CompletionUsage,
    Model,
    ModelList,
    PromptTokensDetails,
)
from service.errors import ContextOverflow, GenerationFailed
from service.runtime.jobs import Job, JobGroup
from service.runtime.runtime import Runtime
from service.runtime.scheduler import Scheduler

_JSON = Body(media_type=RequestEncodingType.JSON)


def _new_id(request: Request, prefix: str) -> str:
    """`<prefix>-<request id>`; it becomes the request's id everywhere (X-Request-ID, the log)."""
    state = request.scope["state"]
    state["request_id"] = f"{prefix}-{request_id(request.scope)}"
    return state["request_id"]


def _usage(group: JobGroup, n: int) -> CompletionUsage:
    """OpenAI's usage: each prompt (and what the cache gave its first choice) counted once."""
    firsts = group.jobs[::n]
    prompt = sum(len(j.prompt_ids) for j in firsts)
    completion = sum(j.completion_tokens for j in group.jobs)
    cached = PromptTokensDetails(cached_tokens=sum(j.cached_tokens for j in firsts))
    return CompletionUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                           prompt_tokens_details=cached)


def _finish(job: Job) -> str:
    return job.finish_reason or "error"


async def _admit(runtime: Runtime, request: Request, data: Any,
                 prompts: Callable[[Scheduler], list[tuple[str, list[int]]]], endpoint_id: str, plan: Plan,
                 exclude: tuple[str, ...], inputs: dict[str, Any] | None = None,
                 size: int | None = None) -> tuple[str, JobGroup, Scheduler]:
    """Validate everything, then admit every choice of every prompt as one group (or raise).

    `inputs` are request fields the log keeps beside the prompt (when it keeps prompts), for replay;
    `size` is the prompt's length in characters when known (a short one is tokenized inline).
    """
    async with runtime.serving(data.model) as scheduler:  # loads the model first if needed
        rid, group = await _admit_to(scheduler, runtime, request, data, prompts, endpoint_id, plan, exclude, inputs,
                                     size)
    return rid, group, scheduler


async def _admit_to(scheduler: Scheduler, runtime: Runtime, request: Request, data: Any,
                    prompts: Callable[[Scheduler], list[tuple[str, list[int]]]], endpoint_id: str, plan: Plan,
                    exclude: tuple[str, ...], inputs: dict[str, Any] | None,
                    size: int | None) -> tuple[str, JobGroup]:
    scheduler.check_capacity()  # refuse at once under overload, before spending time on tokens
    planned = await runtime.prepare(prompts, scheduler, size=size)
    bias = logit_bias(data, scheduler.engine.vocab_size)
    ctx = scheduler.engine.context_length
    items = [(text, ids, job_params(data, plan, bias, ctx, len(ids), k))
             for text, ids in planned for k in range(data.n)]
    rid = _new_id(request, endpoint_id)
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


async def _wait(request: Request, group: JobGroup) -> None:
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


async def _merged(runtime: Runtime, group: JobGroup) -> AsyncIterator[tuple[int, str | None | GenerationFailed]]:
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


def _error_event(exc: GenerationFailed) -> bytes:
    _, body = openai_error(500, "generation_failed", f"generation failed: {exc.message}")
    return sse.event(body)


def _stream(body: AsyncIterator[bytes]) -> Stream:
    return Stream(body, media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)


@post("/v1/completions", status_code=200, summary="OpenAI Completions (legacy): text, JSON or SSE stream",
      **COMPLETION_DOCS)
async def completions(request: Request, data: Annotated[CompletionRequest, _JSON], state: State) -> Response:
    """Complete one or more prompts; `n` choices each; `stream` answers Server-Sent Events."""
    runtime = runtime_of(state)
    model = lookup_model(runtime, data.model)
    check_completion_fields(data)
    rid, group, scheduler = await _admit(runtime, request, data, lambda s: completion_prompts(s, data.prompt),
                                         "cmpl", completion_plan(data), ("prompt",),
                                         size=len(data.prompt) if isinstance(data.prompt, str) else None)
    created = int(time.time())
    token_bytes = scheduler.engine.tokenizer.token_bytes

    def echo_part(job: Job, builder: LegacyBuilder) -> tuple[str, Any]:
        """The echoed prompt and (with logprobs) its scores; moves the builder's offset past it."""
        if not data.echo:
            return "", None
        scores = job.generation.prompt_logprobs if job.generation else None
        if data.logprobs is None or scores is None:
            builder.offset += len(job.prompt)
            return job.prompt, None
        return job.prompt, builder.build(job.prompt_ids, scores)

    def completion_part(job: Job, builder: LegacyBuilder, start: int, limit: int | None) -> Any:
        if data.logprobs is None or job.generation is None:
            return None
        gen = job.generation
        end = min(len(gen.tokens), len(gen.sampler.logprobs))
        return builder.build(gen.tokens[start:end], gen.sampler.logprobs[start:end], limit)

    if not data.stream:
        await _wait(request, group)
        choices = []
        for i, job in enumerate(group.jobs):
            builder = LegacyBuilder(token_bytes)
            echo_text, echo_lp_ = echo_part(job, builder)
            lp = completion_part(job, builder, 0, builder.offset + len(job.text))
            if echo_lp_ is not None and lp is not None:
                for f in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                    getattr(echo_lp_, f).extend(getattr(lp, f))
                lp = echo_lp_
            elif echo_lp_ is not None:
                lp = echo_lp_
            choices.append(CompletionChoice(index=i, text=echo_text + job.text, logprobs=lp,
                                            finish_reason=_finish(job)))
        return Response(Completion(id=rid, created=created, model=model, choices=choices,
                                   usage=_usage(group, data.n)))

    async def events() -> AsyncIterator[bytes]:
        builders = [LegacyBuilder(token_bytes) for _ in group.jobs]
        sent = [0] * len(group.jobs)  # tokens whose logprobs are out
        started = [False] * len(group.jobs)

        def chunk(i: int, text: str, lp: Any, finish: str | None) -> bytes:
            return sse.event(Completion(id=rid, created=created, model=model, choices=[
                CompletionChoice(index=i, text=text, logprobs=lp, finish_reason=finish)]))

        async for i, item in _merged(runtime, group):
            job = group.jobs[i]
            if isinstance(item, GenerationFailed):
                yield _error_event(item)
                return
            if not started[i]:
                started[i] = True
                if data.echo:
                    text, lp = echo_part(job, builders[i])
                    yield chunk(i, text, lp, None)
            end = len(job.generation.tokens) if job.generation else 0
            lp = completion_part(job, builders[i], sent[i], None)
            sent[i] = end
            if item is None:
                yield chunk(i, "", lp, _finish(job))
            else:
                yield chunk(i, item, lp, None)
        if data.stream_options and data.stream_options.include_usage:
            yield sse.event(Completion(id=rid, created=created, model=model, choices=[], usage=_usage(group, data.n)))
        yield sse.DONE

    return _stream(events())


@post("/v1/chat/completions", status_code=200, summary="OpenAI Chat Completions over a plain transcript",
      **CHAT_DOCS)
async def chat_completions(request: Request, data: Annotated[ChatRequest, _JSON], state: State) -> Response:
    """Reply to a conversation: a `System:`/`User:`/`Assistant:` transcript, stopping at the next turn."""
    runtime = runtime_of(state)
    model = lookup_model(runtime, data.model)
    transcript = chat_transcript(data.messages)
    plan = chat_plan(data)
    top = plan.logprobs
    # the messages are logged too: the transcript alone cannot be sent to this endpoint again
    rid, group, scheduler = await _admit(runtime, request, data, lambda s: [(transcript, s.tokenize(transcript))],
                                         "chatcmpl", plan, ("messages",), {"messages": msgspec.to_builtins(data.messages)},
                                         size=len(transcript))
    created = int(time.time())
    token_bytes = scheduler.engine.tokenizer.token_bytes

    def lp_of(job: Job, start: int) -> Any:
        if top is None or job.generation is None:
            return None
        gen = job.generation
        end = min(len(gen.tokens), len(gen.sampler.logprobs))
        return chat_logprobs(token_bytes, gen.tokens[start:end], gen.sampler.logprobs[start:end])

    if not data.stream:
        await _wait(request, group)
        choices = [ChatChoice(index=i, message=ChatMessageOut(role="assistant", content=job.text.lstrip()),
                              logprobs=lp_of(job, 0), finish_reason=_finish(job))
                   for i, job in enumerate(group.jobs)]
        return Response(ChatCompletion(id=rid, created=created, model=model, choices=choices,
                                       usage=_usage(group, data.n)))

    async def events() -> AsyncIterator[bytes]:
        def chunk(i: int, delta: ChatDelta, lp: Any = None, finish: str | None = None) -> bytes:
            return sse.event(ChatCompletionChunk(id=rid, created=created, model=model, choices=[
                ChatChunkChoice(index=i, delta=delta, logprobs=lp, finish_reason=finish)]))

        for i in range(len(group.jobs)):
            yield chunk(i, ChatDelta(role="assistant", content=""))
        sent = [0] * len(group.jobs)
        text_started = [False] * len(group.jobs)
        async for i, item in _merged(runtime, group):
            job = group.jobs[i]
            if isinstance(item, GenerationFailed):
                yield _error_event(item)
                return
            lp = lp_of(job, sent[i])
            sent[i] = len(job.generation.tokens) if job.generation else 0
            if item is None:
                yield chunk(i, ChatDelta(), lp, _finish(job))
                continue
            if not text_started[i]:
                item = item.lstrip()  # the space after `Assistant:` is the transcript's, not the reply's
                text_started[i] = bool(item)
            if item or lp is not None:
                yield chunk(i, ChatDelta(content=item), lp)
        if data.stream_options and data.stream_options.include_usage:
            yield sse.event(ChatCompletionChunk(id=rid, created=created, model=model, choices=[],
                                                usage=_usage(group, data.n)))
        yield sse.DONE

    return _stream(events())


def _model(slot: Any) -> Model:
    """An installed model's /v1/models entry, with MiniVault's extras (read from its file's header)."""
    st = slot.path.stat()
    model = Model(id=slot.id, created=int(st.st_mtime), size_bytes=st.st_size, state=slot.state,
                  engine=slot.engine)
    try:
        hp = slot.header().hparams
    except ValueError:  # not a GPT-2 GGML file: listed all the same, its load fails with the reason
        return model
    model.context_length, model.quantization, model.vocab_size = hp.n_ctx, hp.ftype, hp.n_vocab
    return model


@get("/v1/models", summary="The models installed, each with its state (OpenAI's model list)", sync_to_thread=True,
     **MODEL_DOCS)
def list_models(state: State) -> ModelList:
    """Every model this server answers for, loaded or not."""
    return ModelList(data=[_model(slot) for slot in list(runtime_of(state).models.slots.values())])


@get("/v1/models/{model_id:str}", summary="One model (OpenAI's model object)", sync_to_thread=True, **MODEL_DOCS)
def retrieve_model(model_id: FromPath[str], state: State) -> Model:
    """The model with this id; 404 names the models available."""
    return _model(runtime_of(state).models.resolve(model_id))


HANDLERS = [completions, chat_completions, list_models, retrieve_model]
