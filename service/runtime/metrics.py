"""Prometheus metrics of one running server, in a registry of its own (never the global default).

Never imports litestar: the Runtime calls `observe_job` at the end of every job, the HTTP layer
calls `observe_request` for requests that are not jobs (refusals, /tokenize, ...).
"""

from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# CPU generation spans milliseconds (a token of a tiny model) to minutes (a long prompt on a slow
# machine): the request-level buckets run from 1 ms to 10 min, the per-token ones from 1 ms to 5 s.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 120.0, 300.0, 600.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0,
                 2.5, 5.0)


class Load(NamedTuple):
    """What the gauges read at scrape time."""

    model: str
    loaded: bool
    load_seconds: float | None
    workers: int
    busy: int
    queued: int
    memory_mb: float | None = None


class _LoadCollector(Collector):
    """Gauges read from the runtime when Prometheus scrapes, so they are never stale."""

    def __init__(self, read: Callable[[], list[Load]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        models = self._read()
        for name, doc, value in (
            ("minivault_workers", "Model instances (generations that can run at once).", lambda s: s.workers),
            ("minivault_workers_busy", "Workers running a generation now.", lambda s: s.busy),
            ("minivault_requests_queued", "Admitted requests waiting for a worker.", lambda s: s.queued),
            ("minivault_model_loaded", "1 while the model is loaded and serving, else 0.", lambda s: int(s.loaded)),
        ):
            family = GaugeMetricFamily(name, doc, labels=["model"])
            for s in models:
                family.add_metric([s.model], value(s))
            yield family
        for name, doc, attr in (
            ("minivault_model_load_seconds", "Time the model's last load took.", "load_seconds"),
            ("minivault_model_memory_bytes", "Resident memory the model's last load added.", "memory_mb"),
        ):
            family = GaugeMetricFamily(name, doc, labels=["model"])
            for s in models:
                v = getattr(s, attr)
                if v is not None and (s.loaded or attr == "load_seconds"):
                    family.add_metric([s.model], v * (1024 * 1024 if attr == "memory_mb" else 1))
            yield family


class Metrics:
    """Every metric of one server; `registry` is what /metrics renders."""

    def __init__(self, model: str, version: str, engine: str, read_load: Callable[[], list[Load]]) -> None:
        self.model = model
        self.registry = r = CollectorRegistry(auto_describe=True)
        Info("minivault_build", "MiniVault's version and generation engine.", registry=r).info(
            {"version": version, "engine": engine})
        self.requests = Counter("minivault_requests", "Requests by endpoint and final status: ok, cancelled, "
                                "timeout, error, or refused_<HTTP status>.", ["endpoint", "model", "status"],
                                registry=r)
        self.prompt_tokens = Counter("minivault_prompt_tokens", "Prompt tokens of admitted requests.",
                                     ["model"], registry=r)
        self.generation_tokens = Counter("minivault_generation_tokens", "Tokens generated.", ["model"], registry=r)
        self.cached_tokens = Counter("minivault_prompt_tokens_cached", "Prompt tokens served from the prefix cache "
                                     "instead of being evaluated.", ["model"], registry=r)
        self.model_events = Counter("minivault_model_events", "Model loads and unloads: loaded, error, "
                                    "unloaded_keep_alive, unloaded_evicted, unloaded_shutdown.", ["model", "event"],
                                    registry=r)
        self.log_failures = Counter("minivault_log_write_failures", "Request log records that could not be written.",
                                    registry=r)
        hist = [("ttft", "minivault_time_to_first_token_seconds", "From admission to the first generated token.",
                 REQUEST_BUCKETS),
                ("tpot", "minivault_time_per_output_token_seconds", "Mean time between output tokens of a request "
                 "(inter-token latency), one observation per request with 2+ tokens.", TOKEN_BUCKETS),
                ("e2e", "minivault_request_duration_seconds", "From admission to the end of the request.",
                 REQUEST_BUCKETS),
                ("queue", "minivault_request_queue_seconds", "Time waiting in the queue for a worker.",
                 REQUEST_BUCKETS),
                ("prompt", "minivault_prompt_processing_seconds", "From getting a worker to the first token "
                 "(prompt evaluation).", REQUEST_BUCKETS)]
        self.histograms = {key: Histogram(name, doc, ["model"], buckets=buckets, registry=r)
                           for key, name, doc, buckets in hist}
        r.register(_LoadCollector(read_load))
        for counter in (self.prompt_tokens, self.generation_tokens, self.cached_tokens):
            counter.labels(model)  # present (at 0) from the start, so rate() has a first sample
        self.log_failures.inc(0)

    def observe_request(self, endpoint: str, status: str) -> None:
        """A request that is not a job ended: `ok`, or `refused_<HTTP status>`."""
        self.requests.labels(endpoint, self.model, status).inc()

    def observe_job(self, job) -> None:
        """A job ended (duck-typed Job: runtime.jobs imports nothing from here)."""
        m = job.model_id
        self.requests.labels(job.endpoint, m, job.status).inc()
        self.prompt_tokens.labels(m).inc(len(job.prompt_ids))
        self.generation_tokens.labels(m).inc(job.completion_tokens)
        self.cached_tokens.labels(m).inc(job.cached_tokens)
        h = self.histograms
        end = job.ended_at
        start = job.started_at if job.started_at is not None else end
        h["e2e"].labels(m).observe(end - job.admitted_at)
        h["queue"].labels(m).observe(start - job.admitted_at)
        first = job.generation.first_token_at if job.generation else None
        if first is not None:
            h["ttft"].labels(m).observe(first - job.admitted_at)
            h["prompt"].labels(m).observe(first - start)
            if job.completion_tokens >= 2:
                h["tpot"].labels(m).observe((end - first) / (job.completion_tokens - 1))
