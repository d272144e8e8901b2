"""The scheduler's hand-over, in-process on real engines: a job starts at admission when an engine
is free, and a job that leaves the queue at once still ends in exactly one record."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from service.engine.ctransformers_backend import Engine
from service.engine.sampling import SamplingParams
from service.runtime.jobs import Job
from service.runtime.runtime import INLINE_PREP_CHARS, Runtime
from service.runtime.scheduler import Scheduler


def scheduler_on(model: Path, finished: list[Job], workers: int = 1) -> Scheduler:
    return Scheduler([Engine(model, threads=1) for _ in range(workers)], max_queue=4, timeout_s=60,
                     on_finish=finished.append)


def test_a_job_admitted_to_a_free_engine_is_running_before_admit_returns(tiny_model: Path) -> None:
    finished: list[Job] = []

    async def main() -> Job:
        sched = scheduler_on(tiny_model, finished)
        try:
            ids = sched.tokenize("Hello there")
            job = sched.admit("/generate", "Hello there", ids, SamplingParams(max_new_tokens=8, seed=1))
            # no await since admit: its worker thread was handed the generation already
            assert job.started_at is not None and job.generation is not None
            assert sched.busy == 1 and sched.queued == 0
            await asyncio.wait_for(job.done.wait(), 30)
            return job
        finally:
            sched.close()

    job = asyncio.run(main())
    assert finished == [job]
    assert job.finish_reason in ("length", "stop") and job.error is None
    assert job.completion_tokens >= 1


def test_a_queued_job_aborted_before_its_task_ran_ends_in_one_record(long_model: Path) -> None:
    """Cancelling a task before its first step skips its body, finally included: the job would
    never be logged and would hold its queue place for good."""
    finished: list[Job] = []

    async def main() -> tuple[Job, Job, int]:
        sched = scheduler_on(long_model, finished)
        try:
            ids = sched.tokenize("Once upon a time")
            running = sched.admit("/generate", "x", ids, SamplingParams(max_new_tokens=200, seed=1))
            queued = sched.admit("/generate", "y", ids, SamplingParams(max_new_tokens=5, seed=1))
            assert queued.started_at is None  # the one engine is taken
            queued.abort()  # the same turn of the loop: its task has not taken a step yet
            await asyncio.wait_for(queued.done.wait(), 10)
            left = len(sched._jobs)
            running.abort()
            await asyncio.wait_for(running.done.wait(), 30)
            return running, queued, left
        finally:
            sched.close()

    running, queued, left = asyncio.run(main())
    assert left == 1  # only the running job: the aborted one gave its place back
    assert finished == [queued, running]
    assert queued.finish_reason == "cancelled" and queued.generation is None
    assert running.finish_reason == "cancelled" and running.completion_tokens < 200


def test_short_inputs_are_prepared_on_the_loop_and_long_ones_on_the_prep_threads(settings_for, tiny_model: Path) -> None:
    async def main() -> list[str]:
        runtime = Runtime(settings_for(tiny_model))
        try:
            here = threading.current_thread().name
            names = [await runtime.prepare(lambda: threading.current_thread().name, size=size)
                     for size in (0, INLINE_PREP_CHARS, INLINE_PREP_CHARS + 1, None)]
            return [here, *names]
        finally:
            await runtime.shutdown()

    here, empty, at_limit, over, unknown = asyncio.run(main())
    assert empty == at_limit == here
    assert over.startswith("minivault-prep") and unknown.startswith("minivault-prep")
