"""Between OpenAI's /v1 shapes and MiniVault's jobs: model lookup, prompts, sampling, logprobs, chat transcript."""

from __future__ import annotations

import codecs
from typing import Any, NamedTuple, Sequence

import msgspec

from service.api.schemas_openai import (
    MAX_PROMPTS,
    ChatLogprobs,
    ChatMessage,
    ChatRequest,
    ChatTokenLogprob,
    CompletionRequest,
    LegacyLogprobs,
    TopLogprob,
)
from service.engine.sampling import SamplingParams, TokenLogprob
from service.errors import InvalidRequest, UnknownToken
from service.runtime.runtime import Runtime
from service.runtime.scheduler import Scheduler

# The chat transcript for base models without a chat template (documented in the README).
CHAT_LABELS = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
CHAT_STOPS = ("\nUser:", "\nSystem:", "\nAssistant:")  # the next turn marker ends the assistant's turn


def lookup_model(runtime: Runtime, requested: str | None) -> str:
    """The id of the model a request asks for (None: the default); UnknownModel names those served.

    The id in responses is the one /v1/models lists.
    """
    return runtime.models.resolve(requested).id


def check_completion_fields(data: CompletionRequest) -> None:
    """Refuse what MiniVault does not do, naming the field."""
    if data.suffix is not None:
        raise InvalidRequest("suffix: not supported (GPT-2 models do not fill in text); leave it out", field="suffix")
    if data.best_of is not None and data.best_of != data.n:
        raise InvalidRequest(f"best_of: only best_of equal to n ({data.n}) is supported", field="best_of")


def completion_prompts(scheduler: Scheduler, prompt: str | list[Any]) -> list[tuple[str, list[int]]]:
    """(text, token ids) for each prompt of a /v1/completions request (call from a thread)."""
    if isinstance(prompt, str):
        prompts: list[Any] = [prompt]
    elif all(isinstance(p, int) for p in prompt):
        prompts = [list(prompt)]
    elif all(isinstance(p, str) for p in prompt) or all(isinstance(p, list) for p in prompt):
        prompts = list(prompt)
    else:
        raise InvalidRequest("prompt: a list must hold only strings, only token ids, or only token-id lists",
                             field="prompt")
    if len(prompts) > MAX_PROMPTS:
        raise InvalidRequest(f"prompt: at most {MAX_PROMPTS} prompts in one request, got {len(prompts)}",
                             field="prompt")
    out = []
    eos = scheduler.engine.eos_id
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            out.append((p, scheduler.tokenize(p) if p else [eos]))  # OpenAI starts an empty prompt at end-of-text
        else:
            where = "prompt" if len(prompts) == 1 and isinstance(prompt[0], int) else f"prompt[{i}]"
            try:
                text = scheduler.detokenize(p)
            except UnknownToken as exc:
                raise UnknownToken(exc.message.replace("(at index", f"in {where} (at index"), field=where) from None
            out.append((text, list(p)))
    return out


def logit_bias(data: Any, vocab_size: int) -> tuple[tuple[int, float], ...]:
    """The request's logit_bias as (token id, bias) pairs, each id checked against the vocabulary."""
    pairs = []
    for key, bias in (data.logit_bias or {}).items():
        if not key.isdigit() or not 0 <= int(key) < vocab_size:
            raise InvalidRequest(f"logit_bias: key `{key}` is not a token id (0 to {vocab_size - 1})",
                                 field=f"logit_bias.{key}")
        pairs.append((int(key), bias))
    return tuple(pairs)


def stops(data: Any) -> tuple[str, ...]:
    """The request's stop strings as a tuple."""
    return (data.stop,) if isinstance(data.stop, str) else tuple(data.stop or ())


def choice_params(data: Any, max_new_tokens: int, stop: tuple[str, ...], bias: tuple[tuple[int, float], ...],
                  logprobs: int | None, prompt_logprobs: int | None, choice: int) -> SamplingParams:
    """SamplingParams of one choice; choice k of a seeded request uses seed + k, so choices differ."""
    seed = None if data.seed is None else (data.seed + choice) % 2**63
    return SamplingParams(
        max_new_tokens=max_new_tokens, temperature=data.temperature, top_k=data.top_k, top_p=data.top_p,
        repetition_penalty=data.repetition_penalty, seed=seed, stop=stop,
        presence_penalty=data.presence_penalty, frequency_penalty=data.frequency_penalty, logit_bias=bias,
        logprobs=logprobs, prompt_logprobs=prompt_logprobs,
    )


class Plan(NamedTuple):
    """What an endpoint takes from its request for every one of its jobs."""

    stop: tuple[str, ...]
    logprobs: int | None
    prompt_logprobs: int | None
    max_tokens: int | None


def completion_plan(data: CompletionRequest) -> Plan:
    """/v1/completions: its stop strings, logprobs (the prompt's too when echoed) and max_tokens."""
    echo_lp = data.logprobs if data.echo and data.logprobs is not None else None
    return Plan(stops(data), data.logprobs, echo_lp, data.max_tokens)


def chat_plan(data: ChatRequest) -> Plan:
    """/v1/chat/completions: its stops plus the next turn's markers, top_logprobs, max tokens."""
    top = (data.top_logprobs or 0) if data.logprobs else None
    return Plan(stops(data) + CHAT_STOPS, top, None, chat_max_tokens(data))


def job_params(data: Any, plan: Plan, bias: tuple[tuple[int, float], ...], context_length: int,
               prompt_tokens: int, choice: int) -> SamplingParams:
    """SamplingParams of choice `choice` of a prompt; the server and `minivault replay --local` share it."""
    return choice_params(data, max_new_tokens(plan.max_tokens, context_length, prompt_tokens), plan.stop, bias,
                         plan.logprobs, plan.prompt_logprobs, choice)


def max_new_tokens(requested: int | None, context_length: int, prompt_tokens: int) -> int:
    """max_tokens, or (null) every token the context has left."""
    return max(0, context_length - prompt_tokens) if requested is None else requested


def log_params(data: Any, exclude: Sequence[str]) -> dict[str, Any]:
    """The request's parameters under OpenAI's names, for the log record (no prompt/messages)."""
    params = msgspec.to_builtins(data)
    return {k: v for k, v in params.items() if k not in exclude}


def chat_transcript(messages: Sequence[ChatMessage]) -> str:
    """`System: ...` / `User: ...` / `Assistant: ...` lines, ending with `Assistant:` for the reply."""
    lines = []
    for m in messages:
        text = m.content if isinstance(m.content, str) else "".join(part.text for part in m.content)
        lines.append(f"{CHAT_LABELS[m.role]}: {text}")
    return "\n".join(lines) + "\nAssistant:"


def chat_max_tokens(data: ChatRequest) -> int | None:
    """max_completion_tokens if given, else max_tokens."""
    return data.max_completion_tokens if data.max_completion_tokens is not None else data.max_tokens


class LegacyBuilder:
    """Builds the legacy `logprobs` object of a completion choice, piece by piece (text offsets run on)."""

    def __init__(self, token_bytes: Any, offset: int = 0) -> None:
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.offset = offset

    def _text(self, token: int) -> str:
        return self._token_bytes(token).decode("utf-8", errors="replace")

    def build(self, tokens: Sequence[int], entries: Sequence[TokenLogprob | None], limit: int | None = None
              ) -> LegacyLogprobs:
        """Logprobs of `tokens`; with `limit`, only tokens that start before that text offset."""
        out = LegacyLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        for token, entry in zip(tokens, entries):
            if limit is not None and self.offset >= limit:
                break
            out.tokens.append(self._text(token))
            out.text_offset.append(self.offset)
            out.token_logprobs.append(None if entry is None else entry.logprob)
            out.top_logprobs.append(None if entry is None else {self._text(t): lp for t, lp in entry.top})
            self.offset += len(self._decoder.decode(self._token_bytes(token)))
        return out


def chat_logprobs(token_bytes: Any, tokens: Sequence[int], entries: Sequence[TokenLogprob]) -> ChatLogprobs:
    """The chat `logprobs.content` list for generated tokens."""
    def text(t: int) -> tuple[str, list[int]]:
        raw = token_bytes(t)
        return raw.decode("utf-8", errors="replace"), list(raw)

    content = []
    for token, entry in zip(tokens, entries):
        s, b = text(token)
        top = [TopLogprob(token=text(t)[0], logprob=lp, bytes=text(t)[1]) for t, lp in entry.top]
        content.append(ChatTokenLogprob(token=s, logprob=entry.logprob, bytes=b, top_logprobs=top))
    return ChatLogprobs(content=content)
