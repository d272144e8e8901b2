"""What a running server holds: settings, its models (runtime/models.py), the request log, metrics.

Never imports litestar; the app's lifespan creates one Runtime and puts it on app.state.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from service import __version__
from service.config import Settings
from service.errors import ServiceError, ShuttingDown
from service.runtime.jobs import Job, JobGroup
from service.runtime.loading import ENGINE_NAME
from service.runtime.logbook import LogBook
from service.runtime.logdb import LogDB
from service.runtime.metrics import Load, Metrics
from service.runtime.models import Models

log = logging.getLogger("minivault")
T = TypeVar("T")

# Threads that tokenize requests off the event loop. Tokenizing is pure Python and holds the GIL, so more
# threads would not run it faster; a fixed pool keeps the server's thread count flat under any load
# (anyio's pool grows with concurrent requests and keeps idle threads until a later call retires them).
PREP_THREADS = 2
# Inputs up to this many characters are prepared on the event loop itself: tokenizing 256
# characters takes at most ~0.35 ms (uncached text), less than the two thread hops it would save
# (~0.3 ms measured on a 32-token prompt's way to its first token).
INLINE_PREP_CHARS = 256


class Runtime:
    """The server's state: ok -> draining; each model has its own (runtime/models.py)."""

    engine = ENGINE_NAME  # what runs the generations, for /health and the log

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.status = "ok"  # ok -> draining
        self.metrics: Metrics | None = None
        self.models = Models(settings, self.record, self._model_changed)  # fails without a model
        self.preload = self.models.preload_ids()  # a bad MINIVAULT_PRELOAD stops the start
        if settings.metrics:
            self.metrics = Metrics(self.models.default or "", __version__, ENGINE_NAME, self._load_state)
        db = settings.log_db_path
        self.logdb = LogDB(db) if db is not None else None
        self.logbook = LogBook(settings.log_file, fsync=settings.log_fsync, buffer=settings.log_buffer,
                               mirror=self.logdb, on_failure=self.metrics.log_failures.inc if self.metrics else None)
        self._tasks: list[asyncio.Task] = []
        self._prep = ThreadPoolExecutor(PREP_THREADS, thread_name_prefix="minivault-prep")

    def start_loading(self) -> None:
        """Load the preloaded models in the background; start the keep-alive reaper; handle SIGHUP."""
        loop = asyncio.get_running_loop()
        for model in self.preload:
            self._tasks.append(loop.create_task(self._preload(model)))
        if self.settings.keep_alive_s > 0:
            self._tasks.append(loop.create_task(self._reap()))
        try:  # logrotate's postrotate sends SIGHUP: reopen the log; and look for new models
            loop.add_signal_handler(signal.SIGHUP, self.hangup)
        except (ValueError, RuntimeError, NotImplementedError, AttributeError):
            pass  # not the main thread (an in-process test client) or no SIGHUP here

    def hangup(self) -> None:
        """SIGHUP: reopen the log file and rescan the models dir."""
        self.logbook.reopen()
        try:
            self.models.rescan()
        except Exception as exc:  # a broken models.toml must not kill a running server
            print(f"minivault: error: rescanning the models dir: {exc}", file=sys.stderr, flush=True)

    async def _preload(self, model: str) -> None:
        try:
            async with self.models.serving(model):
                pass
        except ServiceError:
            pass  # the model's state says why; its own requests get the reason

    async def _reap(self) -> None:
        """Check for idle models a few times per keep-alive period."""
        period = min(max(self.settings.keep_alive_s / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(period)
            await self.models.reap_idle()

    def serving(self, model: str | None, field: str = "model"):
        """`async with runtime.serving(model) as scheduler`: the model's pool, loaded and held."""
        if self.status == "draining":
            raise ShuttingDown("the server is shutting down and takes no new requests", retry_after=5)
        return self.models.serving(model, field)

    async def prepare(self, fn: Callable[..., T], *args: Any, size: int | None = None) -> T:
        """Run request preparation (tokenizing) on the server's own few threads, off the event loop;
        inline when `size` (the input's characters or tokens) is at most INLINE_PREP_CHARS."""
        if size is not None and size <= INLINE_PREP_CHARS:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._prep, fn, *args)

    def begin_drain(self) -> None:
        """Readiness turns false and new requests are refused (503), before the listener closes."""
        self.status = "draining"
        self.models.begin_drain()

    async def finish_jobs(self) -> None:
        """Let running generations finish for drain_s; cancel the rest, each ending in its normal shape."""
        await self.models.finish_jobs(self.settings.drain_s)

    async def shutdown(self) -> None:
        """Drain running generations (bounded by drain_s), then flush and close the log."""
        self.status = "draining"
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.models.close(self.settings.drain_s)
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        except (ValueError, RuntimeError, NotImplementedError, AttributeError):
            pass
        await asyncio.to_thread(self.logbook.close)
        self._prep.shutdown(wait=False)

    def record(self, job: Job) -> None:
        """Write the one log record of a finished job."""
        p = job.params
        gen = job.generation
        record = self._header(job, job.id, job.endpoint, job.status, job.finish_reason)
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
        record = self._header(jobs[0], group.id, endpoint, status, jobs[0].finish_reason if len(jobs) == 1 else None)
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

    def _header(self, job: Job, id_: str, endpoint: str, status: str, finish_reason: str | None) -> dict[str, Any]:
        """The fields every log record starts with: what ran, on which model and engine, how it ended."""
        record: dict[str, Any] = {
            "id": id_,
            "ts": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "endpoint": endpoint,
            "model": job.model_id,
            "model_sha256": job.model_sha256,
            "engine": job.engine,
            "version": __version__,
            "status": status,
            "finish_reason": finish_reason,
        }
        if self.settings.replica:  # which replica served it, when several write logs
            record["replica"] = self.settings.replica
        return record

    def _model_changed(self, model: str, event: str) -> None:
        """A model loaded, failed or was unloaded: count it."""
        if self.metrics is not None:
            self.metrics.model_events.labels(model, event).inc()

    def _load_state(self) -> list[Load]:
        """What the load gauges show at scrape time, one per installed model."""
        out = []
        for slot in self.models.slots.values():
            s = slot.scheduler
            out.append(Load(slot.id, slot.state == "loaded", slot.load_seconds, s.workers if s else 0,
                            s.busy if s else 0, s.queued if s else 0, slot.memory_mb))
        return out

