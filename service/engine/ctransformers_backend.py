"""The model: a GPT-2 GGML file run by ctransformers, generating one token at a time.

Never imports litestar. One Engine is one model instance and runs one generation at a time.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np

from service.formats.ggml.format import read_gpt2
from service.errors import ContextOverflow, GenerationFailed, UnknownToken
from service.engine.sampling import Sampler, SamplingParams
from service.engine.textstream import TextStream


PROMPT_BATCH = 32  # prompt tokens evaluated per call: fast, and cancellation is checked between batches


class Tokenizer(Protocol):
    """What the engine needs from a tokenizer."""

    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def token_bytes(self, token_id: int) -> bytes: ...


class _FallbackTokenizer:
    """ctransformers' own greedy tokenizer, used only when no tokenizer.json exists."""

    def __init__(self, llm, vocab: list[bytes]) -> None:
        self._llm = llm
        self.vocab_size = llm.vocab_size
        self.eos_id = llm.eos_token_id
        self._bytes = vocab  # from the file: ctransformers' detokenize cuts tokens at a NUL byte

    def encode(self, text: str) -> list[int]:
        return list(self._llm.tokenize(text))

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self.vocab_size:
            raise UnknownToken(
                f"token id {token_id} is outside the vocabulary (0 to {self.vocab_size - 1})", field="tokens"
            )
        return self._bytes[token_id]

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")


@functools.cache
def _library() -> Path:
    """ctransformers' shared library for this CPU (its detection is slow: do it once)."""
    from ctransformers.lib import find_library

    return Path(find_library())


def _private_library(workdir: Path, index: int) -> str:
    """A private copy of ctransformers' shared library for one model instance.

    ctransformers' gpt2 eval keeps its scratch buffer in a C `static`, shared by every
    instance loaded from the same library; two instances evaluating at once would corrupt
    each other. A copy under another path is loaded as a separate library with its own.
    """
    src = _library()
    dst = workdir / f"{index}-{src.name}"
    if not dst.exists():
        shutil.copyfile(src, dst)
    return str(dst)


class Generation:
    """One running generation: iterate it for text pieces; then read why it ended."""

    def __init__(self, engine: "Engine", prompt_ids: list[int], params: SamplingParams,
                 cancel: threading.Event | None, deadline: float | None) -> None:
        self.engine = engine
        self.prompt_ids = prompt_ids
        self.params = params
        self.sampler = Sampler(params)
        self.cancel = cancel or threading.Event()
        self.deadline = deadline
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self.first_token_at: float | None = None
        self.started_at = time.monotonic()
        self._text = TextStream(tuple(params.stop))

    @property
    def text(self) -> str:
        """The text emitted so far."""
        return self._text.text

    def _interrupted(self) -> str | None:
        if self.cancel.is_set():
            return "cancelled"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "timeout"
        return None

    def __iter__(self) -> Iterator[str]:
        eng = self.engine
        n_past = 0
        for start in range(0, len(self.prompt_ids), PROMPT_BATCH):
            if reason := self._interrupted():
                self.finish_reason = reason
                return
            batch = self.prompt_ids[start : start + PROMPT_BATCH]
            eng.eval(batch, n_past)
            n_past += len(batch)
        history = list(self.prompt_ids)
        for _ in range(self.params.max_new_tokens):
            if reason := self._interrupted():
                self.finish_reason = reason
                break
            token = self.sampler(eng.logits(), history)
            if token == eng.eos_id:
                self.finish_reason = "stop"
                break
            self.tokens.append(token)
            history.append(token)
            if self.first_token_at is None:
                self.first_token_at = time.monotonic()
            piece = self._text.feed(eng.tokenizer.token_bytes(token))
            if piece:
                yield piece
            if self._text.stopped:
                self.finish_reason = "stop"
                return
            if len(self.tokens) < self.params.max_new_tokens:
                eng.eval([token], n_past)
                n_past += 1
        else:
            self.finish_reason = "length"
        tail = self._text.finish()
        if tail:
            yield tail


class Engine:
    """A loaded GPT-2 GGML model: tokenize, check limits, generate."""

    def __init__(self, model_path: str | Path, *, threads: int, tokenizer: Tokenizer | None = None,
                 instance: int = 0, libdir: Path | None = None) -> None:
        from ctransformers.llm import LLM, Config

        self.model_path = Path(model_path)
        self.threads = threads
        self._libdir = libdir or Path(tempfile.mkdtemp(prefix="minivault-lib-"))
        lib = _private_library(self._libdir, instance)
        # check the file ourselves first: ctransformers may crash on a truncated or foreign file
        self.header = read_gpt2(self.model_path)
        try:
            self._llm = LLM(str(self.model_path), "gpt2", config=Config(threads=threads), lib=lib)
        except (RuntimeError, ValueError) as exc:
            raise ValueError(f"ctransformers could not load {self.model_path} as a GPT-2 GGML model: {exc}") from None
        self.context_length = self._llm.context_length
        self.vocab_size = self._llm.vocab_size
        self.tokenizer: Tokenizer = tokenizer or _FallbackTokenizer(self._llm, self.header.vocab)
        if self.tokenizer.vocab_size != self.vocab_size:
            raise ValueError(
                f"tokenizer has {self.tokenizer.vocab_size} tokens but the model has {self.vocab_size}"
            )
        eos = self.tokenizer.eos_id
        self.eos_id = eos if eos is not None else self._llm.eos_token_id
        self._logits_ptr = self._llm.ctransformers_llm_logits_data
        self._batch_eval = self._llm.ctransformers_llm_batch_eval

    def eval(self, tokens: Sequence[int], n_past: int) -> None:
        """Run the model over `tokens` at positions n_past..; releases the GIL while it runs."""
        arr = (ctypes.c_int * len(tokens))(*tokens)
        if not self._batch_eval(arr, len(tokens), n_past, len(tokens), self.threads):
            raise GenerationFailed("the model failed to evaluate tokens")

    def logits(self) -> np.ndarray:
        """Logits for the next token after the last eval (a view of the model's buffer)."""
        return np.ctypeslib.as_array(self._logits_ptr(), shape=(self.vocab_size,))

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """Raise ContextOverflow unless prompt + new tokens fit the context."""
        if prompt_tokens + max_new_tokens > self.context_length:
            left = self.context_length - prompt_tokens
            raise ContextOverflow(
                f"prompt has {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}: "
                f"together {prompt_tokens + max_new_tokens}, over the model's context of {self.context_length} "
                + (f"(at most {left} new tokens fit)" if left > 0 else "(the prompt alone does not fit)"),
                field="max_new_tokens" if left > 0 else "prompt",
            )

    def generate(self, prompt_ids: list[int], params: SamplingParams, *,
                 cancel: threading.Event | None = None, deadline: float | None = None) -> Generation:
        """A generation to iterate (in a worker thread) for text pieces as tokens are sampled."""
        if not prompt_ids:
            raise ContextOverflow("the prompt has no tokens", field="prompt")
        self.check_fits(len(prompt_ids), params.max_new_tokens)
        return Generation(self, prompt_ids, params, cancel, deadline)

    def close(self) -> None:
        """Free the model."""
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.ctransformers_llm_delete()
            llm._llm = None
