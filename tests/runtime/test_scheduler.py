"""The scheduler's hand-over, in-process on real engines: a job starts at admission when an engine
is free, and a job that leaves the queue at once still ends in exactly one record; on llama.cpp a
generation runs on the engine's step thread, with no worker thread, and its failure ends its job."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from service.engine.ctransformers_backend import Engine
from service.engine.sampling import SamplingParams
from service.errors import GenerationFailed
from service.runtime.jobs import Job
from service.runtime.runtime import INLINE_PREP_CHARS, Runtime
from service.runtime.scheduler import Scheduler
from tests.support.engines import require_llamacpp


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


def llamacpp_scheduler(model: Path, tmp_path: Path, finished: list[Job], parallel: int = 2):
    """A scheduler over a llama.cpp context's slots (a GGUF copy of `model`), and the context."""
    require_llamacpp()
    from service.engine.llamacpp_backend import LlamaContext
    from service.formats.ggml_to_gguf import ggml_to_gguf
    from service.runtime.loading import gguf_tokenizer_for

    gguf = ggml_to_gguf(model, tmp_path / "model.gguf")
    context = LlamaContext(gguf, parallel=parallel, threads=1, tokenizer=gguf_tokenizer_for(model, gguf))
    return Scheduler(context.slots, max_queue=4, timeout_s=60, on_finish=finished.append, engine="llamacpp"), context


def test_on_llamacpp_a_generation_runs_on_the_step_thread_and_no_worker_thread_starts(long_model: Path,
                                                                                     tmp_path: Path) -> None:
    """Its prompt is queued to the step thread at admission, and its pieces come from that thread
    (runtime/running.py); only a generation that scores its prompt takes a worker thread."""
    finished: list[Job] = []
    sched, context = llamacpp_scheduler(long_model, tmp_path, finished)

    calls: list[tuple[str, int]] = []

    def spy(slot, tokens, n_past, then):  # who hands the step thread what
        calls.append((threading.current_thread().name, len(tokens)))
        type(context).queue(context, slot, tokens, n_past, then)

    context.queue = spy

    async def main() -> tuple[list[str], int, Job]:
        try:
            ids = sched.tokenize("Once upon a time")
            job = sched.admit("/generate/stream", "Once upon a time", ids, SamplingParams(max_new_tokens=12, seed=1))
            # no await since admit: the prompt is with the step thread already, handed over by the loop
            assert calls == [(threading.main_thread().name, len(ids))]
            pieces = [piece async for piece in Scheduler.pieces(job)]
            await asyncio.wait_for(job.done.wait(), 30)
            workers = len(sched._executor._threads)
            scored = sched.admit("/v1/completions", "Once upon a time", ids,
                                 SamplingParams(max_new_tokens=2, seed=1, prompt_logprobs=1))
            await asyncio.wait_for(scored.done.wait(), 30)
            assert len(sched._executor._threads) == 1 and scored.error is None
            assert scored.generation.prompt_logprobs is not None
            return pieces, workers, job
        finally:
            sched.close()

    pieces, workers, job = asyncio.run(main())
    assert workers == 0
    # the first token's step is queued by the loop once its piece is out, each next one by the step thread
    assert calls[1] == (threading.main_thread().name, 1)
    assert {name for name, _ in calls[2:12]} == {"minivault-llamacpp"} and len(calls) >= 12
    assert job.finish_reason == "length" and job.completion_tokens == 12 and "".join(pieces) == job.text
    assert finished[0] is job and len(finished) == 2


def test_on_llamacpp_a_generation_that_fails_ends_its_job_in_one_record_with_the_reason(long_model: Path,
                                                                                      tmp_path: Path) -> None:
    finished: list[Job] = []
    sched, context = llamacpp_scheduler(long_model, tmp_path, finished, parallel=1)

    async def main() -> Job:
        ids = sched.tokenize("Unload me")
        job = sched.admit("/generate/stream", "Unload me", ids, SamplingParams(max_new_tokens=800, seed=1))
        pieces = Scheduler.pieces(job)
        await pieces.__anext__()  # it is generating
        await asyncio.to_thread(context.close)  # the model goes away under it
        with pytest.raises(GenerationFailed, match="being unloaded"):
            async for _ in pieces:
                pass
        await asyncio.wait_for(job.done.wait(), 30)
        sched._executor.shutdown()
        return job

    job = asyncio.run(main())
    assert finished == [job] and job.status == "error" and "being unloaded" in (job.error or "")
    assert 0 < job.completion_tokens < 800
