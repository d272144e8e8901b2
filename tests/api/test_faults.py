"""A model that fails mid-generation: the one thing a real model can't be made to do on demand."""

from __future__ import annotations

import time
from pathlib import Path

from litestar.testing import TestClient

from service.api.app import create_app
from tests.support.server import read_log


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


def test_crash_mid_stream_ends_the_stream_logs_error_and_frees_the_worker(long_model, settings_for):
    settings = settings_for(long_model, workers=1, max_queue=0)
    with TestClient(create_app(settings)) as c:
        for _ in range(200):
            if c.get("/health").status_code == 200:
                break
            time.sleep(0.02)
        runtime = c.app.state.runtime
        crash_after(runtime.scheduler.engine, calls=6)
        with c.stream("POST", "/generate/stream", json={"prompt": "x", "max_new_tokens": 500}) as r:
            assert r.status_code == 200  # headers went out before the failure
            text = b"".join(r.iter_bytes()).decode()
            rid = r.headers["x-request-id"]
        assert 0 < len(text)
        h = c.get("/health").json()
        assert h["status"] == "ok" and h["busy"] == 0  # the worker is free again
        r = c.post("/generate", json={"prompt": "x", "max_new_tokens": 5})
        assert r.status_code == 500 and r.json()["error"]["type"] == "generation_failed"
        assert "simulated ggml failure" in r.json()["error"]["message"]
    records = read_log(Path(settings.log_file))
    assert [x["status"] for x in records] == ["error", "error"]
    assert records[0]["id"] == rid and records[0]["response"] == text
    assert "simulated ggml failure" in records[0]["error"]
