"""Next-token sampling from logits: greedy, temperature, top-k, top-p, repetition, presence and
frequency penalties, logit bias, seed; and the log-probabilities of the model's own logits.

Every accepted parameter value is numerically safe: logits are kept finite and shifted so the
best one is 0 before dividing by the temperature, so no value (however small) gives NaN.
"""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Sequence

import msgspec
import numpy as np

REPEAT_LAST_N = 64  # how many recent tokens the repetition penalty looks at (llama.cpp's default)
_BIG = 1e300  # logits are clipped to +-_BIG: any finite shift of them stays finite
LOGPROB_FLOOR = -9999.0  # what a probability that underflows to 0 is reported as (OpenAI does the same)


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True):
    """How to pick each next token, and when to stop."""

    max_new_tokens: int = 128
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    repetition_penalty: float = 1.1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per occurrence in the generated tokens
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    logprobs: int | None = None  # record each sampled token's log-probability and this many alternatives
    prompt_logprobs: int | None = None  # score the prompt too (position by position), with this many


class TokenLogprob(msgspec.Struct, frozen=True, array_like=True):
    """A token's log-probability under the model, and the `top` most likely tokens at its position."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p for every token from raw logits, in float64, finite for any input."""
    x = np.clip(np.nan_to_num(np.asarray(logits, dtype=np.float64), nan=-_BIG), -_BIG, _BIG)
    x = x - x.max()
    with np.errstate(under="ignore"):
        return x - np.log(np.exp(x).sum())


def token_logprob(logits: np.ndarray, token: int, top_n: int) -> TokenLogprob:
    """The log-probability of `token` and the `top_n` best alternatives, from the model's logits."""
    lp = log_softmax(logits)
    top: tuple[tuple[int, float], ...] = ()
    if top_n > 0:
        n = min(top_n, lp.size)
        ids = np.argpartition(-lp, n - 1)[:n]
        ids = ids[np.argsort(-lp[ids], kind="stable")]
        top = tuple((int(i), _floor(lp[i])) for i in ids)
    return TokenLogprob(int(token), _floor(lp[token]), top)


def _floor(value: float) -> float:
    return max(float(value), LOGPROB_FLOOR)


class Sampler:
    """Picks tokens for one generation; owns its random stream so a seed reproduces the text.

    With `params.logprobs` set, each call also appends the chosen token's TokenLogprob to
    `self.logprobs` (computed from the logits as the model gave them, before any penalty).
    """

    def __init__(self, params: SamplingParams, prompt_len: int = 0) -> None:
        self.params = params
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)
        self._rng = np.random.default_rng(self.seed)
        self.prompt_len = prompt_len  # presence/frequency penalties count only tokens after the prompt
        self.logprobs: list[TokenLogprob] = []

    def __call__(self, logits: np.ndarray, history: Sequence[int]) -> int:
        """Choose the next token id from the model's logits, given the tokens so far."""
        token = self._choose(logits, history)
        if self.params.logprobs is not None:
            self.logprobs.append(token_logprob(logits, token, self.params.logprobs))
        return token

    def adjusted(self, logits: np.ndarray, history: Sequence[int]) -> np.ndarray:
        """The logits after penalties and bias: float64, finite, clipped to +-_BIG."""
        p = self.params
        logits = np.clip(np.nan_to_num(np.array(logits, dtype=np.float64), nan=-_BIG), -_BIG, _BIG)  # a copy
        n = logits.size
        if p.repetition_penalty != 1.0 and history:
            seen = np.fromiter(set(history[-REPEAT_LAST_N:]), dtype=np.int64)
            seen = seen[(seen >= 0) & (seen < n)]
            vals = logits[seen]
            with np.errstate(over="ignore", under="ignore"):
                logits[seen] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and len(history) > self.prompt_len:
            counts = Counter(t for t in history[self.prompt_len:] if 0 <= t < n)
            ids = np.fromiter(counts, dtype=np.int64)
            freq = np.fromiter(counts.values(), dtype=np.float64)
            logits[ids] -= p.presence_penalty + p.frequency_penalty * freq
        for token, bias in p.logit_bias:
            if 0 <= token < n:
                logits[token] += bias
        return np.clip(np.nan_to_num(logits, nan=-_BIG), -_BIG, _BIG)

    def _choose(self, logits: np.ndarray, history: Sequence[int]) -> int:
        p = self.params
        logits = self.adjusted(logits, history)
        if p.temperature == 0.0:
            return int(np.argmax(logits))
        logits -= logits.max()  # the best is 0, the rest <= 0 and finite
        with np.errstate(over="ignore", under="ignore"):
            logits /= p.temperature  # a tiny temperature sends the others to -inf: exp gives 0, never NaN
        if 0 < p.top_k < logits.size:
            ids = np.argpartition(-logits, p.top_k - 1)[: p.top_k]
        else:
            ids = np.arange(logits.size)
        order = np.argsort(-logits[ids], kind="stable")
        ids, vals = ids[order], logits[ids][order]
        with np.errstate(under="ignore"):
            probs = np.exp(vals - vals[0])  # probs[0] == 1: the sum is >= 1
        probs /= probs.sum()
        if p.top_p < 1.0:
            keep = min(int(np.searchsorted(np.cumsum(probs), p.top_p) + 1), ids.size)
            ids, probs = ids[:keep], probs[:keep] / probs[:keep].sum()
        return int(ids[self._rng.choice(ids.size, p=probs)])
