"""What the engine layer offers the runtime: the tokenizer and backend interfaces.

A backend is one loaded model instance: it evaluates tokens at positions and exposes the
next-token logits. Sampling, stop strings, UTF-8 text and limits live above it (generation.py),
so they are the same whichever library runs the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from service.engine.prefix import Chunks


class Tokenizer(Protocol):
    """What the engine needs from a tokenizer."""

    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def token_bytes(self, token_id: int) -> bytes: ...


class TokenRun(Protocol):
    """The tokens of one generation as they are sampled; close() stops it (waiting for a step under way)."""

    def __iter__(self) -> Iterator[int]: ...
    def __next__(self) -> int: ...
    def close(self) -> None: ...


class Backend(Protocol):
    """One model instance (or one sequence slot of a batching engine) that runs one sequence at a time."""

    model_path: Path
    threads: int
    context_length: int
    vocab_size: int
    eos_id: int
    tokenizer: Tokenizer
    # The tokens whose KV state the instance holds at positions 0..len-1, from its last
    # generation (generation.py keeps it up to date; start it empty). Prefix reuse reads it.
    sequence: list[int]
    # The last whole prompt and a copy of its logits (engine.prefix.LastPrompt, or None): the same
    # prompt again is served without any evaluation.
    last_prompt: object | None
    # How a prompt goes into eval calls and what of it prefix reuse may take with a fresh
    # evaluation's bits (engine.prefix.AlignedBatches or TiledChunks).
    chunks: Chunks

    def begin(self) -> None: ...  # a generation starts on this instance (a batching engine waits for it)
    def end(self, finish_reason: str | None) -> None: ...  # and ends: why (cancelled ones free their state)
    def eval(self, tokens: Sequence[int], n_past: int) -> None: ...
    # The generated tokens: the first picked from `logits`, each next one from the logits after
    # evaluating the one before at n_past, n_past + 1, ...; at most `limit`, none after end-of-text.
    # (A batching engine's slot also offers drive(generation, emit, done): the whole generation
    # run by its step thread, engine/step_run.py; the scheduler and Generation use it when present.)
    def decode(self, logits: np.ndarray, pick: Callable[[np.ndarray], int], n_past: int,
               limit: int) -> TokenRun: ...
    def logits(self) -> np.ndarray: ...
    def close(self) -> None: ...
