"""Loading one model: its manifest and sha256, its engine instances, their worker pool; and the
process-wide pieces loads share (the private library copies, the resident-memory reading).

Never imports litestar.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

import msgspec

from service.config import Settings
from service.engine.base import Tokenizer
from service.engine.ctransformers_backend import Engine, make_libdir
from service.runtime.jobs import Job
from service.runtime.scheduler import Scheduler

ENGINE_NAME = "ctransformers"  # the backend that runs generations, named in the log for replay


class LibrarySlots:
    """Indexes of ctransformers' private library copies, each held by one live engine instance.

    Two instances must never share a copy (its scratch buffer is a C static), and a copy loaded
    once stays in the process: an unloaded model's indexes are handed to the next load.
    """

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._free: set[int] = set()
        self._next = 0
        self._lock = threading.Lock()  # loads and unloads run in threads

    @property
    def libdir(self) -> Path:
        """The copies' directory, made by the first load that needs one (a server that never loads
        a GGML model, or never starts, leaves none)."""
        with self._lock:
            if self._dir is None:
                self._dir = make_libdir()
            return self._dir

    def remove(self) -> None:
        """Remove the directory and the copies in it (a copy already loaded stays mapped)."""
        with self._lock:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def take(self) -> int:
        with self._lock:
            if self._free:
                index = min(self._free)
                self._free.discard(index)
                return index
            self._next += 1
            return self._next - 1

    def give_back(self, indexes: list[int]) -> None:
        with self._lock:
            self._free.update(indexes)


class Loaded:
    """A loaded model: its worker pool and what the log and /health say about it."""

    def __init__(self, scheduler: Scheduler, manifest: dict[str, Any] | None, sha256: str,
                 libs: list[int], release: Callable[[], None] | None = None) -> None:
        self.scheduler = scheduler
        self.manifest = manifest
        self.sha256 = sha256
        self._libs = libs
        self._release = release  # what else the engine frees (llama.cpp's context, a converted file)

    def close(self, slots: LibrarySlots) -> None:
        """Stop the (idle) pool's threads and free every instance (call from a thread)."""
        self.scheduler.close()
        slots.give_back(self._libs)
        if self._release is not None:
            self._release()


def load_tokenizer(model_path: Path, warn: bool = True) -> Tokenizer | None:
    """The exact GPT-2 BPE from tokenizer.json beside the model, or None (with a warning)."""
    path = model_path.parent / "tokenizer.json"
    if not path.is_file():
        if not warn:
            return None
        print(
            f"minivault: warning: no tokenizer.json beside {model_path}; falling back to GGML's "
            "greedy tokenizer, which splits some words differently from GPT-2's BPE",
            file=sys.stderr, flush=True,
        )
        return None
    from service.tokenizer.bpe import GPT2Tokenizer

    return GPT2Tokenizer.from_file(path)


def load_manifest(model_path: Path) -> dict[str, Any] | None:
    """The manifest beside the model as a dict, after checking the file size matches it."""
    if not (model_path.parent / "manifest.json").is_file():
        return None
    from service.formats.manifest import read_manifest, verify

    manifest = read_manifest(model_path)
    if manifest is None:
        return None
    verify(model_path, manifest)
    return msgspec.to_builtins(manifest)


def model_sha256(model_path: Path, manifest: dict[str, Any] | None) -> str:
    """The model file's sha256: the manifest's (its size was checked), else hashed now."""
    if manifest and manifest.get("sha256"):
        return str(manifest["sha256"]).lower()
    from service.formats.manifest import file_sha256

    return file_sha256(model_path)


def load_engines(model_path: Path, workers: int, threads: int) -> list[Engine]:
    """`workers` independent instances of the model, sharing one tokenizer (outside a server); each
    makes its library copy's directory and removes it when it is closed or fails to load."""
    tokenizer = load_tokenizer(model_path)
    return [Engine(model_path, threads=threads, tokenizer=tokenizer, instance=i) for i in range(workers)]


def load_model(model_id: str, path: Path, workers: int, threads: int, libs: LibrarySlots, settings: Settings,
               on_finish: Callable[[Job], None], choice: Any = None) -> Loaded:
    """`workers` instances of one model behind one scheduler (call from a thread); with a llama.cpp
    `choice` (runtime/engines.py), one context of `workers` sequence slots."""
    manifest = load_manifest(path)
    sha256 = model_sha256(path, manifest)
    if choice is not None and choice.engine == "llamacpp":
        return _load_llamacpp(model_id, path, choice.path, workers, threads, settings, on_finish, manifest, sha256)
    tokenizer = load_tokenizer(path)
    engines: list[Engine] = []
    taken: list[int] = []
    try:
        for _ in range(workers):
            taken.append(libs.take())
            engines.append(Engine(path, threads=threads, tokenizer=tokenizer, instance=taken[-1],
                                  libdir=libs.libdir))
    except BaseException:
        for engine in engines:
            engine.close()
        libs.give_back(taken)
        raise
    scheduler = Scheduler(engines, max_queue=settings.max_queue, timeout_s=settings.timeout_s,
                          on_finish=on_finish, model_id=model_id, model_sha256=sha256,
                          exact_reuse=settings.cache_exact)
    return Loaded(scheduler, manifest, sha256, taken)


def resident_mb() -> float | None:
    """This process's resident memory in MiB (Linux), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def gguf_tokenizer_for(model_path: Path, gguf_path: Path) -> Tokenizer:
    """tokenizer.json beside the model, else the BPE in the GGUF file's metadata."""
    tokenizer = load_tokenizer(model_path, warn=False)
    if tokenizer is not None:
        return tokenizer
    from service.formats.gguf import read_gguf
    from service.formats.gguf_convert import gguf_hparams, gguf_tokenizer
    from service.tokenizer.bpe import GPT2Tokenizer, TokenizerFormatError

    g = read_gguf(gguf_path)
    try:
        return gguf_tokenizer(g, gguf_hparams(g).n_vocab)
    except TokenizerFormatError:  # a vocabulary without real merges (a GGML file had no tokenizer.json)
        tokens = g.metadata.get("tokenizer.ggml.tokens") or []
        print(f"minivault: warning: no tokenizer.json beside {model_path} and no BPE merges in it: prompts are "
              "split into the vocabulary's single-byte tokens", file=sys.stderr, flush=True)
        return GPT2Tokenizer({t: i for i, t in enumerate(tokens)}, [],
                             [t for t in tokens if t == "<|endoftext|>"])


def _load_llamacpp(model_id: str, path: Path, gguf: Path | None, parallel: int, threads: int, settings: Settings,
                   on_finish: Callable[[Job], None], manifest: dict[str, Any] | None, sha256: str) -> Loaded:
    """One llama.cpp context with `parallel` sequence slots behind one scheduler."""
    from service.engine.llamacpp_backend import LlamaContext

    tmpdir = Path(tempfile.mkdtemp(prefix="minivault-gguf-")) if gguf is None else None
    try:
        if tmpdir is not None:  # only a GGML file: llama.cpp runs a GGUF copy of the same tensors
            from service.formats.ggml_to_gguf import ggml_to_gguf

            gguf = ggml_to_gguf(path, tmpdir / "model.gguf")
        context = LlamaContext(gguf, parallel=parallel, threads=threads, tokenizer=gguf_tokenizer_for(path, gguf))
    except BaseException:
        _discard(tmpdir)
        raise

    def release() -> None:
        context.close()
        _discard(tmpdir)

    scheduler = Scheduler(context.slots, max_queue=settings.max_queue, timeout_s=settings.timeout_s,
                          on_finish=on_finish, model_id=model_id, model_sha256=sha256, engine="llamacpp",
                          exact_reuse=settings.cache_exact)
    return Loaded(scheduler, manifest, sha256, [], release=release)


def _discard(tmpdir: Path | None) -> None:
    """Remove a converted model's temporary folder, if there is one."""
    if tmpdir is not None:
        shutil.rmtree(tmpdir, ignore_errors=True)
