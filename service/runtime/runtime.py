"""What a running server holds: settings, the model pool once loaded, the request log.

Never imports litestar; the app's lifespan creates one Runtime and puts it on app.state.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from service import __version__
from service.config import Settings, find_model
from service.engine.base import Tokenizer
from service.engine.ctransformers_backend import Engine
from service.errors import NotReady
from service.runtime.logbook import LogBook
from service.runtime.logdb import LogDB
from service.runtime.metrics import Load, Metrics
from service.runtime.scheduler import Job, JobGroup, Scheduler

log = logging.getLogger("minivault")


def load_tokenizer(model_path: Path) -> Tokenizer | None:
    """The exact GPT-2 BPE from tokenizer.json beside the model, or None (with a warning)."""
    path = model_path.parent / "tokenizer.json"
    if not path.is_file():
        print(
            f"minivault: warning: no tokenizer.json beside {model_path}; falling back to ctransformers' "
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


def load_engines(model_path: Path, workers: int, threads: int, libdir: Path) -> list[Engine]:
    """`workers` independent instances of the model, sharing one tokenizer."""
    tokenizer = load_tokenizer(model_path)
    return [Engine(model_path, threads=threads, tokenizer=tokenizer, instance=i, libdir=libdir)
            for i in range(workers)]


class Runtime:
    """The server's state: loading -> ok (or error) -> draining."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.model_path = find_model(settings)  # fails at start, with how to get a model
        self.model_name = _model_name(self.model_path)
        self.status = "loading"
        self.detail: str | None = None
        self.manifest: dict[str, Any] | None = None
        self.model_sha256: str | None = None  # the manifest's, else computed once at load
        self.scheduler: Scheduler | None = None
        self.load_seconds: float | None = None
        self.metrics: Metrics | None = (
            Metrics(self.model_name, __version__, "ctransformers", self._load_state) if settings.metrics else None
        )
        db = settings.log_db_path
        self.logdb = LogDB(db) if db is not None else None
        self.logbook = LogBook(settings.log_file, fsync=settings.log_fsync, buffer=settings.log_buffer,
                               mirror=self.logdb, on_failure=self.metrics.log_failures.inc if self.metrics else None)
        self._libdir = Path(tempfile.mkdtemp(prefix="minivault-lib-"))
        self._loading: asyncio.Task | None = None

    def start_loading(self) -> None:
        """Load the model pool in a thread; /health says `loading` until it is done."""
        loop = asyncio.get_running_loop()
        self._loading = loop.create_task(self._load())
        try:  # logrotate's postrotate sends SIGHUP: reopen the log instead of dying
            loop.add_signal_handler(signal.SIGHUP, self.logbook.reopen)
        except (ValueError, RuntimeError, NotImplementedError, AttributeError):
            pass  # not the main thread (an in-process test client) or no SIGHUP here

    async def _load(self) -> None:
        s = self.settings
        started = time.monotonic()
        try:
            self.manifest = await asyncio.to_thread(load_manifest, self.model_path)
            self.model_sha256 = await asyncio.to_thread(model_sha256, self.model_path, self.manifest)
            engines = await asyncio.to_thread(
                load_engines, self.model_path, s.workers, s.threads_per_worker, self._libdir
            )
        except Exception as exc:
            self.status, self.detail = "error", f"could not load {self.model_path}: {exc}"
            print(f"minivault: error: {self.detail}", file=sys.stderr, flush=True)
            return
        self.scheduler = Scheduler(engines, max_queue=s.max_queue, timeout_s=s.timeout_s, on_finish=self.record)
        self.status = "ok"
        self.load_seconds = time.monotonic() - started
        log.info("model %s loaded: %d worker(s), %d thread(s) each", self.model_name, s.workers,
                 s.threads_per_worker)

    def ready(self) -> Scheduler:
        """The scheduler, or NotReady while loading / after a failed load / when draining."""
        if self.scheduler is not None and self.status == "ok":
            return self.scheduler
        if self.status == "draining" and self.scheduler is not None:
            return self.scheduler  # it refuses new work itself, with ShuttingDown
        detail = self.detail or "the model is still loading"
        raise NotReady(detail, retry_after=self.settings.retry_after_s)

    def begin_drain(self) -> None:
        """Readiness turns false and new requests are refused (503), before the listener closes."""
        if self.status == "ok":
            self.status = "draining"
        if self.scheduler is not None:
            self.scheduler.draining = True

    async def finish_jobs(self) -> None:
        """Let running generations finish for drain_s; cancel the rest, each ending in its normal shape."""
        if self.scheduler is not None:
            await self.scheduler.finish_jobs(self.settings.drain_s)

    async def shutdown(self) -> None:
        """Drain running generations (bounded by drain_s), then flush and close the log."""
        self.status = "draining" if self.status == "ok" else self.status
        if self._loading is not None:
            await asyncio.wait({self._loading})
        if self.scheduler is not None:
            await self.scheduler.drain(self.settings.drain_s)
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        except (ValueError, RuntimeError, NotImplementedError, AttributeError):
            pass
        await asyncio.to_thread(self.logbook.close)
        shutil.rmtree(self._libdir, ignore_errors=True)

    def record(self, job: Job) -> None:
        """Write the one log record of a finished job."""
        p = job.params
        gen = job.generation
        record = self._header(job.id, job.endpoint, job.status, job.finish_reason)
        if self.settings.log_prompts:
            record["prompt"] = job.prompt
            record["response"] = job.text
        record["params"] = {
            "max_new_tokens": p.max_new_tokens, "temperature": p.temperature, "top_k": p.top_k,
            "top_p": p.top_p, "repetition_penalty": p.repetition_penalty,
            "seed": gen.sampler.seed if gen else p.seed, "stop": list(p.stop),
        }
        record["usage"] = {"prompt_tokens": len(job.prompt_ids), "completion_tokens": job.completion_tokens,
                           "cached_tokens": job.cached_tokens}
        record["timings"] = job.timings()
        if job.error:
            record["error"] = job.error
        if job.key_id:
            record["key_id"] = job.key_id
        self.logbook.write(record)
        if self.metrics is not None:
            self.metrics.observe_job(job)

    def record_group(self, group: JobGroup, endpoint: str, params: dict[str, Any], extra: dict[str, Any],
                     n: int = 1, inputs: dict[str, Any] | None = None) -> None:
        """Write the one log record of a request run as several jobs (its choices), when all have ended.

        Jobs come prompt by prompt, `n` choices each; `params` are the request's parameters under
        its API's names; `extra` adds fields (user, ...); `inputs` (chat's messages) are logged
        beside the prompt, and like it only with log_prompts.
        """
        jobs = group.jobs
        statuses = [j.status for j in jobs]
        status = next((s for s in ("error", "timeout", "cancelled") if s in statuses), "ok")
        record = self._header(group.id, endpoint, status, jobs[0].finish_reason if len(jobs) == 1 else None)
        if self.settings.log_prompts:
            prompts = [j.prompt for j in jobs[::n]]  # the n choices of a prompt share it
            record["prompt"] = prompts[0] if len(prompts) == 1 else prompts
            record |= inputs or {}
        record["params"] = params
        record["choices"] = [
            {"index": i, "status": j.status, "finish_reason": j.finish_reason, "completion_tokens": j.completion_tokens,
             "seed": j.generation.sampler.seed if j.generation else j.params.seed}
            | ({"text": j.text} if self.settings.log_prompts else {}) | ({"error": j.error} if j.error else {})
            for i, j in enumerate(jobs)
        ]
        prompt_tokens = sum(len(j.prompt_ids) for j in jobs[::n])  # the n choices of a prompt share it
        completion_tokens = sum(j.completion_tokens for j in jobs)
        record["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                           "total_tokens": prompt_tokens + completion_tokens,
                           "cached_tokens": sum(j.cached_tokens for j in jobs)}
        timings = [j.timings() for j in jobs]
        firsts = [t["first_token_ms"] for t in timings if t["first_token_ms"] is not None]
        record["timings"] = {"queue_ms": max(t["queue_ms"] for t in timings),  # type: ignore[type-var]
                             "first_token_ms": min(firsts) if firsts else None,
                             "total_ms": max(t["total_ms"] for t in timings)}  # type: ignore[type-var]
        record |= extra
        errors = [j.error for j in jobs if j.error]
        if errors:
            record["error"] = errors[0]
        if jobs[0].key_id:
            record["key_id"] = jobs[0].key_id
        self.logbook.write(record)
        if self.metrics is not None:
            for job in jobs:
                self.metrics.observe_job(job)

    def _header(self, id_: str, endpoint: str, status: str, finish_reason: str | None) -> dict[str, Any]:
        """The fields every log record starts with: what ran, on which model and engine, how it ended."""
        record: dict[str, Any] = {
            "id": id_,
            "ts": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "endpoint": endpoint,
            "model": self.model_name,
            "model_sha256": self.model_sha256,
            "engine": ENGINE_NAME,
            "version": __version__,
            "status": status,
            "finish_reason": finish_reason,
        }
        if self.settings.replica:  # which replica served it, when several write logs
            record["replica"] = self.settings.replica
        return record

    def _load_state(self) -> Load:
        """What the load gauges show at scrape time."""
        s = self.scheduler
        return Load(self.model_name, self.status == "ok", self.load_seconds,
                    s.workers if s else 0, s.busy if s else 0, s.queued if s else 0)


ENGINE_NAME = "ctransformers"  # the backend that ran the generation, for replay


def model_sha256(model_path: Path, manifest: dict[str, Any] | None) -> str:
    """The model file's sha256: the manifest's (its size was checked), else hashed now."""
    if manifest and manifest.get("sha256"):
        return str(manifest["sha256"]).lower()
    from service.formats.manifest import file_sha256

    return file_sha256(model_path)

def _model_name(path: Path) -> str:
    """models/<name>/model.bin -> <name>; a bare file -> its stem."""
    return path.parent.name if path.name == "model.bin" else path.stem
