"""Prompt scoring: the log-probability of every prompt token under the model, for echo+logprobs.

A backend exposes only the logits after its last evaluated position (ctransformers has no
all-positions logits), so the prompt is evaluated one token at a time and the logits read
after each: exact, at the cost of one eval call per prompt token (see the README's figures).
"""

from __future__ import annotations

from typing import Callable

from service.engine.base import Backend
from service.engine.sampling import TokenLogprob, token_logprob


def score_prompt(engine: Backend, prompt_ids: list[int], top_n: int,
                 interrupted: Callable[[], str | None]) -> tuple[list[TokenLogprob | None], str | None]:
    """Evaluate the prompt position by position; ([None, lp(t1|t0), ...], None) or (partial, reason)."""
    scores: list[TokenLogprob | None] = [None]  # the first token has no context to be predicted from
    for pos, token in enumerate(prompt_ids):
        if reason := interrupted():
            return scores, reason
        if pos > 0:
            scores.append(token_logprob(engine.logits(), token, top_n))
        engine.eval([token], pos)
    return scores, None
