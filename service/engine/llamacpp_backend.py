"""The llama.cpp backend (llama-cpp-python's low-level API) for GPT-2 GGUF files, with continuous batching.

One LlamaContext holds one model and one llama.cpp context with up to `parallel` sequences, each
in its own KV stream. Each sequence is a LlamaSlot, a Backend as generation.py sees it (eval at
positions, then logits), so tokenizer, sampler, stop strings and limits stay MiniVault's. A slot's
eval joins the next step: one thread gathers what every running slot hands in (a token each, or a
prompt chunk, engine/prefix.py's TiledChunks) and decodes it all in one llama_decode call. That
thread also runs each slot's generation as its steps end (engine/step_run.py): it queues the
prompt's next chunk, or picks the next token (MiniVault's sampler, not llama.cpp's), turns it into
text, hands the piece on and queues the token for the next step.

Only that thread calls llama_decode. Each thread that calls it gets its own OpenMP team, and once
several teams exist every step is slower: tried (a lone sequence decoding on its own thread, to
save the hand-over), it cut two streams from 420 to 277 tokens/s and four from 666 to 487
(in-process, 2 threads), and gained nothing measurable on one stream.
"""

from __future__ import annotations

import ctypes
import functools
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from service.engine.base import Tokenizer
from service.engine.hugepages import advise_new, before_load
from service.engine.llamacpp_check import check_build
from service.engine.llamacpp_slot import ROW_GROUP, TILE_ROWS, LlamaSlot
from service.errors import GenerationFailed

# How long a step waits for the running sequences that have not handed in their next tokens yet
# (a generation between its prompt and its first token, or about to end): enough to decode them
# together; generating slots are queued by the step thread itself and never waited for.
GATHER_S = 0.003
# Prompt tokens per decode call while other sequences generate: a running stream waits for the
# chunk decoded after its step (README, llama.cpp engine: measured). With no other sequence
# running, a prompt goes in calls of up to PROMPT_CHUNK_ALONE (llama-server's micro-batch):
# fewer, larger calls evaluate it faster. Neither changes the bits (engine/prefix.py, TiledChunks).
PROMPT_CHUNK = 128
PROMPT_CHUNK_ALONE = 512


@functools.cache
def _lib() -> Any:
    """llama-cpp-python's bindings, initialised once, with llama.cpp's log cut to its errors."""
    try:
        from llama_cpp import llama_cpp as lc
    except ImportError as exc:
        raise ValueError("the llamacpp engine needs llama-cpp-python: pip install 'minivault[llamacpp]' "
                         f"({exc})") from None
    lc.llama_backend_init()
    lc.llama_log_set(_log_errors, ctypes.c_void_p(0))
    return lc


def _print_error(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    if level == 3:  # GGML_LOG_LEVEL_ERROR: the reason a load or decode failed
        print(f"llama.cpp: {text.decode('utf-8', 'replace')}", end="", file=sys.stderr, flush=True)


_log_errors = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)(_print_error)


class _Eval:
    """One slot's tokens for the next step, and what to call once the step has decoded them."""

    __slots__ = ("slot", "tokens", "n_past", "index", "then", "logits")

    def __init__(self, slot: "LlamaSlot", tokens: list[int], n_past: int,
                 then: "Callable[[np.ndarray | None], None]") -> None:
        self.slot, self.tokens, self.n_past = slot, tokens, n_past
        self.index = -1  # its last token's place in the batch: where its logits are
        self.then = then  # called on the step thread with its logits, or None if the decode failed
        self.logits: np.ndarray | None = None  # llama.cpp's own row once decoded, valid until the next decode


class LlamaContext:
    """A GPT-2 GGUF model in llama.cpp: one context, `parallel` sequence slots, one decode per step."""

    def __init__(self, model_path: str | Path, *, parallel: int, threads: int, tokenizer: Tokenizer,
                 prompt_chunk: int = PROMPT_CHUNK, prompt_chunk_alone: int = PROMPT_CHUNK_ALONE) -> None:
        lc = self._lc = _lib()
        self.model_path = Path(model_path)
        check_build(self.model_path, str(Path(lc.__file__).parent))  # before a native build can crash us
        self.threads = threads
        if not (TILE_ROWS * 2 <= prompt_chunk <= prompt_chunk_alone
                and prompt_chunk % ROW_GROUP == prompt_chunk_alone % ROW_GROUP == 0):
            raise ValueError(f"prompt chunks of {prompt_chunk} and {prompt_chunk_alone}: need multiples of "
                             f"{ROW_GROUP}, {TILE_ROWS * 2} <= chunk <= chunk alone")
        self.prompt_chunk, self.prompt_chunk_alone = prompt_chunk, prompt_chunk_alone
        mp = lc.llama_model_default_params()
        mp.n_gpu_layers = 0
        before = before_load()  # what llama.cpp allocates from here on gets huge pages, below
        self._model = lc.llama_model_load_from_file(str(self.model_path).encode(), mp)
        if not self._model:
            raise ValueError(f"llama.cpp could not load {self.model_path} as a GGUF model")
        self._ctx = None
        self._batch = None
        try:
            vocab = lc.llama_model_get_vocab(self._model)
            self.vocab_size = lc.llama_vocab_n_tokens(vocab)
            self.context_length = lc.llama_model_n_ctx_train(self._model)
            if tokenizer.vocab_size != self.vocab_size:
                raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model has {self.vocab_size}")
            cp = lc.llama_context_default_params()
            cp.n_ctx = self.context_length * parallel  # every sequence can fill the model's whole context
            cp.n_batch = cp.n_ubatch = max(prompt_chunk_alone, parallel)  # a prompt chunk, or a token per slot
            # set, not left to "auto": which prompt cuts give the same bits is this kernel's (TILE_ROWS)
            cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
            cp.n_seq_max = parallel
            cp.kv_unified = False  # a KV stream per sequence: its attention never sees another's cells
            cp.n_threads = cp.n_threads_batch = threads
            cp.no_perf = True
            self._ctx = lc.llama_init_from_model(self._model, cp)
            if not self._ctx:
                raise ValueError(f"llama.cpp could not create a context for {self.model_path}")
            self._mem = lc.llama_get_memory(self._ctx)
            self._n_batch = cp.n_batch
            self._batch = lc.llama_batch_init(self._n_batch, 0, 1)
            self.huge_page_bytes = advise_new(before)  # its weights' copies, KV cache, compute buffers
        except BaseException:
            self._free()
            raise
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_id
        self.slots = [LlamaSlot(self, i) for i in range(parallel)]
        self._cv = threading.Condition()
        self._pending: list[_Eval] = []
        self._active: set[int] = set()  # slots mid-generation: a step waits (briefly) for each
        self._views: dict[int, np.ndarray] = {}  # logits views by address (_logits_at)
        self._decoding = threading.Lock()  # llama.cpp's context is not safe to use from two threads
        self._closing = False
        self.steps = 0  # decode calls so far, and sequences decoded in them (for the batch size)
        self.step_sequences = 0
        self._thread = threading.Thread(target=self._loop, name="minivault-llamacpp", daemon=True)
        self._thread.start()

    # --- what slots ask ----------------------------------------------------------------------
    def submit(self, slot: "LlamaSlot", tokens: Sequence[int], n_past: int) -> None:
        """Decode `tokens` of `slot`'s sequence at positions n_past.. in the next step; wait for it.
        The logits are copied into the slot's own buffer: its thread reads them after later steps."""
        decoded = threading.Event()
        ok: list[bool] = []

        def then(logits: np.ndarray | None) -> None:
            if logits is not None:
                np.copyto(slot._logits, logits)
            ok.append(logits is not None)
            decoded.set()

        self.queue(slot, list(tokens), n_past, then)
        decoded.wait()
        if not ok[0]:
            raise GenerationFailed("llama.cpp failed to decode the batch")

    def queue(self, slot: "LlamaSlot", tokens: list[int], n_past: int,
              then: Callable[[np.ndarray | None], None]) -> None:
        """Decode `tokens` of `slot`'s sequence at n_past in the next step; then(logits) runs on the
        step thread once it is done, with a view of its logits that is valid only during the call
        (no copy), or None if the decode failed (engine/step_run.py)."""
        if not 0 < len(tokens) <= self._n_batch:
            raise GenerationFailed(f"{len(tokens)} tokens in one eval: 1 to {self._n_batch} fit a step")
        job = _Eval(slot, tokens, n_past, then)
        with self._cv:
            if self._closing:
                raise GenerationFailed("the model is being unloaded")
            self._pending.append(job)
            self._cv.notify_all()

    def activate(self, slot: "LlamaSlot", on: bool) -> None:
        """A generation starts (True) or ends (False) on `slot`."""
        with self._cv:
            if on:  # a step gathering the running sequences need not look again for this
                self._active.add(slot.seq_id)
            else:
                self._active.discard(slot.seq_id)
                self._cv.notify_all()

    def chunk_limit(self, slot: "LlamaSlot") -> int:
        """The largest prompt chunk for `slot` now: smaller while other sequences generate."""
        with self._cv:
            alone = not self._active - {slot.seq_id}
        return self.prompt_chunk_alone if alone else self.prompt_chunk

    def forget(self, slot: "LlamaSlot") -> None:
        """Free the KV cells of `slot`'s sequence now (it was cancelled or failed)."""
        with self._decoding:
            if self._ctx:
                self._lc.llama_memory_seq_rm(self._mem, slot.seq_id, 0, -1)
            slot.kv_len = 0

    # --- the step loop -----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closing:
                    self._cv.wait()
                if self._closing and not self._pending:
                    return
                deadline = time.monotonic() + GATHER_S
                while True:  # every running sequence in one batch, unless one is late
                    missing = self._active - {e.slot.seq_id for e in self._pending}
                    left = deadline - time.monotonic()
                    if not missing or left <= 0 or self._closing:
                        break
                    self._cv.wait(left)
                evals, self._pending = self._pending, []
            self._step(evals)

    def _step(self, evals: list[_Eval]) -> None:
        """Decode this step: every single-token eval in one batch, each prompt chunk in its own call.

        llama.cpp splits a batch that mixes sequences into equal parts per sequence, so a prompt
        chunk decoded beside other sequences' tokens would be evaluated in other pieces than alone,
        and its sums (so its tokens) would depend on what else was running.
        """
        singles = [e for e in evals if len(e.tokens) == 1]
        groups = ([singles] if singles else []) + [[e] for e in evals if len(e.tokens) > 1]
        finished = 0
        try:
            for group in groups:
                try:
                    self._decode(group)
                finally:  # each group's callbacks before the next decode: their logits are views
                    finished += 1
                    self._complete(group)
        finally:
            for group in groups[finished:]:
                self._complete(group)

    @staticmethod
    def _complete(evals: list[_Eval]) -> None:
        """Run each eval's callback, which reads its logits now."""
        for e in evals:
            e.then(e.logits)
            e.logits = None

    def _decode(self, evals: list[_Eval]) -> None:
        """One llama_decode over the evals' tokens; each slot gets the logits of its last token."""
        lc, b = self._lc, self._batch
        with self._decoding:
            n = 0
            # in seq-id order: llama.cpp puts only consecutive sequence ids (KV streams) into one
            # micro-batch, so sequences listed out of order would be decoded in several passes
            for e in sorted(evals, key=lambda e: e.slot.seq_id):
                slot = e.slot
                if slot.kv_len > e.n_past:  # positions past n_past hold an older sequence's tail
                    lc.llama_memory_seq_rm(self._mem, slot.seq_id, e.n_past, -1)
                    slot.kv_len = e.n_past
                if e.n_past != slot.kv_len:
                    continue  # a gap in the positions: refused (no logits), the others go on
                for j, token in enumerate(e.tokens):
                    b.token[n], b.pos[n], b.n_seq_id[n] = token, e.n_past + j, 1
                    b.seq_id[n][0] = slot.seq_id
                    b.logits[n] = j == len(e.tokens) - 1
                    n += 1
                e.index = n - 1
            if not n:
                return
            b.n_tokens = n
            rc = lc.llama_decode(self._ctx, b)
            self.steps += 1
            self.step_sequences += sum(1 for e in evals if e.index >= 0)
            for e in evals:
                if e.index < 0:
                    continue
                if rc == 0:
                    e.logits = self._logits_at(e.index)
                    e.slot.kv_len = e.n_past + len(e.tokens)
                else:  # what the failed call left in the cache is not known: drop it
                    lc.llama_memory_seq_rm(self._mem, e.slot.seq_id, 0, -1)
                    e.slot.kv_len = 0

    def _logits_at(self, index: int) -> np.ndarray:
        """A view of llama.cpp's logits for batch row `index` (valid until the next decode).

        Made once per address: np.ctypeslib.as_array builds a ctypes array type and parses its
        buffer format on every call, tens of microseconds on the step thread right after a decode.
        """
        addr = ctypes.cast(self._lc.llama_get_logits_ith(self._ctx, index), ctypes.c_void_p).value
        view = self._views.get(addr)
        if view is None:  # a new output buffer (llama.cpp grows it as batches need more rows)
            view = self._views[addr] = np.frombuffer((ctypes.c_float * self.vocab_size).from_address(addr),
                                                     dtype=np.float32)
        return view

    # --- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the step thread and free the context and model (no generation may be running)."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()
        with self._decoding:
            self._free()

    def _free(self) -> None:
        lc = self._lc
        self._views = {}  # views of buffers the context owns
        if self._batch is not None:
            lc.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            lc.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lc.llama_model_free(self._model)
            self._model = None
