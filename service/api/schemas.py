"""Request and response bodies; limits are reusable Annotated aliases so OpenAPI documents them."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

MAX_CONTEXT = 1024  # GPT-2's context; the loaded model's own n_ctx is checked at admission

Prompt = Annotated[str, Meta(min_length=1, max_length=200_000, description="The text to continue (non-empty).")]
MaxNewTokens = Annotated[
    int, Meta(ge=1, le=MAX_CONTEXT, description="Tokens to generate at most; prompt + this must fit the model's context.")
]
Temperature = Annotated[float, Meta(ge=0.0, le=5.0, description="Sampling temperature; 0 means greedy.")]
TopK = Annotated[int, Meta(ge=0, le=1_000_000, description="Sample from the k most likely tokens; 0 turns it off.")]
TopP = Annotated[float, Meta(gt=0.0, le=1.0, description="Nucleus sampling: smallest set of tokens with this mass.")]
RepetitionPenalty = Annotated[
    float, Meta(gt=0.0, le=10.0, description="Divide (or multiply) logits of already-seen tokens; 1 is off.")
]
Seed = Annotated[int, Meta(ge=0, le=2**63 - 1, description="Same seed and parameters give the same text.")]
StopString = Annotated[str, Meta(min_length=1, max_length=256)]
StopList = Annotated[
    list[StopString], Meta(max_length=4, description="Up to 4 strings that end generation; not returned.")
]
TokenId = Annotated[int, Meta(ge=0, le=2**31 - 1)]
CachePrompt = Annotated[
    bool, Meta(description="Reuse the KV state of a prompt prefix the model instance already holds "
                           "(same results, faster first token); false evaluates the whole prompt.")
]

ModelId = Annotated[str, Meta(min_length=1, max_length=256, description=(
    "The model to use, by the id /v1/models lists; without it the default model (MINIVAULT_MODEL, "
    "else the only one installed)."))]

FinishReason = Literal["stop", "length", "timeout", "cancelled", "error"]


class Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Shared options: unknown fields are an error, fields are keyword-only."""


class GenerateRequest(Base):
    """A generation request; only `prompt` is required."""

    prompt: Prompt
    max_new_tokens: MaxNewTokens = 128
    temperature: Temperature = 0.8
    top_k: TopK = 40
    top_p: TopP = 0.95
    repetition_penalty: RepetitionPenalty = 1.1
    seed: Seed | None = None
    stop: StopList = msgspec.field(default_factory=list)
    cache_prompt: CachePrompt = True
    model: ModelId | None = None


class Usage(Base):
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens served from the instance's KV state, not evaluated


class Timings(Base):
    queue_ms: float
    first_token_ms: float | None
    total_ms: float
    tokens_per_second: float  # decode only: completion tokens over decode_ms
    prompt_ms: float | None = None  # evaluating the prompt (its uncached part), until its logits
    prompt_tokens_per_second: float | None = None  # evaluated prompt tokens over prompt_ms
    decode_ms: float = 0.0  # from the prompt's logits to the last token


class GenerateResponse(Base):
    id: str
    response: str
    model: str
    finish_reason: FinishReason
    usage: Usage
    timings: Timings


class TokenizeRequest(Base):
    text: Annotated[str, Meta(max_length=200_000, description="Text to tokenize.")]
    model: ModelId | None = None


class TokenizeResponse(Base):
    tokens: list[int]
    count: int


class DetokenizeRequest(Base):
    tokens: Annotated[list[TokenId], Meta(max_length=100_000, description="Token ids to turn back into text.")]
    model: ModelId | None = None


class DetokenizeResponse(Base):
    text: str


class ModelHealth(Base, omit_defaults=True):
    """One installed model's state."""

    id: str
    state: Literal["unloaded", "loading", "loaded", "error"]
    engine: str
    workers: int
    threads: int
    detail: str | None = None  # why it is in `error`
    busy: int | None = None
    queued: int | None = None
    model_sha256: str | None = None
    load_seconds: float | None = None
    memory_mb: float | None = None  # resident memory its load added, measured


class Health(Base, omit_defaults=True):
    """200 while the server runs (503 draining); `model` and its fields are the default model's."""

    status: Literal["ok", "draining"]
    model: str | None = None  # the default model's id (None with several and no MINIVAULT_MODEL)
    state: str | None = None  # the default model's state
    detail: str | None = None
    manifest: dict | None = None
    model_sha256: str | None = None
    engine: str | None = None
    workers: int | None = None  # the sums over loaded models
    busy: int | None = None
    queued: int | None = None
    models: list[ModelHealth] = msgspec.field(default_factory=list)


class ErrorDetail(Base):
    type: str
    message: str
    field: str | None = None


class ErrorBody(Base):
    error: ErrorDetail
