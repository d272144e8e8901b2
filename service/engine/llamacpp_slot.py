"""One sequence slot of a llama.cpp context (llamacpp_backend.LlamaContext): the Backend that
generation.py drives, so tokenizer, sampler, stop strings and limits stay MiniVault's."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from service.engine.generation import Generates, Generation
from service.engine.prefix import TiledChunks
from service.engine.step_run import Done, Emit, StepRun

# ggml's CPU flash attention takes a call of at least TILE_ROWS query rows by tiles, a smaller one
# row by row (GGML_FA_TILE_Q); its repacked weights multiply ROW_GROUP rows at a time, the rest with
# another kernel: each pair gives different bits (engine/prefix.py, TiledChunks).
TILE_ROWS = 64
ROW_GROUP = 4


class LlamaSlot(Generates):
    """One sequence of a LlamaContext: the Backend generation.py drives."""

    def __init__(self, context: Any, seq_id: int) -> None:  # its LlamaContext, which makes the slots
        self.context = context
        self.seq_id = seq_id
        self.model_path = context.model_path
        self.threads = context.threads
        self.context_length = context.context_length
        self.vocab_size = context.vocab_size
        self.eos_id = context.eos_id
        self.tokenizer = context.tokenizer
        self.chunks = TiledChunks(TILE_ROWS, ROW_GROUP, lambda: context.chunk_limit(self))
        self._logits = np.zeros(self.vocab_size, np.float32)
        self.kv_len = 0  # positions 0..kv_len-1 of this sequence hold KV state
        self._sequence: list[int] = []
        self.last_prompt = None

    @property
    def sequence(self) -> list[int]:
        """The tokens this slot's KV cells hold (engine/prefix.py reuses them)."""
        return self._sequence

    @sequence.setter
    def sequence(self, tokens: Sequence[int]) -> None:
        self._sequence = list(tokens)[: self.kv_len]  # never more than the cells really hold

    def eval(self, tokens: Sequence[int], n_past: int) -> None:
        self.context.submit(self, tokens, n_past)

    def drive(self, gen: Generation, emit: Emit, done: Done) -> None:
        """Run `gen` on the step thread from its prompt to its end (engine/step_run.py); `done` tells
        how it ended. Starts on the calling thread, which is not needed again."""
        StepRun(self, gen, emit, done).start()

    def logits(self) -> np.ndarray:
        """The next-token logits after this slot's last eval (its own copy)."""
        return self._logits

    def begin(self) -> None:
        self.context.activate(self, True)

    def end(self, finish_reason: str | None) -> None:
        self.context.activate(self, False)
        if finish_reason not in ("stop", "length"):  # cancelled, timed out or failed: free its cells now
            self.context.forget(self)
            self._sequence, self.last_prompt = [], None

    def close(self) -> None:
        """Slots are freed with their context (LlamaContext.close)."""
