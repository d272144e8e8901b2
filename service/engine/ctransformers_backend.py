"""The ctransformers backend: a GPT-2 GGML file, one model instance per Engine.

One Engine runs one generation at a time; generation.py drives it token by token.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from service.engine.base import Tokenizer
from service.engine.generation import PROMPT_BATCH, Generates
from service.engine.hugepages import advise_new, before_load
from service.engine.prefix import AlignedBatches
from service.errors import GenerationFailed
from service.fileio import remove_orphans
from service.formats.ggml.format import read_gpt2
from service.tokenizer.greedy import GreedyTokenizer


@functools.cache
def _library() -> Path:
    """ctransformers' shared library for this CPU (its detection is slow: do it once)."""
    from ctransformers.lib import find_library

    return Path(find_library())


LIBDIR_PREFIX = "minivault-lib-"
_LIBDIR_NAME = re.compile(rf"{LIBDIR_PREFIX}(?P<pid>\d+)-\w+")


def make_libdir() -> Path:
    """A new directory for private library copies, named by this process's id; directories that
    processes no longer running left behind (killed before they could remove theirs) go first."""
    remove_orphans(Path(tempfile.gettempdir()), _LIBDIR_NAME)
    return Path(tempfile.mkdtemp(prefix=f"{LIBDIR_PREFIX}{os.getpid()}-"))


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


class Engine(Generates):
    """A loaded GPT-2 GGML model: tokenize, check limits, generate."""

    def __init__(self, model_path: str | Path, *, threads: int, tokenizer: Tokenizer | None = None,
                 instance: int = 0, libdir: Path | None = None) -> None:
        from ctransformers.llm import LLM, Config

        self.model_path = Path(model_path)
        self.threads = threads
        self._own_libdir = libdir is None  # made here, so removed here (close, or a failed load)
        self._libdir = libdir or make_libdir()
        try:
            lib = _private_library(self._libdir, instance)
            # check the file ourselves first: ctransformers may crash on a truncated or foreign file
            self.header = read_gpt2(self.model_path)
            before = before_load()  # its weights and KV cache get huge pages (engine/hugepages.py)
            try:
                self._llm = LLM(str(self.model_path), "gpt2", config=Config(threads=threads), lib=lib)
            except (RuntimeError, ValueError) as exc:
                raise ValueError(f"ctransformers could not load {self.model_path} as a GPT-2 GGML model: "
                                 f"{exc}") from None
            self.huge_page_bytes = advise_new(before)
            self.context_length = self._llm.context_length
            self.vocab_size = self._llm.vocab_size
            # without a tokenizer.json: GGML's greedy tokenizer, as ctransformers has it (in linear time)
            self.tokenizer: Tokenizer = tokenizer or GreedyTokenizer(self.header.vocab, self._llm.eos_token_id)
            if self.tokenizer.vocab_size != self.vocab_size:
                raise ValueError(
                    f"tokenizer has {self.tokenizer.vocab_size} tokens but the model has {self.vocab_size}"
                )
        except BaseException:
            self.close()  # the model if it was loaded, and the directory if this instance made it
            raise
        eos = self.tokenizer.eos_id
        self.eos_id = eos if eos is not None else self._llm.eos_token_id
        self._logits_ptr = self._llm.ctransformers_llm_logits_data
        self._batch_eval = self._llm.ctransformers_llm_batch_eval
        self.sequence: list[int] = []  # KV state held in ctransformers' context (see engine/prefix.py)
        self.last_prompt = None  # engine.prefix.LastPrompt: the last whole prompt and its logits
        self.chunks = AlignedBatches(PROMPT_BATCH)  # exact reuse in whole batches (engine/prefix.py)

    def begin(self) -> None:
        """Nothing to do: one instance runs one sequence."""

    def end(self, finish_reason: str | None) -> None:
        """Nothing to do: the KV state stays for prefix reuse (engine/prefix.py)."""

    def eval(self, tokens: Sequence[int], n_past: int) -> None:
        """Run the model over `tokens` at positions n_past..; releases the GIL while it runs."""
        arr = (ctypes.c_int * len(tokens))(*tokens)
        if not self._batch_eval(arr, len(tokens), n_past, len(tokens), self.threads):
            raise GenerationFailed("the model failed to evaluate tokens")

    def logits(self) -> np.ndarray:
        """Logits for the next token after the last eval (a view of the model's buffer)."""
        return np.ctypeslib.as_array(self._logits_ptr(), shape=(self.vocab_size,))

    def close(self) -> None:
        """Free the model."""
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.ctransformers_llm_delete()
            llm._llm = None
        self._remove_libdir()

    def _remove_libdir(self) -> None:
        """Remove the library copy's directory if this instance made it (a loaded copy stays mapped)."""
        if self._own_libdir:
            shutil.rmtree(self._libdir, ignore_errors=True)
