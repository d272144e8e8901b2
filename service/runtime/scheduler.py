"""The worker pool: N engine instances, a bounded wait queue, generations run in threads (a worker
thread each on ctransformers; a batching engine's own step thread on llama.cpp).

Never imports litestar. Admission is synchronous and immediate (refuse at once when full);
every admitted job ends in exactly one call of `on_finish`, whatever happens to its client.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable, Sequence

from service.engine.ctransformers_backend import Engine
from service.engine.prefix import held, served
from service.engine.sampling import SamplingParams
from service.errors import (
    GenerationFailed,
    InvalidRequest,
    QueueFull,
    ServiceError,
    ShuttingDown,
    UnknownToken,
)
from service.runtime.jobs import Job, JobGroup
from service.runtime.running import on_step_thread, on_worker_thread


class Scheduler:
    """Runs generations on a fixed set of engines; the one backend the HTTP layer talks to."""

    def __init__(self, engines: Sequence[Engine], *, max_queue: int, timeout_s: float,
                 on_finish: Callable[[Job], None], model_id: str = "", model_sha256: str | None = None,
                 engine: str = "ctransformers", exact_reuse: bool = True) -> None:
        self.model_id = model_id
        self.engine_name = engine  # which library runs the model, for the log
        self.model_sha256 = model_sha256
        self._engines = list(engines)
        self._free: list[Engine] = list(self._engines)
        self._waiting: collections.deque[asyncio.Future[Engine]] = collections.deque()  # first come, first served
        self._executor = ThreadPoolExecutor(len(self._engines), thread_name_prefix="minivault-gen")
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self._on_finish = on_finish
        self._jobs: set[Job] = set()
        self.draining = False
        self.exact_reuse = exact_reuse  # prefix reuse only as far as it is bit-exact, else to the token

    # --- what the HTTP layer asks -------------------------------------------------------------
    @property
    def workers(self) -> int:
        return len(self._engines)

    @property
    def busy(self) -> int:
        return sum(1 for j in self._jobs if j.started_at is not None)

    @property
    def queued(self) -> int:
        return sum(1 for j in self._jobs if j.started_at is None)

    @property
    def idle(self) -> bool:
        """Nothing running or waiting."""
        return not self._jobs

    @property
    def engine(self) -> Engine:
        """Any engine, for tokenizer and limits (all instances load the same model)."""
        return self._engines[0]

    def check_capacity(self) -> None:
        """Raise ShuttingDown or QueueFull if a new request could not be admitted now."""
        if self.draining:
            raise ShuttingDown("the server is shutting down and takes no new requests", retry_after=5)
        if len(self._jobs) >= self.workers + self.max_queue:
            raise QueueFull(
                f"all {self.workers} workers are busy and the queue is full ({self.max_queue} waiting); retry later",
                retry_after=1,
            )

    def tokenize(self, text: str) -> list[int]:
        """Token ids for `text`, with the tokenizer the engine uses (call from a thread)."""
        return self.engine.tokenizer.encode(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text for token ids; UnknownToken names an id outside the vocabulary."""
        n = self.engine.vocab_size
        for i, token in enumerate(ids):
            if not 0 <= token < n:
                raise UnknownToken(f"token id {token} (at index {i}) is outside the vocabulary: ids are 0 to {n - 1}",
                                   field=f"tokens[{i}]")
        return self.engine.tokenizer.decode(ids)

    def admit(self, endpoint: str, prompt: str, prompt_ids: list[int], params: SamplingParams,
              request_id: str | None = None, key_id: str | None = None, cache_prompt: bool = True) -> Job:
        """Validate limits and take the request, or raise at once; the job starts running."""
        self.check_capacity()
        if not prompt_ids:
            raise InvalidRequest("the prompt has no tokens", field="prompt")
        self.engine.check_fits(len(prompt_ids), params.max_new_tokens)
        job = Job(endpoint, prompt, prompt_ids, params, request_id, key_id, cache_prompt)
        job.model_id, job.model_sha256, job.engine = self.model_id, self.model_sha256, self.engine_name
        self._jobs.add(job)
        self._schedule(job)
        return job

    def admit_group(self, endpoint: str, items: Sequence[tuple[str, list[int], SamplingParams]],
                    request_id: str, on_finish: Callable[[JobGroup], None], key_id: str | None = None,
                    cache_prompt: bool = True) -> JobGroup:
        """Admit every (prompt, ids, params) as its own job, or none of them; `on_finish` runs once,
        when the last has ended (instead of each job's own log record)."""
        self.check_capacity()
        free = self.workers + self.max_queue - len(self._jobs)
        if len(items) > free:
            raise QueueFull(
                f"this request needs {len(items)} jobs but only {free} of {self.workers + self.max_queue} "
                "worker and queue places are free; retry later or ask for fewer choices",
                retry_after=1,
            )
        for _, prompt_ids, params in items:
            if not prompt_ids:
                raise InvalidRequest("the prompt has no tokens", field="prompt")
            self.engine.check_fits(len(prompt_ids), params.max_new_tokens)
        group = JobGroup(request_id, on_finish)
        group._left = len(items)
        for i, (prompt, prompt_ids, params) in enumerate(items):
            job = Job(endpoint, prompt, prompt_ids, params, f"{request_id}-{i}", key_id, cache_prompt)
            job.model_id, job.model_sha256, job.engine = self.model_id, self.model_sha256, self.engine_name
            job.group = group
            group.jobs.append(job)
            self._jobs.add(job)
        for job in group.jobs:
            self._schedule(job)
        return group

    @staticmethod
    async def pieces(job: Job) -> AsyncIterator[str]:
        """Text pieces of a job as they are produced; aborts the job if the consumer stops."""
        try:
            while (chunk := await job.pieces.get()) is not None:
                yield chunk
            if job.error is not None:  # end the response abnormally: a failure must not look done
                raise GenerationFailed(job.error)
        finally:
            if not job.done.is_set():
                job.abort()

    async def finish_jobs(self, timeout: float) -> None:
        """Take no new requests; let running ones finish for `timeout` s, then cancel the rest
        (marked `shut_down`, so each still ends in its endpoint's normal shape)."""
        self.draining = True
        jobs = [j._task for j in self._jobs if j._task]
        if jobs:
            _, pending = await asyncio.wait(jobs, timeout=timeout)
            if pending:
                for job in list(self._jobs):
                    job.shut_down = True
                    job.abort()
                await asyncio.wait(pending)

    async def drain(self, timeout: float) -> None:
        """finish_jobs, then stop the threads and free the models."""
        await self.finish_jobs(timeout)
        self.close()

    def close(self) -> None:
        """Stop the threads and free the models (nothing may be running)."""
        self._executor.shutdown(wait=True)
        for engine in self._engines:
            engine.close()

    # --- running ---------------------------------------------------------------------------
    def _schedule(self, job: Job) -> None:
        """Run `job`: at once on a free engine (its worker thread starts before the handler goes on
        to send the response's headers), else in line for one."""
        engine = self._take_free(job)
        launched: asyncio.Future[None] | BaseException | None = None
        if engine is not None:
            try:
                launched = self._launch(job, engine)
            except Exception as exc:  # _run ends the job with it, as if it had raised there
                launched = exc
        job._task = asyncio.get_running_loop().create_task(self._run(job, engine, launched))

    def _take_free(self, job: Job) -> Engine | None:
        """A free engine if no job is waiting: the one holding the longest prefix of the job's prompt."""
        if not self._free or self._waiting:
            return None
        if job.cache_prompt:
            # the longest reusable prefix; among equals, the emptiest (keep full caches for others)
            best = max(self._free, key=lambda e: (served(e, job.prompt_ids, self.exact_reuse), -len(held(e))))
        else:
            best = min(self._free, key=lambda e: len(held(e)))  # keep the fullest caches for others
        self._free.remove(best)
        return best

    async def _acquire(self, job: Job) -> Engine:
        """A free engine (see _take_free), else wait in line for one."""
        if (engine := self._take_free(job)) is not None:
            return engine
        waiter: asyncio.Future[Engine] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())  # handed an engine just as the job left the queue
            else:
                self._waiting.remove(waiter)
            raise

    def _release(self, engine: Engine) -> None:
        """Give an engine to the first job waiting, or back to the free set."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(engine)
                return
        self._free.append(engine)

    def _launch(self, job: Job, engine: Engine) -> asyncio.Future[None] | None:
        """Start the job's generation on `engine` in a worker thread; None if it was cancelled first."""
        job.started_at = time.monotonic()
        if job.cancel.is_set():
            job.finish_reason = "cancelled"
            return None
        gen = engine.generate(job.prompt_ids, job.params, cancel=job.cancel,
                              deadline=job.started_at + self.timeout_s, cache_prompt=job.cache_prompt,
                              exact=self.exact_reuse)
        job.generation = gen
        loop = asyncio.get_running_loop()
        if (drive := gen.step_driver) is not None:  # a batching engine's slot runs it on its step thread
            return on_step_thread(drive, gen, job.pieces, loop)
        return loop.run_in_executor(self._executor, on_worker_thread, gen, job.pieces, loop)

    async def _run(self, job: Job, engine: Engine | None = None,
                   launched: asyncio.Future[None] | BaseException | None = None) -> None:
        """Wait for a free engine unless one was given (with its launched generation), run the
        job to its end, and hand it on to be logged: exactly once, whatever happened."""
        try:
            if engine is None:
                engine = await self._acquire(job)
                launched = self._launch(job, engine)
            if isinstance(launched, BaseException):
                raise launched
            if launched is not None:
                await launched
                job.finish_reason = job.generation.finish_reason if job.generation else None
        except asyncio.CancelledError:
            job.finish_reason = "cancelled"  # left the queue before a worker was free
        except ServiceError as exc:
            job.finish_reason, job.error = "error", exc.message
        except Exception as exc:  # the model crashed: end this request, keep the server
            job.finish_reason, job.error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            job.ended_at = time.monotonic()
            if engine is not None:
                self._release(engine)
            job.pieces.close()
            self._jobs.discard(job)
            job.done.set()
            if job.group is not None:
                job.group._job_done()
            else:
                self._on_finish(job)
