"""A client that leaves while its prompt is being evaluated stops the evaluation (a live server)."""

from __future__ import annotations

import json
import socket
import time

import httpx

from tests.support.server import read_log, wait_idle


def test_client_leaving_during_a_long_prompt_cancels_it_before_it_finishes(start_server, long_model):
    server = start_server(long_model, MINIVAULT_WORKERS=1)
    body = json.dumps({"prompt": "abcdefghij" * 100, "max_new_tokens": 24}).encode()  # 1000 prompt tokens
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /generate/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        time.sleep(0.1)  # admitted, evaluating the prompt (1000 tokens take far longer than this)
    wait_idle(server.url, timeout=10)  # the worker is free again, long before the prompt could end
    r = httpx.post(server.url + "/generate", json={"prompt": "next", "max_new_tokens": 2}, timeout=30)
    assert r.status_code == 200 and r.json()["timings"]["queue_ms"] < 500
    server.stop()
    first, second = read_log(server.log_file)
    assert first["status"] == "cancelled" and first["finish_reason"] == "cancelled"
    assert first["usage"]["prompt_tokens"] == 1000 and first["usage"]["completion_tokens"] == 0
    assert first["timings"]["prompt_ms"] is None  # stopped between prompt batches, never finished
    assert second["status"] == "ok"
