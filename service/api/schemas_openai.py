"""Request and response bodies of the OpenAI-compatible /v1 API; limits as reusable Annotated aliases."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from service.api.schemas import (
    MAX_CONTEXT,
    Base,
    CachePrompt,
    RepetitionPenalty,
    Seed,
    StopString,
    TokenId,
    TopK,
)

MAX_CHOICES = 8  # n: choices per prompt (each is its own job; all must fit the queue at once)
MAX_PROMPTS = 16  # prompts in one /v1/completions request
MAX_LOGPROBS = 5  # OpenAI's legacy limit on `logprobs`

ModelId = Annotated[str, Meta(min_length=1, max_length=256, description="The model's id (see /v1/models); "
                              "omit it for the served model.")]
PromptText = Annotated[str, Meta(max_length=200_000)]
TokenIds = Annotated[list[TokenId], Meta(min_length=1, max_length=MAX_CONTEXT)]
CompletionPrompt = (
    PromptText
    | Annotated[
        list[PromptText | TokenId | TokenIds],
        Meta(min_length=1, max_length=MAX_CONTEXT, description=(
            f"A string, a list of strings, a list of token ids (up to {MAX_CONTEXT}), or a list of token-id lists "
            f"(at most {MAX_PROMPTS} prompts); each prompt gives `n` choices.")),
    ]
)
MaxTokens = Annotated[int, Meta(ge=0, le=MAX_CONTEXT, description=(
    "Tokens to generate at most (0: only score/echo the prompt); null: up to the context left."))]
OAITemperature = Annotated[float, Meta(ge=0.0, le=2.0, description="Sampling temperature; 0 means greedy.")]
OAITopP = Annotated[float, Meta(gt=0.0, le=1.0, description="Nucleus sampling: smallest set of tokens with this mass.")]
Choices = Annotated[int, Meta(ge=1, le=MAX_CHOICES, description=f"Choices per prompt (1 to {MAX_CHOICES}).")]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0, description="OpenAI's additive penalty, -2 to 2.")]
Bias = Annotated[float, Meta(ge=-100.0, le=100.0)]
LogitBias = Annotated[dict[str, Bias], Meta(max_length=1024, description=(
    "Token id (as a string) -> -100..100 added to its logit; at most 1024 entries."))]
Logprobs = Annotated[int, Meta(ge=0, le=MAX_LOGPROBS, description=(
    f"Return each token's log-probability and this many (0 to {MAX_LOGPROBS}) most likely alternatives."))]
TopLogprobs = Annotated[int, Meta(ge=0, le=MAX_LOGPROBS, description=f"Alternatives per token, 0 to {MAX_LOGPROBS}.")]
Stop = StopString | Annotated[list[StopString], Meta(max_length=4, description=(
    "A string or up to 4 strings (each 1 to 256 characters) that end generation; not returned."))]
User = Annotated[str, Meta(max_length=256, description="An end-user id, recorded in the log.")]
Role = Literal["system", "developer", "user", "assistant"]


class StreamOptions(Base):
    include_usage: bool = False


class _Sampling(Base):
    """The sampling fields /v1/completions and /v1/chat/completions share."""

    model: ModelId | None = None
    max_tokens: MaxTokens | None = 16
    temperature: OAITemperature = 1.0
    top_p: OAITopP = 1.0
    n: Choices = 1
    stop: Stop | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: Seed | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: LogitBias | None = None
    user: User | None = None
    top_k: TopK = 0  # MiniVault's extra; 0 is off, as OpenAI has no top-k
    repetition_penalty: RepetitionPenalty = 1.0  # MiniVault's extra; 1 is off
    cache_prompt: CachePrompt = True  # MiniVault's extra, as on the native API (llama-server's name)


class CompletionRequest(_Sampling, kw_only=True):
    """OpenAI's legacy Completions request."""

    prompt: CompletionPrompt
    logprobs: Logprobs | None = None
    echo: bool = False
    suffix: str | None = None  # refused: GPT-2 does no infilling
    best_of: int | None = None  # refused unless equal to n


class TextPart(Base):
    type: Literal["text"]
    text: str


class ChatMessage(Base):
    role: Role
    content: Annotated[str, Meta(max_length=200_000)] | Annotated[list[TextPart], Meta(max_length=64)]
    name: Annotated[str, Meta(max_length=64)] | None = None


class ChatRequest(_Sampling, kw_only=True):
    """OpenAI's Chat Completions request, for a base model (see the README's transcript format)."""

    messages: Annotated[list[ChatMessage], Meta(min_length=1, max_length=256)]
    max_completion_tokens: MaxTokens | None = None  # the newer name of max_tokens; wins if given
    logprobs: bool = False
    top_logprobs: TopLogprobs | None = None


# --- responses ---------------------------------------------------------------------------------
class PromptTokensDetails(msgspec.Struct):
    cached_tokens: Annotated[int, Meta(ge=0, description=(
        "Prompt tokens served from the model instance's KV state (prefix reuse) instead of being "
        "evaluated; counted, like `prompt_tokens`, once per prompt (its first choice)."))]


class CompletionUsage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class LegacyLogprobs(msgspec.Struct):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(msgspec.Struct):
    index: int
    text: str
    logprobs: LegacyLogprobs | None
    finish_reason: str | None


class Completion(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    object: Literal["text_completion"] = "text_completion"
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None


class TopLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(msgspec.Struct):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChatLogprobs(msgspec.Struct):
    content: list[ChatTokenLogprob]


class ChatMessageOut(msgspec.Struct):
    role: Literal["assistant"]
    content: str


class ChatChoice(msgspec.Struct):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None
    finish_reason: str | None


class ChatCompletion(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage
    object: Literal["chat.completion"] = "chat.completion"
    system_fingerprint: str | None = None


class ChatDelta(msgspec.Struct, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(msgspec.Struct):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: str | None


class ChatCompletionChunk(msgspec.Struct):
    id: str
    created: int
    model: str
    choices: list[ChatChunkChoice]
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    usage: CompletionUsage | None = None


class Model(msgspec.Struct):
    id: str
    created: int
    size_bytes: int
    context_length: int | None = None  # None: the file's header cannot be read (its state says why)
    quantization: str | None = None
    vocab_size: int | None = None
    state: Literal["unloaded", "loading", "loaded", "error"] = "loaded"  # MiniVault's: loaded on demand
    engine: Literal["ctransformers", "llamacpp"] = "ctransformers"  # which library runs it
    object: Literal["model"] = "model"
    owned_by: str = "minivault"


class ModelList(msgspec.Struct):
    data: list[Model]
    object: Literal["list"] = "list"


class OpenAIErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(msgspec.Struct):
    error: OpenAIErrorDetail
