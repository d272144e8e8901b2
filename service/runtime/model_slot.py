"""One installed model's state (runtime/models.py keeps them all and the rules for loading):
which engine runs it, with how many workers and threads, its load state, and its /health entry."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

from service.config import Settings
from service.runtime import catalog, engines
from service.runtime.loading import Loaded
from service.runtime.scheduler import Scheduler

MB = 1024 * 1024


class ModelSlot:
    """One installed model: unloaded -> loading -> loaded (or error), and back to unloaded."""

    def __init__(self, model_id: str, path: Path, options: catalog.ModelOptions, settings: Settings) -> None:
        self.id = model_id
        self.path = path
        self.choice = engines.choose(path, options.engine or settings.engine)
        self.engine = self.choice.engine
        if self.engine == engines.LLAMACPP:  # one context, `parallel` sequences sharing its threads
            self.workers = options.parallel or settings.parallel
        else:
            self.workers = options.workers or settings.workers
        threads = options.threads if options.threads is not None else settings.threads
        self.threads = Settings.threads_for(1 if self.engine == engines.LLAMACPP else self.workers, threads)
        self.state = "unloaded"
        self.detail: str | None = None
        self.loaded: Loaded | None = None
        self.memory_mb: float | None = None  # measured at load (resident memory it added)
        self.load_seconds: float | None = None
        self.last_used = 0.0
        self.pins = 0  # requests being admitted: never unload under them
        self.waiting = 0  # requests waiting for the load
        self.task: asyncio.Task | None = None
        self.failed_stat: tuple[float, int] | None = None  # the file as it was when loading failed

    @property
    def scheduler(self) -> Scheduler | None:
        return self.loaded.scheduler if self.loaded else None

    @property
    def idle(self) -> bool:
        """Loaded with nothing running, queued or being admitted: may be unloaded."""
        s = self.scheduler
        return self.state == "loaded" and s is not None and s.idle and self.pins == 0

    def estimate_mb(self) -> float:
        """Memory a load will take: measured last time, else each worker's copy of the file plus its KV cache."""
        if self.memory_mb is not None:
            return self.memory_mb
        try:
            hp = self.header().hparams
            kv = 2 * hp.n_layer * hp.n_ctx * hp.n_embd * 2  # keys and values, f16, the whole context
        except ValueError:  # not a GGML file: count its size
            kv = 0
        size = self.path.stat().st_size
        if self.engine == engines.LLAMACPP:  # one copy of the weights, a KV stream per sequence
            return (size + self.workers * kv) / MB
        return self.workers * (size + kv) / MB

    def header(self) -> Any:
        """The file's GGML header (hparams: n_ctx, n_vocab, ftype), read once per version of the file."""
        return _header(self.path, *self.stat())

    def stat(self) -> tuple[float, int]:
        st = self.path.stat()
        return st.st_mtime, st.st_size

    def stat_or_none(self) -> tuple[float, int] | None:
        """The file's (mtime, size), or None if it cannot be read."""
        try:
            return self.stat()
        except OSError:
            return None

    def describe(self) -> dict[str, Any]:
        """This model's /health entry."""
        s = self.scheduler
        out: dict[str, Any] = {"id": self.id, "state": self.state, "engine": self.engine,
                               "workers": self.workers, "threads": self.threads}
        if self.detail:
            out["detail"] = self.detail
        if s is not None and self.loaded is not None:
            out |= {"busy": s.busy, "queued": s.queued, "model_sha256": self.loaded.sha256,
                    "load_seconds": round(self.load_seconds or 0.0, 3)}
        if self.memory_mb is not None:
            out["memory_mb"] = round(self.memory_mb, 1)
        return out


@functools.lru_cache(maxsize=64)
def _header(path: Path, mtime: float, size: int) -> Any:
    from service.formats.ggml.format import read_gpt2

    return read_gpt2(path)
