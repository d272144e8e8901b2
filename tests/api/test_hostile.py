"""Slow and hostile clients against a live server: none of them holds a worker or blinds /health."""

from __future__ import annotations

import concurrent.futures as cf
import socket
import time

import httpx

from tests.support.server import wait_idle

LONG = {"prompt": "Tell me a long story", "max_new_tokens": 400}


def health_time(url: str) -> float:
    """Seconds /health took; it must answer 200 (the timeout is generous: this is no speed test)."""
    start = time.monotonic()
    r = httpx.get(url + "/health", timeout=10)
    assert r.status_code == 200
    return time.monotonic() - start


def test_a_slow_reader_holds_its_worker_only_while_the_model_generates(start_server, long_model):
    server = start_server(long_model, MINIVAULT_WORKERS=1)
    with httpx.stream("POST", server.url + "/generate/stream", json=LONG, timeout=60) as r:
        chunks = r.iter_raw(chunk_size=16)
        first = next(chunks)
        # the client reads nothing more: the model finishes anyway and the worker is free
        wait_idle(server.url, timeout=30)
        h = httpx.get(server.url + "/health").json()
        assert h["busy"] == 0 and h["queued"] == 0
        ok = httpx.post(server.url + "/generate", json={"prompt": "x", "max_new_tokens": 3}, timeout=30)
        assert ok.status_code == 200  # another request gets the worker while the slow reader still reads
        text = (first + b"".join(chunks)).decode()
    records = [x for x in server_records(server) if x["endpoint"] == "/generate/stream"]
    assert records[0]["status"] == "ok" and records[0]["response"] == text


def server_records(server):
    from tests.support.server import new_records

    return new_records(server.log_file, 0, count=2)


def test_dribbled_headers_and_bodies_hold_no_worker_and_health_stays_fast(start_server, tiny_model):
    server = start_server(tiny_model, MINIVAULT_WORKERS=1)
    socks = []
    try:
        for i in range(100):
            s = socket.create_connection(("127.0.0.1", server.port))
            if i % 2:
                s.sendall(b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # headers never end
            else:  # a body that never arrives
                s.sendall(b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 100\r\n\r\n{\"prompt\": ")
            socks.append(s)
        for _ in range(5):
            health_time(server.url)
        r = httpx.post(server.url + "/generate", json={"prompt": "x", "max_new_tokens": 3}, timeout=10)
        assert r.status_code == 200
        assert httpx.get(server.url + "/health").json()["busy"] == 0
    finally:
        for s in socks:
            s.close()


def test_headers_that_grow_without_end_are_refused(start_server, tiny_model):
    server = start_server(tiny_model)
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        s.settimeout(10)
        try:
            for _ in range(40):  # 40 KiB of header lines, never ending: past the 16 KiB limit
                s.sendall(b"X-Pad: " + b"a" * 1016 + b"\r\n")
                time.sleep(0.01)
            reply = s.recv(200)
        except (BrokenPipeError, ConnectionResetError):
            reply = b""
    assert reply.startswith(b"HTTP/1.1 4") or reply == b"", reply  # refused, never served
    health_time(server.url)


def test_a_flood_past_the_request_limit_is_refused_at_once_and_health_still_answers(start_server, long_model):
    server = start_server(long_model, MINIVAULT_WORKERS=1, MINIVAULT_MAX_QUEUE=50, MINIVAULT_MAX_CONCURRENT_REQUESTS=4)

    def stream_one(_: int) -> tuple[int, str, str | None]:
        with httpx.stream("POST", server.url + "/generate/stream", json={**LONG, "max_new_tokens": 60},
                          timeout=120) as r:
            body = r.read().decode()
            return r.status_code, body, r.headers.get("retry-after")

    with cf.ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(stream_one, i) for i in range(12)]
        time.sleep(0.5)
        for _ in range(5):
            health_time(server.url)
        results = [f.result() for f in futures]
    statuses = sorted(s for s, _, _ in results)
    assert statuses.count(200) >= 4 and statuses.count(503) >= 1, statuses
    for status, body, retry in results:
        if status == 503:
            assert '"type":"overloaded"' in body and retry == "1"
    wait_idle(server.url, timeout=60)
