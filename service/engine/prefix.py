"""Prefix reuse (llama-server's cache_prompt): how much of a prompt an instance already holds.

Each backend instance keeps `sequence`: tokens whose KV state sits in its context at positions
0..len-1, from its last generation. A prompt that starts with some of them needs only the rest
evaluated.

Results must not change with reuse, and ggml's sums are not always the same bits when a token is
evaluated in a differently sized call. What is exact depends on the engine's kernels, so each
backend says how it cuts a prompt into eval calls and what it may reuse (its `chunks`, one of
the two plans below): ctransformers' 2023 ggml changes its attention's SIMD/scalar split with
the call's size (measured: up to 3e-3 on logits of magnitude 60, enough to turn a seeded
sample), so it reuses whole aligned batches, call for call a fresh evaluation's; llama.cpp
gives the same bits whatever the cut as long as every call has at least 64 tokens and starts
at a multiple of 4, so it reuses to the token, nearly.

With MINIVAULT_CACHE_EXACT=false, reuse goes to the token on both, as llama-server's does:
`sequence` holds every prompt token evaluated and then the reply's tokens that were evaluated
(all but the last), so a conversation's next turn evaluates only what is new; its logits may
then differ in the last bits from a fresh evaluation's (README: Timings and prefix reuse).
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np


class Chunks(Protocol):
    """How a backend evaluates a prompt, and which evaluated prompt tokens it may reuse exactly."""

    def size(self, done: int, total: int) -> int:
        """Prompt tokens for the next eval call, with `done` of the prompt's `total` in the context."""
        ...

    def reuse(self, shared: int, total: int) -> int:
        """Of `shared` held tokens that start a prompt of `total`, those reused with a fresh
        evaluation's bits."""
        ...

    def kept(self, done: int, total: int) -> int:
        """Of the first `done` tokens of a prompt of `total`, evaluated, those a later prompt may reuse."""
        ...


class AlignedBatches:
    """Batches of `batch` tokens from position 0; exact reuse in whole batches (ctransformers)."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def size(self, done: int, total: int) -> int:
        return min(self.batch, total - done)

    def reuse(self, shared: int, total: int) -> int:
        return shared - shared % self.batch

    def kept(self, done: int, total: int) -> int:
        return done - done % self.batch


class TiledChunks:
    """Calls of at least `floor` tokens, in multiples of `group` but the last (llama.cpp).

    llama.cpp's CPU flash attention takes a call of at least 64 query rows by tiles and a smaller
    one row by row, and its repacked weights (q4_0, q4_K, q2_K here) multiply a call's rows four
    at a time and the remainder with another kernel: sums with different bits, each the same
    whatever else the call holds. So a prompt of 64 tokens or more goes in calls of 64 or more
    that start at multiples of 4, and a later prompt may reuse any such prefix of it to the
    token (down to a multiple of 4) as long as what it evaluates is 64 tokens or more (measured
    on every weight type: tests/engine/test_llamacpp.py); a shorter prompt is one call, not kept.
    """

    def __init__(self, floor: int, group: int, limit: Callable[[], int]) -> None:
        self.floor, self.group = floor, group
        self.limit = limit  # the largest call now (a multiple of group): chosen by load, never changes the bits

    def size(self, done: int, total: int) -> int:
        left, limit = total - done, self.limit()
        if total < self.floor or left <= limit:
            return left
        if left - limit < self.floor:  # leave a whole last call
            return (left - self.floor) // self.group * self.group
        return limit

    def reuse(self, shared: int, total: int) -> int:
        return min(shared, total - self.floor) // self.group * self.group if total >= self.floor else 0

    def kept(self, done: int, total: int) -> int:
        return done if total >= self.floor else 0


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


def served(backend: object, prompt_ids: Sequence[int], exact: bool) -> int:
    """Prompt tokens an instance can serve without evaluating them (for choosing an instance)."""
    if last_prompt(backend, prompt_ids) is not None:
        return len(prompt_ids)
    return reusable(backend, prompt_ids, exact)


def held(backend: object) -> Sequence[int]:
    """The tokens a backend instance holds KV state for (none if it does not track them)."""
    return getattr(backend, "sequence", ())


def reusable(backend: object, prompt_ids: Sequence[int], exact: bool) -> int:
    """Prompt tokens an instance can serve from what it holds: the shared prefix (exact: as its
    `chunks` allow), at most len(prompt)-1."""
    n = shared(held(backend), prompt_ids)
    return backend.chunks.reuse(n, len(prompt_ids)) if exact and n else n  # type: ignore[attr-defined]


def shared(sequence: Sequence[int], prompt_ids: Sequence[int]) -> int:
    """The prefix `sequence` and the prompt share, cut to at most len(prompt)-1.

    The last prompt token is always evaluated again: its logits pick the first new token, and
    the backend's logits buffer holds those of whatever it evaluated last.
    """
    limit = min(len(sequence), len(prompt_ids) - 1)
    n = 0
    while n < limit and sequence[n] == prompt_ids[n]:
        n += 1
    return n
