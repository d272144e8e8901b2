"""Prefix reuse (llama-server's cache_prompt): how much of a prompt an instance already holds.

Each backend instance keeps `sequence`: tokens whose KV state sits in its context at positions
0..len-1, from its last generation. A prompt that starts with some of them needs only the rest
evaluated.

Results must not change with reuse, and ggml's sums are not the same bits when a token is
evaluated in a differently sized call (the attention's dot products over the context change
their SIMD/scalar split; measured: up to 3e-3 on logits of magnitude 60, enough to turn a seeded
sample). So `sequence` holds only tokens evaluated in whole prompt batches aligned to the batch
size, exactly the calls a fresh evaluation of the same prompt makes, and reuse is a whole
number of those batches: the evaluation after it is the fresh one's, call for call.

With MINIVAULT_CACHE_EXACT=false, reuse goes to the token, as llama-server's does: `sequence`
holds every prompt token evaluated and then the reply's tokens that were evaluated (all but the
last), so a conversation's next turn evaluates only what is new; its logits may then differ in
the last bits from a fresh evaluation's (README: Timings and prefix reuse).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class LastPrompt:
    """An instance's last whole prompt with a copy of its logits: the same prompt again needs no
    evaluation at all (its KV state is exactly what a fresh evaluation computes: same calls)."""

    def __init__(self, prompt_ids: Sequence[int], logits: np.ndarray) -> None:
        self.prompt_ids = list(prompt_ids)
        self.logits = logits


def last_prompt(backend: object, prompt_ids: Sequence[int]) -> LastPrompt | None:
    """The instance's kept prompt and logits if `prompt_ids` is exactly that prompt."""
    last = getattr(backend, "last_prompt", None)
    return last if last is not None and last.prompt_ids == list(prompt_ids) else None


def served(backend: object, prompt_ids: Sequence[int], batch: int) -> int:
    """Prompt tokens an instance can serve without evaluating them (for choosing an instance)."""
    if last_prompt(backend, prompt_ids) is not None:
        return len(prompt_ids)
    return reusable(held(backend), prompt_ids, batch)


def held(backend: object) -> Sequence[int]:
    """The tokens a backend instance holds KV state for (none if it does not track them)."""
    return getattr(backend, "sequence", ())


def reusable(sequence: Sequence[int], prompt_ids: Sequence[int], batch: int) -> int:
    """Prompt tokens that can be served from `sequence`: the shared prefix, cut to whole batches
    and to at most len(prompt)-1.

    The last prompt token is always evaluated again: its logits pick the first new token, and
    the backend's logits buffer holds those of whatever it evaluated last.
    """
    limit = min(len(sequence), len(prompt_ids) - 1)
    n = 0
    while n < limit and sequence[n] == prompt_ids[n]:
        n += 1
    return n - n % batch
