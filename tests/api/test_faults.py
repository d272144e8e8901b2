"""A model that fails mid-generation: the one thing a real model can't be made to do on demand."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from service.api.app import create_app
from tests.support.server import InProcessServer, read_log


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


def test_crash_mid_stream_ends_the_stream_abnormally_logs_error_and_frees_the_worker(long_model, settings_for):
    settings = settings_for(long_model, workers=1, max_queue=0)
    with InProcessServer(create_app(settings)) as server:
        runtime = server.app.state.runtime
        crash_after(runtime.scheduler.engine, calls=6)
        got = []
        with httpx.stream("POST", server.url + "/generate/stream", json={"prompt": "x", "max_new_tokens": 500}) as r:
            assert r.status_code == 200  # headers went out before the failure
            rid = r.headers["x-request-id"]
            with pytest.raises(httpx.RemoteProtocolError):  # no final chunk: the client sees the failure
                for chunk in r.iter_raw():
                    got.append(chunk)
        text = b"".join(got).decode()
        assert 0 < len(text)
        h = httpx.get(server.url + "/health").json()
        assert h["status"] == "ok" and h["busy"] == 0  # the worker is free again
        r = httpx.post(server.url + "/generate", json={"prompt": "x", "max_new_tokens": 5})
        assert r.status_code == 500 and r.json()["error"]["type"] == "generation_failed"
        assert "simulated ggml failure" in r.json()["error"]["message"]
    records = read_log(Path(settings.log_file))
    assert [x["status"] for x in records] == ["error", "error"]
    assert records[0]["id"] == rid and records[0]["response"] == text
    assert "simulated ggml failure" in records[0]["error"]
