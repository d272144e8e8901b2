"""A model that fails mid-generation: the one thing a real model can't be made to do on demand.

The app runs under a real uvicorn in this process (so the engine can be made to fail) and is
reached over real HTTP by httpx and curl.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from service.api.app import create_app
from tests.support.server import free_port, new_records, read_log


def crash_after(engine, calls: int) -> None:
    """Make a real engine's eval fail after `calls` successful calls."""
    real_eval = engine.eval
    count = {"n": 0}

    def failing_eval(tokens, n_past):
        count["n"] += 1
        if count["n"] > calls:
            raise RuntimeError("simulated ggml failure")
        return real_eval(tokens, n_past)

    engine.eval = failing_eval


@pytest.fixture
def crashing(long_model, settings_for):
    """(base url, log file, arm) of a real uvicorn server whose engine fails after arm(calls) evals."""
    settings = settings_for(long_model, workers=1, max_queue=0)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.config.port}"
    for _ in range(500):
        try:
            if httpx.get(url + "/health", timeout=1).json()["state"] == "loaded":
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    models = app.state.runtime.models
    engine = models.slots[models.default].scheduler.engine
    real_eval = engine.eval

    def arm(calls: int) -> None:
        engine.eval = real_eval
        crash_after(engine, calls)

    yield url, Path(settings.log_file), arm
    server.should_exit = True
    thread.join(30)


def test_plain_stream_failure_ends_the_response_abnormally(crashing):
    url, log_file, arm = crashing
    arm(6)
    with httpx.Client(timeout=30) as c:
        with c.stream("POST", url + "/generate/stream", json={"prompt": "x", "max_new_tokens": 500}) as r:
            assert r.status_code == 200  # the headers went out before the failure
            got = []
            with pytest.raises(httpx.RemoteProtocolError):  # no final chunk: not a short success
                for chunk in r.iter_bytes():
                    got.append(chunk)
            rid = r.headers["x-request-id"]
        assert got and c.get(url + "/health").json()["busy"] == 0  # the worker is free again
    (record,) = [x for x in new_records(log_file, 0) if x["id"] == rid]
    assert record["status"] == "error" and record["error"] == "RuntimeError: simulated ggml failure"
    assert record["response"] == b"".join(got).decode()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed (.ci/run installs it with apt-get)")
def test_curl_reports_a_failed_plain_stream(crashing):
    url, _, arm = crashing
    arm(6)
    run = subprocess.run(["curl", "-sN", "-X", "POST", url + "/generate/stream", "-H", "Content-Type: application/json",
                          "-d", '{"prompt": "x", "max_new_tokens": 500}'], capture_output=True, timeout=60)
    assert run.returncode == 18, run  # CURLE_PARTIAL_FILE: "transfer closed with outstanding read data"
    assert run.stdout


def test_failure_messages_are_not_doubled_and_sse_streams_send_an_error_event(crashing):
    url, log_file, arm = crashing
    arm(3)
    r = httpx.post(url + "/generate", json={"prompt": "x", "max_new_tokens": 50}, timeout=30)
    assert r.status_code == 500
    assert r.json()["error"]["message"] == "generation failed: RuntimeError: simulated ggml failure"

    arm(6)
    r = httpx.post(url + "/generate/stream", json={"prompt": "x", "max_new_tokens": 500},
                   headers={"Accept": "text/event-stream"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = r.text.split("\n\n")
    assert events[-1] == "" and events[-2].startswith("event: error\ndata: ")
    error = json.loads(events[-2].split("data: ", 1)[1])["error"]
    assert error == {"type": "generation_failed", "field": None,
                     "message": "generation failed: RuntimeError: simulated ggml failure"}
    assert all(e.startswith('data: {"text":') for e in events[:-2])

    arm(6)
    r = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 500, "stream": True}, timeout=30)
    events = r.text.split("\n\n")
    assert "[DONE]" not in r.text
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["type"] == "server_error" and error["code"] == "generation_failed"
    assert error["message"] == "generation failed: RuntimeError: simulated ggml failure"
    records = new_records(log_file, 0, count=3)
    assert [x["status"] for x in records] == ["error"] * 3
    assert all(x["error"] == "RuntimeError: simulated ggml failure" for x in records[:2])
    assert records[2]["choices"][0]["error"] == "RuntimeError: simulated ggml failure"
    assert "generation failed: generation failed" not in json.dumps(read_log(log_file))
