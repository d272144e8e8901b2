"""The OpenAI-compatible API: /v1/completions, /v1/chat/completions, /v1/models.

Each choice (n per prompt) is its own job, admitted all together or not at all; the request's one
log record is written when the last job ends (Runtime.record_group), whatever its client does
(the job plumbing: api/openai_jobs.py).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, AsyncIterator

import msgspec
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath
from litestar.response import Response

from service.api import openai_jobs as jobs
from service.api import sse
from service.api.native import runtime_of
from service.api.openai_convert import (
    LegacyBuilder,
    chat_logprobs,
    chat_plan,
    chat_transcript,
    check_completion_fields,
    completion_plan,
    completion_prompts,
    lookup_model,
)
from service.api.openai_docs import CHAT_DOCS, COMPLETION_DOCS, MODEL_DOCS
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
    Model,
    ModelList,
)
from service.errors import GenerationFailed
from service.runtime.jobs import Job

_JSON = Body(media_type=RequestEncodingType.JSON)


@post("/v1/completions", status_code=200, summary="OpenAI Completions (legacy): text, JSON or SSE stream",
      **COMPLETION_DOCS)
async def completions(request: Request, data: Annotated[CompletionRequest, _JSON], state: State) -> Response:
    """Complete one or more prompts; `n` choices each; `stream` answers Server-Sent Events."""
    runtime = runtime_of(state)
    model = lookup_model(runtime, data.model)
    check_completion_fields(data)
    rid, group, scheduler = await jobs.admit(runtime, request, data, lambda s: completion_prompts(s, data.prompt),
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
        await jobs.wait(request, group)
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
                                            finish_reason=jobs.finish(job)))
        return Response(Completion(id=rid, created=created, model=model, choices=choices,
                                   usage=jobs.usage(group, data.n)))

    async def events() -> AsyncIterator[bytes]:
        builders = [LegacyBuilder(token_bytes) for _ in group.jobs]
        sent = [0] * len(group.jobs)  # tokens whose logprobs are out
        started = [False] * len(group.jobs)

        def chunk(i: int, text: str, lp: Any, finish: str | None) -> bytes:
            return sse.event(Completion(id=rid, created=created, model=model, choices=[
                CompletionChoice(index=i, text=text, logprobs=lp, finish_reason=finish)]))

        async for i, item in jobs.merged(group):
            job = group.jobs[i]
            if isinstance(item, GenerationFailed):
                yield jobs.error_event(item)
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
                yield chunk(i, "", lp, jobs.finish(job))
            else:
                yield chunk(i, item, lp, None)
        if data.stream_options and data.stream_options.include_usage:
            yield sse.event(Completion(id=rid, created=created, model=model, choices=[], usage=jobs.usage(group, data.n)))
        yield sse.DONE

    return jobs.sse_stream(events())


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
    rid, group, scheduler = await jobs.admit(runtime, request, data, lambda s: [(transcript, s.tokenize(transcript))],
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
        await jobs.wait(request, group)
        choices = [ChatChoice(index=i, message=ChatMessageOut(role="assistant", content=job.text.lstrip()),
                              logprobs=lp_of(job, 0), finish_reason=jobs.finish(job))
                   for i, job in enumerate(group.jobs)]
        return Response(ChatCompletion(id=rid, created=created, model=model, choices=choices,
                                       usage=jobs.usage(group, data.n)))

    async def events() -> AsyncIterator[bytes]:
        def chunk(i: int, delta: ChatDelta, lp: Any = None, finish: str | None = None) -> bytes:
            return sse.event(ChatCompletionChunk(id=rid, created=created, model=model, choices=[
                ChatChunkChoice(index=i, delta=delta, logprobs=lp, finish_reason=finish)]))

        for i in range(len(group.jobs)):
            yield chunk(i, ChatDelta(role="assistant", content=""))
        sent = [0] * len(group.jobs)
        text_started = [False] * len(group.jobs)
        async for i, item in jobs.merged(group):
            job = group.jobs[i]
            if isinstance(item, GenerationFailed):
                yield jobs.error_event(item)
                return
            lp = lp_of(job, sent[i])
            sent[i] = len(job.generation.tokens) if job.generation else 0
            if item is None:
                yield chunk(i, ChatDelta(), lp, jobs.finish(job))
                continue
            if not text_started[i]:
                item = item.lstrip()  # the space after `Assistant:` is the transcript's, not the reply's
                text_started[i] = bool(item)
            if item or lp is not None:
                yield chunk(i, ChatDelta(content=item), lp)
        if data.stream_options and data.stream_options.include_usage:
            yield sse.event(ChatCompletionChunk(id=rid, created=created, model=model, choices=[],
                                                usage=jobs.usage(group, data.n)))
        yield sse.DONE

    return jobs.sse_stream(events())


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
