"""An admitted request (Job) and the jobs of one multi-choice request (JobGroup).

A job lives from admission until its log record is written; the scheduler runs it.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Callable

from service.engine.generation import Generation
from service.engine.sampling import SamplingParams
from service.runtime.pieces import Pieces


class Job:
    """One admitted request, from admission until its log record is written."""

    def __init__(self, endpoint: str, prompt: str, prompt_ids: list[int], params: SamplingParams,
                 request_id: str | None = None, key_id: str | None = None, cache_prompt: bool = True) -> None:
        self.id = request_id or uuid.uuid4().hex
        self.key_id = key_id  # which API key made the request (a short hash, never the key)
        self.endpoint = endpoint
        self.prompt = prompt
        self.prompt_ids = prompt_ids
        self.params = params
        self.cache_prompt = cache_prompt
        self.cancel = threading.Event()
        self.admitted_at = time.monotonic()
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.generation: Generation | None = None
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.shut_down = False  # cancelled because the drain's grace period ran out
        self.pieces = Pieces()
        self.done = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.group: JobGroup | None = None  # set when the job is one choice of a multi-job request
        self.model_id = ""  # which model ran it, and that file's sha256 (set at admission)
        self.model_sha256: str | None = None
        self.engine = "ctransformers"

    @property
    def text(self) -> str:
        return self.generation.text if self.generation else ""

    @property
    def completion_tokens(self) -> int:
        return len(self.generation.tokens) if self.generation else 0

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens served from the instance's KV state instead of evaluated (prefix reuse)."""
        return self.generation.cached_tokens if self.generation else 0

    @property
    def status(self) -> str:
        """ok, cancelled, timeout or error: how the request ended."""
        if self.error is not None:
            return "error"
        return {"cancelled": "cancelled", "timeout": "timeout"}.get(self.finish_reason or "", "ok")

    def timings(self) -> dict[str, float | None]:
        """queue_ms, first_token_ms (from admission), total_ms; prompt_ms and prompt_tokens_per_second
        (evaluated prompt tokens, cached ones excluded); decode_ms and tokens_per_second (decode only,
        from the prompt's logits to the last token, as llama-server's predicted_per_second)."""
        end = self.ended_at or time.monotonic()
        start = self.started_at or end
        gen = self.generation
        first = gen.first_token_at if gen else None
        split = gen.timings() if gen else {"prompt_ms": None, "prompt_tokens_per_second": None, "decode_ms": 0.0}
        return {
            "queue_ms": round((start - self.admitted_at) * 1000, 3),
            "first_token_ms": round((first - self.admitted_at) * 1000, 3) if first else None,
            "total_ms": round((end - self.admitted_at) * 1000, 3),
            "tokens_per_second": split.get("decode_tokens_per_second", 0.0),
            "prompt_ms": split["prompt_ms"],
            "prompt_tokens_per_second": split["prompt_tokens_per_second"],
            "decode_ms": split["decode_ms"],
        }

    def abort(self) -> None:
        """The client went away: stop the generation within a token, or leave the queue now."""
        self.cancel.set()
        if self.started_at is None and self._task is not None:
            # on the loop's next turn: a task cancelled before its first step never runs its body,
            # so its finally (which releases and logs the job) would never run; by then it waits in line
            self._task.get_loop().call_soon(self._leave_queue)

    def _leave_queue(self) -> None:
        if self.started_at is None and self._task is not None:
            self._task.cancel()


class JobGroup:
    """The jobs of one request with several choices: admitted together, logged once when all end."""

    def __init__(self, request_id: str, on_finish: Callable[["JobGroup"], None]) -> None:
        self.id = request_id
        self.jobs: list[Job] = []
        self.admitted_at = time.monotonic()
        self._on_finish = on_finish
        self._left = 0

    def abort(self) -> None:
        """The client went away: stop every job of the group."""
        for job in self.jobs:
            job.abort()

    async def wait(self) -> None:
        """Until every job has ended."""
        for job in self.jobs:
            await job.done.wait()

    def _job_done(self) -> None:
        self._left -= 1
        if self._left == 0:
            self._on_finish(self)
