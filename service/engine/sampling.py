"""Next-token sampling from logits: greedy, temperature, top-k, top-p, repetition penalty, seed."""

from __future__ import annotations

import secrets
from typing import Sequence

import msgspec
import numpy as np

REPEAT_LAST_N = 64  # how many recent tokens the repetition penalty looks at (llama.cpp's default)


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True):
    """How to pick each next token, and when to stop."""

    max_new_tokens: int = 128
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    repetition_penalty: float = 1.1
    seed: int | None = None
    stop: tuple[str, ...] = ()


class Sampler:
    """Picks tokens for one generation; owns its random stream so a seed reproduces the text."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)
        self._rng = np.random.default_rng(self.seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int]) -> int:
        """Choose the next token id from the model's logits, given the tokens so far."""
        p = self.params
        logits = np.array(logits, dtype=np.float64)  # a copy: the model owns its buffer
        if p.repetition_penalty != 1.0 and history:
            seen = np.fromiter(set(history[-REPEAT_LAST_N:]), dtype=np.int64)
            seen = seen[(seen >= 0) & (seen < logits.size)]
            vals = logits[seen]
            logits[seen] = np.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if p.temperature == 0.0:
            return int(np.argmax(logits))
        logits /= p.temperature
        if 0 < p.top_k < logits.size:
            ids = np.argpartition(-logits, p.top_k - 1)[: p.top_k]
        else:
            ids = np.arange(logits.size)
        order = np.argsort(-logits[ids], kind="stable")
        ids, vals = ids[order], logits[ids][order]
        probs = np.exp(vals - vals[0])
        probs /= probs.sum()
        if p.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), p.top_p) + 1)
            ids, probs = ids[:keep], probs[:keep] / probs[:keep].sum()
        return int(ids[self._rng.choice(ids.size, p=probs)])
