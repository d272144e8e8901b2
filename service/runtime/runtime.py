"""What a running server holds: settings, the model pool once loaded, the request log.

Never imports litestar; the app's lifespan creates one Runtime and puts it on app.state.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgspec

from service.config import Settings, find_model
from service.engine.base import Tokenizer
from service.engine.ctransformers_backend import Engine
from service.errors import NotReady
from service.runtime.logbook import LogBook
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
        self.scheduler: Scheduler | None = None
        self.logbook = LogBook(settings.log_file)
        self._libdir = Path(tempfile.mkdtemp(prefix="minivault-lib-"))
        self._loading: asyncio.Task | None = None

    def start_loading(self) -> None:
        """Load the model pool in a thread; /health says `loading` until it is done."""
        self._loading = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        s = self.settings
        try:
            self.manifest = await asyncio.to_thread(load_manifest, self.model_path)
            engines = await asyncio.to_thread(
                load_engines, self.model_path, s.workers, s.threads_per_worker, self._libdir
            )
        except Exception as exc:
            self.status, self.detail = "error", f"could not load {self.model_path}: {exc}"
            print(f"minivault: error: {self.detail}", file=sys.stderr, flush=True)
            return
        self.scheduler = Scheduler(engines, max_queue=s.max_queue, timeout_s=s.timeout_s, on_finish=self.record)
        self.status = "ok"
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

    async def shutdown(self) -> None:
        """Drain running generations (bounded by drain_s), then flush and close the log."""
        self.status = "draining" if self.status == "ok" else self.status
        if self._loading is not None:
            await asyncio.wait({self._loading})
        if self.scheduler is not None:
            await self.scheduler.drain(self.settings.drain_s)
        await asyncio.to_thread(self.logbook.close)
        shutil.rmtree(self._libdir, ignore_errors=True)

    def record(self, job: Job) -> None:
        """Write the one log record of a finished job."""
        p = job.params
        gen = job.generation
        record: dict[str, Any] = {
            "id": job.id,
            "ts": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "endpoint": job.endpoint,
            "model": self.model_name,
            "status": job.status,
            "finish_reason": job.finish_reason,
        }
        if self.settings.log_prompts:
            record["prompt"] = job.prompt
            record["response"] = job.text
        record["params"] = {
            "max_new_tokens": p.max_new_tokens, "temperature": p.temperature, "top_k": p.top_k,
            "top_p": p.top_p, "repetition_penalty": p.repetition_penalty,
            "seed": gen.sampler.seed if gen else p.seed, "stop": list(p.stop),
        }
        record["usage"] = {"prompt_tokens": len(job.prompt_ids), "completion_tokens": job.completion_tokens}
        record["timings"] = job.timings()
        if job.error:
            record["error"] = job.error
        self.logbook.write(record)

    def record_group(self, group: JobGroup, endpoint: str, params: dict[str, Any], extra: dict[str, Any],
                     n: int = 1) -> None:
        """Write the one log record of a request run as several jobs (its choices), when all have ended.

        Jobs come prompt by prompt, `n` choices each; `params` are the request's parameters under
        its API's names; `extra` adds fields (user, ...).
        """
        jobs = group.jobs
        statuses = [j.status for j in jobs]
        status = next((s for s in ("error", "timeout", "cancelled") if s in statuses), "ok")
        record: dict[str, Any] = {
            "id": group.id,
            "ts": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "endpoint": endpoint,
            "model": self.model_name,
            "status": status,
            "finish_reason": jobs[0].finish_reason if len(jobs) == 1 else None,
        }
        if self.settings.log_prompts:
            prompts = [j.prompt for j in jobs[::n]]  # the n choices of a prompt share it
            record["prompt"] = prompts[0] if len(prompts) == 1 else prompts
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
                           "total_tokens": prompt_tokens + completion_tokens}
        timings = [j.timings() for j in jobs]
        firsts = [t["first_token_ms"] for t in timings if t["first_token_ms"] is not None]
        record["timings"] = {"queue_ms": max(t["queue_ms"] for t in timings),  # type: ignore[type-var]
                             "first_token_ms": min(firsts) if firsts else None,
                             "total_ms": max(t["total_ms"] for t in timings)}  # type: ignore[type-var]
        record |= extra
        errors = [j.error for j in jobs if j.error]
        if errors:
            record["error"] = errors[0]
        self.logbook.write(record)


def _model_name(path: Path) -> str:
    """models/<name>/model.bin -> <name>; a bare file -> its stem."""
    return path.parent.name if path.name == "model.bin" else path.stem
