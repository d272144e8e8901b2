"""GET /metrics: what each request adds, one registry per app, the text format Prometheus reads."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import httpx
import pytest
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.api.app import create_app
from tests.support.server import new_records, wait_idle

LONG = {"prompt": "Tell me a long story", "max_new_tokens": 600}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, parsed with prometheus-client's own parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


@contextmanager
def started(settings) -> Iterator[TestClient]:
    """A test client of a new app, once its model is loaded."""
    with TestClient(create_app(settings)) as client:
        for _ in range(300):
            if client.get("/health").status_code == 200:
                break
            time.sleep(0.02)
        yield client


def test_a_request_adds_its_counts_and_timings(tiny_model, settings_for):
    with started(settings_for(tiny_model)) as c:
        r = c.post("/generate", json={"prompt": "Hello there", "max_new_tokens": 5, "temperature": 0})
        assert r.status_code == 200
        usage = r.json()["usage"]
        assert c.post("/generate", json={"prompt": "x", "max_new_tokens": 0}).status_code == 422
        assert c.post("/tokenize", json={"text": "hi"}).status_code == 200
        assert c.post("/tokenize", content=b"{}", headers={"content-type": "text/plain"}).status_code == 415
        m = c.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    t = m.text
    assert value(t, "minivault_requests_total", endpoint="/generate", model="tiny", status="ok") == 1
    assert value(t, "minivault_requests_total", endpoint="/generate", model="tiny", status="refused_422") == 1
    assert value(t, "minivault_requests_total", endpoint="/tokenize", model="tiny", status="ok") == 1
    assert value(t, "minivault_requests_total", endpoint="/tokenize", model="tiny", status="refused_415") == 1
    assert value(t, "minivault_prompt_tokens_total", model="tiny") == usage["prompt_tokens"]
    assert value(t, "minivault_generation_tokens_total", model="tiny") == usage["completion_tokens"]
    assert ("minivault_prompt_tokens_cached_total", (("model", "tiny"),)) in samples(t)  # 0 until prefix reuse
    for name in ("time_to_first_token", "request_duration", "request_queue", "prompt_processing"):
        assert value(t, f"minivault_{name}_seconds_count", model="tiny") == 1, name
    assert value(t, "minivault_time_per_output_token_seconds_count", model="tiny") == (usage["completion_tokens"] >= 2)
    assert value(t, "minivault_time_to_first_token_seconds_bucket", model="tiny", le="600.0") == 1
    assert value(t, "minivault_model_loaded", model="tiny") == 1
    assert 0 < value(t, "minivault_model_load_seconds", model="tiny") < 60
    assert value(t, "minivault_workers", model="tiny") == 1
    assert value(t, "minivault_workers_busy", model="tiny") == 0
    assert value(t, "minivault_build_info", version="0.1.0", engine="ctransformers") == 1
    assert value(t, "minivault_log_write_failures_total") == 0
    # probes and scrapes are not API requests
    assert not [k for k in samples(t) if k[0] == "minivault_requests_total" and ("endpoint", "/health") in k[1]]


def test_each_app_has_its_own_registry(tiny_model, settings_for):
    with started(settings_for(tiny_model)) as a, \
            started(settings_for(tiny_model)) as b:
        assert a.post("/tokenize", json={"text": "one"}).status_code == 200
        assert a.post("/tokenize", json={"text": "two"}).status_code == 200
        assert b.post("/tokenize", json={"text": "three"}).status_code == 200
        ta, tb = a.get("/metrics").text, b.get("/metrics").text
    assert value(ta, "minivault_requests_total", endpoint="/tokenize", model="tiny", status="ok") == 2
    assert value(tb, "minivault_requests_total", endpoint="/tokenize", model="tiny", status="ok") == 1
    assert "python_gc_objects_collected_total" not in ta  # not the global default registry


def test_metrics_off_means_404_and_nothing_counted(tiny_model, settings_for):
    with started(settings_for(tiny_model, metrics=False)) as c:
        assert c.post("/generate", json={"prompt": "hi", "max_new_tokens": 2}).status_code == 200
        r = c.get("/metrics")
    assert r.status_code == 404 and "MINIVAULT_METRICS=false" in r.json()["error"]["message"]


def test_log_write_failures_are_counted(tiny_model, settings_for, tmp_path, capfd):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the log's folder should be")
    with started(settings_for(tiny_model, log_file=str(blocked / "log.jsonl"))) as c:
        assert c.post("/generate", json={"prompt": "hi", "max_new_tokens": 2}).status_code == 200
        for _ in range(100):  # the log is written by a thread
            if value(c.get("/metrics").text, "minivault_log_write_failures_total") == 1:
                break
            time.sleep(0.02)
        assert value(c.get("/metrics").text, "minivault_log_write_failures_total") == 1
    assert "could not write the request log" in capfd.readouterr().err


@pytest.mark.slow
def test_cancelled_stream_and_queue_refusal_over_http(start_server, long_model):
    server = start_server(long_model, MINIVAULT_WORKERS=1, MINIVAULT_MAX_QUEUE=0)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        with c.stream("POST", "/generate/stream", json=LONG) as r:
            chunks = r.iter_raw()
            next(chunks)
            busy = c.get("/metrics").text
            assert value(busy, "minivault_workers_busy", model="long") == 1
            assert c.post("/generate", json={"prompt": "x"}).status_code == 429
        (record,) = new_records(server.log_file, 0)
        assert record["status"] == "cancelled"
        wait_idle(server.url)
        t = c.get("/metrics").text
    assert value(t, "minivault_requests_total", endpoint="/generate/stream", model="long", status="cancelled") == 1
    assert value(t, "minivault_requests_total", endpoint="/generate", model="long", status="refused_429") == 1
    assert value(t, "minivault_generation_tokens_total", model="long") == record["usage"]["completion_tokens"]
    assert value(t, "minivault_time_to_first_token_seconds_count", model="long") == 1
    assert value(t, "minivault_workers_busy", model="long") == 0
