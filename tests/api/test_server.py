"""The real server over real HTTP: streaming, load, disconnects, timeouts, drain, the log; on both
engines (llama.cpp runs a GGUF copy of the model made at load, its sequence slots as the workers)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import signal
import threading
import time
from contextlib import ExitStack

import httpx
import pytest

from tests.support.engines import ENGINES, require_llamacpp
from tests.support.server import read_log, wait_idle

LONG = {"prompt": "Tell me a long story", "max_new_tokens": 1000}  # seconds on either engine, fits 1024
N_LONG = LONG["max_new_tokens"]


@pytest.fixture(params=ENGINES)
def start_server(request: pytest.FixtureRequest, start_server):
    """The live-server factory on this test's engine: MINIVAULT_WORKERS becomes llama.cpp's slots."""
    if request.param == "ctransformers":
        return start_server
    require_llamacpp()

    def start(model, **env):
        slots = env.pop("MINIVAULT_WORKERS", 1)
        return start_server(model, MINIVAULT_ENGINE="llamacpp", MINIVAULT_PARALLEL=slots, **env)

    return start


def test_stream_first_chunk_arrives_while_generation_runs(start_server, long_model):
    server = start_server(long_model)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        with c.stream("POST", "/generate/stream", json=LONG) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/plain; charset=utf-8"
            chunks = r.iter_raw()
            first = next(chunks)
            assert first
            health = c.get("/health").json()
            assert health["busy"] == 1  # the first token is here and the model is still generating
            rest = list(chunks)
        assert len(rest) > 100  # one chunk per token, not one finished text
    server.stop()
    (record,) = read_log(server.log_file)
    assert (record["usage"]["completion_tokens"], record["finish_reason"]) == (N_LONG, "length"), record


def test_health_answers_at_once_while_every_worker_is_busy(start_server, long_model):
    server = start_server(long_model, MINIVAULT_WORKERS=2, MINIVAULT_THREADS=1)
    with httpx.Client(base_url=server.url, timeout=30) as c, ExitStack() as streams:
        # keep the iterators referenced: dropping one closes its response
        chunks = [streams.enter_context(c.stream("POST", "/generate/stream", json=LONG)).iter_raw() for _ in range(2)]
        for it in chunks:
            next(it)
        latencies = []
        for _ in range(20):
            t = time.perf_counter()
            h = c.get("/health")
            latencies.append(time.perf_counter() - t)
            assert h.status_code == 200 and h.json()["busy"] == 2
    latencies.sort()
    print(f"/health while 2/2 workers generate: median {latencies[10] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    assert latencies[-1] < 1.0  # generous: the point is that it never waits for a generation


def test_disconnect_mid_stream_frees_the_worker(start_server, long_model):
    server = start_server(long_model, MINIVAULT_WORKERS=1, MINIVAULT_MAX_QUEUE=0)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        with c.stream("POST", "/generate/stream", json=LONG) as r:
            for i, _ in enumerate(r.iter_raw()):
                if i == 5:
                    break
        # the connection is closed: the next request must be admitted and start at once
        wait_idle(server.url, timeout=5)
        r = c.post("/generate", json={"prompt": "next", "max_new_tokens": 3})
        assert r.status_code == 200, r.text
        assert r.json()["timings"]["queue_ms"] < 500  # vs seconds for the abandoned N_LONG tokens
    server.stop()
    first, second = read_log(server.log_file)
    print(f"disconnected after 6 chunks: the server generated {first['usage']['completion_tokens']} tokens")
    assert first["status"] == "cancelled" and first["finish_reason"] == "cancelled"
    assert 5 <= first["usage"]["completion_tokens"] < 50  # stopped within a few tokens, not at N_LONG
    assert second["status"] == "ok"


def test_full_queue_is_refused_at_once_with_retry_after(start_server, long_model):
    server = start_server(long_model, MINIVAULT_WORKERS=1, MINIVAULT_MAX_QUEUE=1)
    with httpx.Client(base_url=server.url, timeout=30) as c, ExitStack() as streams:
        running = streams.enter_context(c.stream("POST", "/generate/stream", json=LONG))
        running_chunks = running.iter_raw()
        next(running_chunks)
        queued = cf.ThreadPoolExecutor(1).submit(c.post, "/generate", json={"prompt": "q", "max_new_tokens": 2})
        deadline = time.monotonic() + 5
        while c.get("/health").json()["queued"] != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = c.post("/generate/stream", json={"prompt": "one too many"})
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "queue_full"
        running.close()
        assert queued.result(timeout=30).status_code == 200
    server.stop()
    assert [x["status"] for x in read_log(server.log_file)] == ["cancelled", "ok"]  # the refused one is not a job


def test_concurrent_requests_some_cancelled_give_exactly_one_record_each(start_server, long_model):
    server = start_server(long_model, MINIVAULT_WORKERS=2, MINIVAULT_THREADS=1, MINIVAULT_MAX_QUEUE=32)
    ids: dict[str, str] = {}
    lock = threading.Lock()

    def full(i: int) -> None:
        r = httpx.post(server.url + "/generate", json={"prompt": f"request {i}", "max_new_tokens": 20}, timeout=60)
        assert r.status_code == 200
        with lock:
            ids[r.headers["x-request-id"]] = "ok"

    def cancelled_stream(i: int) -> None:
        with httpx.stream("POST", server.url + "/generate/stream", json=LONG | {"prompt": f"s{i}"}, timeout=60) as r:
            with lock:
                ids[r.headers["x-request-id"]] = "cancelled"
            for n, _ in enumerate(r.iter_raw()):
                if n == 3:
                    break

    def impatient(i: int) -> None:
        # gives up while its request waits or runs: the server must still log it, as cancelled
        rid = f"impatient-{i}"
        with lock:
            ids[rid] = "cancelled"
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/generate", json=LONG, headers={"X-Request-ID": rid}, timeout=0.5)

    jobs = [full] * 8 + [cancelled_stream] * 6 + [impatient] * 2
    with cf.ThreadPoolExecutor(len(jobs)) as pool:
        for f in [pool.submit(job, i) for i, job in enumerate(jobs)]:
            f.result()
    wait_idle(server.url, timeout=30)
    assert server.stop() == 0
    lines = server.log_file.read_text().splitlines()
    assert len(lines) == len(jobs)
    records = {json.loads(line)["id"]: json.loads(line) for line in lines}
    assert {k: v["status"] for k, v in records.items()} == ids


def test_timeout_ends_generation_with_a_clear_finish_reason(start_server, long_model):
    server = start_server(long_model, MINIVAULT_TIMEOUT_S="1")
    r = httpx.post(server.url + "/generate", json=LONG, timeout=30)
    assert r.status_code == 200
    body = r.json()
    assert body["finish_reason"] == "timeout"
    assert 0 < body["usage"]["completion_tokens"] < N_LONG
    server.stop()
    (record,) = read_log(server.log_file)
    assert record["status"] == "timeout" and record["response"] == body["response"]


def test_sigterm_lets_running_streams_finish_and_flushes_the_log(start_server, long_model):
    server = start_server(long_model, MINIVAULT_DRAIN_S=20)
    body = {"prompt": "drain", "max_new_tokens": 300}
    with httpx.stream("POST", server.url + "/generate/stream", json=body, timeout=30) as r:
        chunks = r.iter_raw()
        got = [next(chunks)]
        server.proc.send_signal(signal.SIGTERM)
        got.extend(chunks)
    text = b"".join(got).decode()
    assert server.wait_stopped() == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health", timeout=2)
    (record,) = read_log(server.log_file)
    assert record["status"] == "ok" and record["finish_reason"] == "length"
    assert record["usage"]["completion_tokens"] == 300 and record["response"] == text


def test_sigterm_cancels_what_outlives_the_grace_period(start_server, long_model):
    server = start_server(long_model, MINIVAULT_DRAIN_S=1)
    with httpx.stream("POST", server.url + "/generate/stream", json=LONG, timeout=30) as r:
        chunks = r.iter_raw()
        next(chunks)
        server.proc.send_signal(signal.SIGTERM)
        with pytest.raises(httpx.HTTPError):
            list(chunks)  # cut off after the grace period
    assert server.wait_stopped() == 0
    (record,) = read_log(server.log_file)
    assert record["status"] == "cancelled" and record["usage"]["completion_tokens"] < N_LONG


def test_end_of_the_grace_period_ends_each_request_in_its_normal_shape(start_server, long_model):
    import threading

    server = start_server(long_model, MINIVAULT_DRAIN_S=1, MINIVAULT_WORKERS=2)
    whole: dict = {}

    def generate() -> None:
        whole["r"] = httpx.post(server.url + "/generate", json=LONG, headers={"X-Request-ID": "whole-1"}, timeout=30)

    caller = threading.Thread(target=generate)
    caller.start()
    with httpx.stream("POST", server.url + "/generate/stream", json=LONG, timeout=30) as r:
        chunks = r.iter_raw()
        next(chunks)
        wait_busy(server.url, 2)
        server.proc.send_signal(signal.SIGTERM)
        with pytest.raises(httpx.RemoteProtocolError):  # no final chunk: the client sees it is incomplete
            list(chunks)
    caller.join(30)
    r = whole["r"]
    assert r.status_code == 503 and r.headers["x-request-id"] == "whole-1"
    assert r.json()["error"]["type"] == "shutting_down" and r.headers["retry-after"]
    assert server.wait_stopped() == 0
    assert "Traceback" not in server.output and "ASGI callable returned" not in server.output
    assert "stream ended abnormally: cancelled: the drain's grace period ran out" in server.output
    records = read_log(server.log_file)
    assert sorted(x["endpoint"] for x in records) == ["/generate", "/generate/stream"]
    assert {x["status"] for x in records} == {"cancelled"}


def test_readiness_turns_false_before_the_listener_closes(start_server, tiny_model):
    server = start_server(tiny_model, MINIVAULT_SHUTDOWN_DELAY_S=3)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    health = httpx.get(server.url + "/health", timeout=2)
    assert health.status_code == 503 and health.json()["status"] == "draining"
    refused = httpx.post(server.url + "/generate", json={"prompt": "a"}, timeout=2)
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "shutting_down"
    assert server.wait_stopped() == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health", timeout=2)


def wait_busy(url: str, n: int, timeout: float = 10.0) -> None:
    """Until n workers are generating."""
    deadline = time.monotonic() + timeout
    while httpx.get(url + "/health", timeout=5).json()["busy"] < n:
        assert time.monotonic() < deadline, "workers never got busy"
        time.sleep(0.02)
